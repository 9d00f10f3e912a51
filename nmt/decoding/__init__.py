"""Search over model outputs (beam search, greedy as beam 1); plain PyTorch."""

from nmt.decoding.batching import translate_ids, translate_texts
from nmt.decoding.beam_search import beam_search
from nmt.decoding.options import DecodingOptions, Hypothesis

__all__ = ["DecodingOptions", "Hypothesis", "beam_search", "translate_ids", "translate_texts"]
