"""Padded batch-first sequences with lengths: masks, final states, in-length reversal.

A cell may run its recurrence over the padding at the end of a short sequence: those steps only
feed later padding steps, so the layer zeroes the outputs there and takes each sequence's final
state at its last valid step. No per-step masking is needed inside the recurrence.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = tuple[Tensor, ...]


def check_lengths(lengths: Tensor, max_length: int) -> None:
    """Every length must lie in [1, max_length] (a sequence has at least one step)."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (batch,), got {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > max_length:
        raise ValueError(
            f"lengths must lie in [1, {max_length}] (the inputs' time dimension), "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )


def time_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B, T) bool, True at t < length."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def reverse_padded(inputs: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each batch-first sequence within its length; padding stays in place.

    Its own inverse, so the same call maps a backward direction's outputs back to input order.
    """
    if lengths is None:
        return inputs.flip(1)
    batch, max_length = inputs.shape[:2]
    steps = torch.arange(max_length, device=inputs.device).unsqueeze(0)
    lengths = lengths.to(inputs.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    index = index.view(batch, max_length, *([1] * (inputs.dim() - 2))).expand_as(inputs)
    return inputs.gather(1, index)


class SequenceEnds:
    """Each sequence's last valid step: where the recurrence reads the final state, and where
    the backward pass feeds the final state's gradient back in."""

    def __init__(self, lengths: Tensor | None, steps: int, batch: int, device) -> None:
        if lengths is None:
            self.last = torch.full((batch,), steps - 1, dtype=torch.long, device=device)
        else:
            self.last = (lengths - 1).to(device=device, dtype=torch.long)
        self.batch = batch
        last = self.last.tolist()
        self.rows_by_step = {
            t: torch.tensor([b for b, end in enumerate(last) if end == t], device=device)
            for t in set(last)
        }

    def gather(self, stacked: Tensor) -> Tensor:
        """(T, B, N) per-step values -> (B, N) at each sequence's last valid step."""
        return stacked[self.last, torch.arange(self.batch, device=stacked.device)]

    def inject(self, step: int, grad: Tensor, grad_final: Tensor | None) -> Tensor:
        """Add the final state's gradient to the rows whose last valid step is ``step``."""
        rows = self.rows_by_step.get(step)
        if grad_final is None or rows is None:
            return grad
        if rows.numel() == self.batch:
            return grad + grad_final
        return grad.index_add(0, rows, grad_final.index_select(0, rows))
