"""Recurrent layers over padded batch-first sequences, with a switchable cell type.

``RecurrentConfig.cell`` selects "lstm" (torch.nn.LSTM), "ln_lstm" (layer-norm LSTM),
"hyperlstm" or "ln_hyperlstm" (HyperLSTM without / with layer norm in the main cell), so a
model changes cell type without other changes.

Shapes: inputs (B, T, input_size) batch-first with ``lengths`` (B,); outputs are zero at
t >= length, and the final state is each sequence's state after its last valid step. A state is
a tuple of (B, N) tensors (reorder beams with ``index_select(0, idx)``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nmt.config_bounds import (
    MAX_FORGET_BIAS,
    MAX_HYPER_EMBEDDING,
    MAX_HYPER_WIDTH,
    MAX_WIDTH,
    check_bool,
    check_float,
    check_fraction,
    check_int,
    rename_keys,
)
from nmt.modules.hyperlstm import HyperLSTMCell
from nmt.modules.lstm import LayerNormLSTMCell, TorchLSTMCell
from nmt.modules.padding import State, check_lengths, reverse_padded, time_mask

CELL_TYPES = ("lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm")


@dataclass
class RecurrentConfig:
    cell: str = "ln_hyperlstm"  # "lstm" | "ln_lstm" | "hyperlstm" | "ln_hyperlstm"
    hidden_size: int = 256
    hyper_size: int = 128  # N_hyper: units of the hyper LSTM
    n_z: int = 32  # N_z: size of the embeddings z from which the weight scalings d are made
    recurrent_dropout: float = 0.0  # dropout on the candidate g (and the hyper cell's g)
    forget_bias: float = 1.0  # added to the forget gate pre-activation
    compile: bool = False  # fuse the per-step gate arithmetic with torch.compile (slow first call)
    fused_kernels: bool = True  # HyperLSTM: fused C++ CPU step kernels (eager path if off/unbuilt)

    def __post_init__(self) -> None:
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {', '.join(CELL_TYPES)}, got {self.cell!r}")
        check_int(self, "hidden_size", 1, MAX_WIDTH)
        check_int(self, "hyper_size", 1, MAX_HYPER_WIDTH)
        check_int(self, "n_z", 1, MAX_HYPER_EMBEDDING)
        check_fraction(self, "recurrent_dropout")
        check_float(self, "forget_bias", -MAX_FORGET_BIAS, MAX_FORGET_BIAS)
        check_bool(self, "compile")

    @classmethod
    def from_dict(cls, values: dict) -> RecurrentConfig:
        """Also reads configs saved before ``n_z`` was called ``embedding_size``."""
        return cls(**rename_keys(values, {"embedding_size": "n_z"}))


def make_cell(input_size: int, config: RecurrentConfig) -> nn.Module:
    """One direction's cell of the configured type."""
    common = dict(
        forget_bias=config.forget_bias, recurrent_dropout=config.recurrent_dropout,
        compile=config.compile,
    )  # fmt: skip
    if config.cell == "lstm":
        return TorchLSTMCell(input_size, config.hidden_size, **common)
    if config.cell == "ln_lstm":
        return LayerNormLSTMCell(input_size, config.hidden_size, **common)
    return HyperLSTMCell(
        input_size, config.hidden_size, config.hyper_size, config.n_z,
        layer_norm=config.cell == "ln_hyperlstm", fused=config.fused_kernels, **common,
    )  # fmt: skip


