"""HyperNMT: GNMT-style translation with HyperLSTM layers (Ha, Dai & Le, 2016)."""

__version__ = "0.1.0"
