"""The three calls the decoder needs from a model, and how its state follows the beam.

Any model with ``encode``, ``initial_decoder_state`` and ``decode_step`` can be decoded
(TranslationModel, or a hand-built model in a test). Every state tensor is batch-first, so one
``index_select`` along dimension 0 moves each hypothesis's state to its new row.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class EncoderOutputLike(Protocol):
    mask: Tensor  # (B, S) bool, True at real source positions

    def index_select(self, index: Tensor) -> EncoderOutputLike: ...


DecoderState = tuple[Tensor, ...]


class Decodable(Protocol):
    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> EncoderOutputLike: ...

    def initial_decoder_state(self, encoder_output: EncoderOutputLike) -> DecoderState: ...

    def decode_step(
        self, prev_tokens: Tensor, state: DecoderState, encoder_output: EncoderOutputLike
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """prev_tokens (R,) -> log_probs (R, V), attention (R, S), new state.

        log_probs must be a fresh tensor: the search changes it in place."""
        ...


def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
    """Row r of the result is row ``index[r]`` of ``state`` (beams grow, move and shrink)."""
    return tuple(tensor.index_select(0, index) for tensor in state)