def outside_autocast(
    cell: nn.Module, x: Tensor, state: State
) -> tuple[AbstractContextManager, Tensor, State]:
    """Under autocast (bf16/fp16 mixed precision), a context that turns it off, and ``x`` and
    ``state`` in the cell's parameter dtype; otherwise no change.

    Why: the hand-written recurrences (HyperLSTM, layer-norm LSTM) combine per-step products
    with their weights and cell states in their own autograd functions, where autocast would
    mix bf16 products with float32 tensors; a cell state summed over many steps wants the
    parameters' precision anyway; and oneDNN has no bf16 LSTM on CPUs without AVX-512 BF16.
    Every cell type runs this way, so the baselines keep the HyperLSTM's precision; attention
    and the output layer still run under autocast.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return nullcontext(), x, state
    dtype = next(cell.parameters()).dtype
    return torch.autocast(device, enabled=False), x.to(dtype), tuple(s.to(dtype) for s in state)


class RecurrentLayer(nn.Module):
    """One recurrent layer, optionally bidirectional (outputs and states concat [fwd; bwd])."""

    def __init__(self, input_size: int, config: RecurrentConfig, bidirectional: bool = False):
        super().__init__()
        self.config = config
        self.input_size = input_size
        self.bidirectional = bidirectional
        self.output_size = config.hidden_size * (2 if bidirectional else 1)
        self.cells = nn.ModuleList(
            make_cell(input_size, config) for _ in range(2 if bidirectional else 1)
        )

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        states = [c.initial_state(batch_size, device, dtype) for c in self.cells]
        return tuple(torch.cat(parts, -1) for parts in zip(*states, strict=True))

    def _split_state(self, state: State) -> list[State]:
        if not self.bidirectional:
            return [state]
        halves = [s.chunk(2, -1) for s in state]
        return [tuple(h[0] for h in halves), tuple(h[1] for h in halves)]

    def forward(
        self, inputs: Tensor, lengths: Tensor | None = None, state: State | None = None
    ) -> tuple[Tensor, State]:
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(
                f"inputs must be (batch, time, {self.input_size}), got {tuple(inputs.shape)}"
            )
        if lengths is not None:
            check_lengths(lengths, inputs.shape[1])
        if state is None:
            state = self.initial_state(inputs.shape[0], inputs.device, inputs.dtype)
        outputs, finals = [], []
        for direction, (cell, cell_state) in enumerate(
            zip(self.cells, self._split_state(state), strict=True)
        ):
            x = inputs if direction == 0 else reverse_padded(inputs, lengths)
            precision, x, cell_state = outside_autocast(cell, x, cell_state)
            with precision:
                out, final = cell(x, lengths, cell_state)
            outputs.append(out if direction == 0 else reverse_padded(out, lengths))
            finals.append(final)
        if not self.bidirectional:
            return outputs[0], finals[0]
        return torch.cat(outputs, -1), tuple(
            torch.cat(parts, -1) for parts in zip(*finals, strict=True)
        )

    def step(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One time step, x (B, input_size) -> (h (B, hidden), new state). Unidirectional only."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer (bidirectional=False)")
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        precision, x, state = outside_autocast(self.cells[0], x, state)
        with precision:
            return self.cells[0].step(x, state)

    @torch.no_grad()
    def weight_scalings(self, inputs: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """HyperLSTM row scalings d_h and d_x, (B, T, 4*hidden) each, of the forward direction
        (zero past each length), for pictures."""
        cell = self.cells[0]
        if not isinstance(cell, HyperLSTMCell):
            raise ValueError(f"weight_scalings needs a HyperLSTM cell, not {self.config.cell!r}")
        scalings = cell.weight_scalings(inputs)
        if lengths is not None:
            mask = time_mask(lengths.to(inputs.device), inputs.shape[1]).unsqueeze(-1)
            scalings = {k: v * mask.to(v.dtype) for k, v in scalings.items()}
        return scalings


class RecurrentStack(nn.Module):
    """num_layers layers; optional bidirectional bottom layer; residual connections from layer
    index ``residual_from`` (0-based) up when sizes match; dropout between layers."""

    def __init__(
        self, input_size: int, config: RecurrentConfig, num_layers: int,
        bidirectional_bottom: bool = False, residual_from: int | None = None,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.residual_from = residual_from
        self.dropout = nn.Dropout(dropout)
        layers = []
        size = input_size
        for index in range(num_layers):
            layer = RecurrentLayer(size, config, bidirectional=bidirectional_bottom and index == 0)
            layers.append(layer)
            size = layer.output_size
        self.layers = nn.ModuleList(layers)
        self.output_size = size

    def _residual(self, index: int, layer: RecurrentLayer) -> bool:
        return (
            self.residual_from is not None
            and index >= self.residual_from
            and layer.input_size == layer.output_size
        )

    def forward(
        self, inputs: Tensor, lengths: Tensor | None = None, states: list[State] | None = None
    ) -> tuple[Tensor, list[State]]:
        if states is not None and len(states) != len(self.layers):
            raise ValueError(f"states must hold {len(self.layers)} states, got {len(states)}")
        x = inputs
        finals = []
        for index, layer in enumerate(self.layers):
            layer_input = x if index == 0 else self.dropout(x)
            out, final = layer(layer_input, lengths, None if states is None else states[index])
            x = out + layer_input if self._residual(index, layer) else out
            finals.append(final)
        if lengths is not None and self._residual(0, self.layers[0]):
            x = x * time_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1).to(x.dtype)
        return x, finals
