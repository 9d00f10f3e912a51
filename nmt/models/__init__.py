"""Pure-PyTorch models, each with a config dataclass saved in every checkpoint and bundle."""
