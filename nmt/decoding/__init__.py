"""Search over model outputs (beam search, greedy as beam 1); plain PyTorch."""
