"""The three calls the decoder needs from a model, and how its state follows the beam.

Any model with ``encode``, ``initial_decoder_state`` and ``decode_step`` can be decoded
(TranslationModel, or a hand-built model in a test). Every state tensor is batch-first, so one
``index_select`` along dimension 0 moves each hypothesis's state to its new row.

An encoder output is a dataclass of tensors shaped (B, S, ...): batch first, source position
second, zero (or False in the mask) past a sentence's end. That is all the search needs to let
sentences of another width join a running batch (``join_sources``) and to drop source columns
nobody attends to any more (``narrow_sources``).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
import torch.nn.functional as F
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


def cat_sources(first: Tensor, second: Tensor, dim: int = 1) -> Tensor:
    """The rows of ``first`` then those of ``second``, the narrower one widened with zeros
    (False) along its source dimension ``dim``."""
    width = max(first.shape[dim], second.shape[dim])

    def widen(tensor: Tensor) -> Tensor:
        missing = width - tensor.shape[dim]
        return F.pad(tensor, [0, 0] * (tensor.dim() - dim - 1) + [0, missing])

    return torch.cat([widen(first), widen(second)])


def join_sources(first: EncoderOutputLike, second: EncoderOutputLike) -> EncoderOutputLike:
    """The rows of ``first`` then those of ``second``, padded to the wider source."""
    joined = {
        field.name: cat_sources(getattr(first, field.name), getattr(second, field.name))
        for field in dataclasses.fields(first)
    }
    return dataclasses.replace(first, **joined)


def narrow_sources(encoder_output: EncoderOutputLike, width: int) -> EncoderOutputLike:
    """The first ``width`` source positions only (the rest must be padding for every row)."""
    narrowed = {
        field.name: getattr(encoder_output, field.name)[:, :width]
        for field in dataclasses.fields(encoder_output)
    }
    return dataclasses.replace(encoder_output, **narrowed)
