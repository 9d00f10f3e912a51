"""LSTM cells for the recurrent layers: torch.nn.LSTM, and a layer-norm LSTM.

The layer-norm LSTM (Ba et al. 2016, as in Ha et al.'s appendix A.2.2) is also the HyperLSTM's
hyper cell, so its gate arithmetic lives here as two plain functions, ``lstm_pointwise`` and
``lstm_pointwise_backward``, which both the per-step path (``step``, autograd) and the
whole-sequence autograd functions use.

Every cell offers ``initial_state``, ``forward(inputs, lengths, state)`` over a padded
batch-first sequence (one direction), and ``step(x, state)``.

Gate pre-activations are gate-major, shape (4, B, N), in the order (i, f, o, g): one sigmoid
covers i, f and o, one tanh covers g. Layer norm normalises each gate's N units separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.modules.padding import SequenceEnds, State, time_mask

LAYER_NORM_EPS = 1e-5
NUM_GATES = 4
FORGET_GATE = 1  # index in the (i, f, o, g) order
_aten = torch.ops.aten


class Affine(NamedTuple):
    """Gain and bias of a layer norm (gates: (4, 1, N) each; cell: (N,) each)."""

    weight: Tensor
    bias: Tensor


class PointwiseCache(NamedTuple):
    """What the backward pass of one step's gate arithmetic needs from its forward pass."""

    pre_activation: Tensor  # a, before the gate layer norm
    normalized: Tensor | None  # (a - mean) * rstd
    mean: Tensor | None
    rstd: Tensor | None
    sigmoids: Tensor  # sigmoid(i, f, o), (3, B, N)
    tanh_g: Tensor  # tanh(g) before dropout
    cell: Tensor  # c_t
    cell_normalized: Tensor | None
    cell_mean: Tensor | None
    cell_rstd: Tensor | None
    tanh_cell: Tensor  # tanh(LN(c_t))


def lstm_pointwise(
    pre_activation: Tensor,
    cell_prev: Tensor,
    gate_norm: Affine | None,
    cell_norm: Affine | None,
    g_mask: Tensor | None,
) -> tuple[Tensor, Tensor, PointwiseCache]:
    """One LSTM step after the matrix products: (4, B, N) pre-activations -> (h_t, c_t, cache).

    The forget bias is already in ``pre_activation`` (or in ``gate_norm.bias``); ``g_mask`` is
    the recurrent-dropout mask on the candidate g, scaled by 1/(1-p).
    """
    units = pre_activation.shape[-1]
    normalized = mean = rstd = None
    gates = pre_activation
    if gate_norm is not None:
        normalized, mean, rstd = torch.native_layer_norm(
            pre_activation, (units,), None, None, LAYER_NORM_EPS
        )
        gates = torch.addcmul(gate_norm.bias, normalized, gate_norm.weight)
    sigmoids = torch.sigmoid(gates[:3])
    tanh_g = torch.tanh(gates[3])
    candidate = tanh_g if g_mask is None else tanh_g * g_mask
    cell = torch.addcmul(sigmoids[1] * cell_prev, sigmoids[0], candidate)
    cell_normalized = cell_mean = cell_rstd = None
    cell_out = cell
    if cell_norm is not None:
        cell_normalized, cell_mean, cell_rstd = torch.native_layer_norm(
            cell, (units,), None, None, LAYER_NORM_EPS
        )
        cell_out = torch.addcmul(cell_norm.bias, cell_normalized, cell_norm.weight)
    tanh_cell = torch.tanh(cell_out)
    hidden = sigmoids[2] * tanh_cell
    cache = PointwiseCache(
        pre_activation, normalized, mean, rstd, sigmoids, tanh_g, cell,
        cell_normalized, cell_mean, cell_rstd, tanh_cell,
    )  # fmt: skip
    return hidden, cell, cache


class NormGrads:
    """Layer-norm gain and bias gradients, accumulated per batch row over the backward loop
    (one fused in-place update per step; summed over the batch at the end)."""

    def __init__(self, gate_norm: Affine | None, cell_norm: Affine | None, like: Tensor):
        gates, cell = gate_norm is not None, cell_norm is not None
        self.gate_w = like.new_zeros(NUM_GATES, *like.shape) if gates else None
        self.gate_b = like.new_zeros(NUM_GATES, *like.shape) if gates else None
        self.cell_w = like.new_zeros(like.shape) if cell else None
        self.cell_b = like.new_zeros(like.shape) if cell else None

    def add(self, grad_gates: Tensor, grad_cell_out: Tensor, cache: PointwiseCache) -> None:
        if self.gate_w is not None:
            self.gate_w.addcmul_(grad_gates, cache.normalized)
            self.gate_b.add_(grad_gates)
        if self.cell_w is not None:
            self.cell_w.addcmul_(grad_cell_out, cache.cell_normalized)
            self.cell_b.add_(grad_cell_out)

    def totals(self) -> tuple[Tensor | None, ...]:
        """(gate gain (4, N), gate bias (4, N), cell gain (N,), cell bias (N,)) or Nones."""
        gates = (None, None) if self.gate_w is None else (self.gate_w.sum(1), self.gate_b.sum(1))
        cell = (None, None) if self.cell_w is None else (self.cell_w.sum(0), self.cell_b.sum(0))
        return *gates, *cell


def lstm_pointwise_backward(
    grad_hidden: Tensor,
    grad_cell: Tensor,
    cell_prev: Tensor,
    cache: PointwiseCache,
    gate_norm: Affine | None,
    cell_norm: Affine | None,
    g_mask: Tensor | None,
    norm_grads: NormGrads | None = None,
) -> tuple[Tensor, Tensor]:
    """Backward of ``lstm_pointwise``: (d pre_activation, d c_{t-1}); adds this step's
    layer-norm gain and bias gradients to ``norm_grads``."""
    units = grad_hidden.shape[-1]
    sigmoids = cache.sigmoids
    grad_sigmoids = torch.empty_like(sigmoids)
    torch.mul(grad_hidden, cache.tanh_cell, out=grad_sigmoids[2])
    grad_cell_out = _aten.tanh_backward(grad_hidden * sigmoids[2], cache.tanh_cell)
    if cell_norm is not None:
        grad_cell = grad_cell + _layer_norm_backward(
            grad_cell_out * cell_norm.weight, cache.cell, cache.cell_mean, cache.cell_rstd, units
        )
    else:
        grad_cell = grad_cell + grad_cell_out
    candidate = cache.tanh_g if g_mask is None else cache.tanh_g * g_mask
    torch.mul(grad_cell, candidate, out=grad_sigmoids[0])
    torch.mul(grad_cell, cell_prev, out=grad_sigmoids[1])
    grad_cell_prev = grad_cell * sigmoids[1]
    grad_candidate = grad_cell * sigmoids[0]
    if g_mask is not None:
        grad_candidate = grad_candidate * g_mask
    grad_gates = torch.empty_like(cache.pre_activation, memory_format=torch.contiguous_format)
    _aten.sigmoid_backward.grad_input(grad_sigmoids, sigmoids, grad_input=grad_gates[:3])
    _aten.tanh_backward.grad_input(grad_candidate, cache.tanh_g, grad_input=grad_gates[3])
    grad_pre = grad_gates
    if gate_norm is not None:
        grad_pre = _layer_norm_backward(
            grad_gates * gate_norm.weight, cache.pre_activation, cache.mean, cache.rstd, units
        )
    if norm_grads is not None:
        norm_grads.add(grad_gates, grad_cell_out, cache)
    return grad_pre, grad_cell_prev


class GateMath(NamedTuple):
    """The per-step gate arithmetic used inside the whole-sequence functions."""

    forward: Callable
    backward: Callable


EAGER_GATE_MATH = GateMath(lstm_pointwise, lstm_pointwise_backward)
COMPILE_BACKEND = "inductor"
_compiled_gate_math: dict[str, GateMath] = {}


def gate_math(compiled: bool) -> GateMath:
    """Eager ATen ops, or the same functions fused into a few kernels by torch.compile
    (compiled once per process on first use; the recurrence itself stays an eager loop)."""
    if not compiled:
        return EAGER_GATE_MATH
    if COMPILE_BACKEND not in _compiled_gate_math:
        _compiled_gate_math[COMPILE_BACKEND] = GateMath(
            torch.compile(lstm_pointwise, backend=COMPILE_BACKEND),
            torch.compile(lstm_pointwise_backward, backend=COMPILE_BACKEND),
        )
    return _compiled_gate_math[COMPILE_BACKEND]


def _layer_norm_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, units: int) -> Tensor:
    return _aten.native_layer_norm_backward(
        grad, x, (units,), mean, rstd, None, None, [True, False, False]
    )[0]


def orthogonal_gates_(weight: Tensor, num_gates: int = NUM_GATES) -> Tensor:
    """Orthogonal initialisation of each gate's block of rows separately."""
    with torch.no_grad():
        for block in weight.chunk(num_gates, 0):
            nn.init.orthogonal_(block)
    return weight


def dropout_mask(p: float, shape: tuple[int, ...], like: Tensor, training: bool) -> Tensor | None:
    """Inverted-dropout mask (values 0 or 1/(1-p)), or None when dropout is off."""
    if not training or p == 0.0:
        return None
    return torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(1 - p).div_(1 - p)


def batch_first_outputs(outputs: Tensor, lengths: Tensor | None) -> Tensor:
    """Time-major per-step outputs (T, B, N) -> batch-first, zero past each length."""
    outputs = outputs.transpose(0, 1)
    if lengths is not None:
        mask = time_mask(lengths.to(outputs.device), outputs.shape[1])
        outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)
    return outputs.contiguous()


class LayerNormLSTMWeights(NamedTuple):
    """The cell's parameters as the recurrence uses them (``LayerNormLSTMCell.recurrence_weights``);
    the autograd function takes them as ``*weights`` and returns their gradients in this order."""

    recurrent: Tensor  # (4N, N) W_h
    gate_norm_weight: Tensor  # (4, N)
    gate_norm_bias: Tensor  # (4, N), the forget bias included
    cell_norm_weight: Tensor  # (N,)
    cell_norm_bias: Tensor  # (N,)

    @property
    def gate_norm(self) -> Affine:  # broadcast over the batch of (4, B, N) pre-activations
        return Affine(self.gate_norm_weight.unsqueeze(1), self.gate_norm_bias.unsqueeze(1))

    @property
    def cell_norm(self) -> Affine:
        return Affine(self.cell_norm_weight, self.cell_norm_bias)


def gate_major(rows: Tensor, units: int) -> Tensor:
    """(B, 4N) gate blocks side by side -> a (4, B, N) view, gate first."""
    return rows.view(rows.shape[0], NUM_GATES, units).transpose(0, 1)


class _LayerNormLSTMSequence(torch.autograd.Function):
    """Whole-sequence layer-norm LSTM with a hand-written backward.

    The backward keeps every step's gate gradients and forms the recurrent weight gradient as
    one matrix product over all steps, instead of T small ones.
    """

    @staticmethod
    def forward(ctx, projected, lengths, g_mask, compiled, h0, c0, *weights):
        """projected (T, B, 4N) = W_x x_t for every step; lengths (B,) or None; g_mask
        (T, B, N) or None; h0, c0 (B, N); weights: the fields of ``LayerNormLSTMWeights``."""
        w = LayerNormLSTMWeights(*weights)
        gate_ops = gate_math(compiled)
        steps, batch, _ = projected.shape
        units = h0.shape[-1]
        hiddens, cells, caches = [h0], [c0], []
        for t in range(steps):
            pre = gate_major(torch.addmm(projected[t], hiddens[t], w.recurrent.t()), units)
            mask = None if g_mask is None else g_mask[t]
            hidden, cell, cache = gate_ops.forward(pre, cells[t], w.gate_norm, w.cell_norm, mask)
            hiddens.append(hidden)
            cells.append(cell)
            caches.append(cache)
        ends = SequenceEnds(lengths, steps, batch, h0.device)
        hiddens = torch.stack(hiddens)
        ctx.caches, ctx.cells, ctx.ends, ctx.compiled = caches, cells, ends, compiled
        ctx.save_for_backward(hiddens, w.recurrent, w.gate_norm_weight, w.cell_norm_weight, g_mask)
        ctx.set_materialize_grads(False)
        outputs = hiddens[1:]
        return outputs, ends.gather(outputs), ends.gather(torch.stack(cells[1:]))

    @staticmethod
    def backward(ctx, grad_outputs, grad_final_h, grad_final_c):
        hiddens, recurrent_weight, gate_w, cell_w, g_mask = ctx.saved_tensors
        caches, cells, ends = ctx.caches, ctx.cells, ctx.ends
        pointwise_backward = gate_math(ctx.compiled).backward
        steps, batch, units = hiddens.shape[0] - 1, hiddens.shape[1], hiddens.shape[2]
        gate_norm = Affine(gate_w.unsqueeze(1), None)  # the backward needs the scales only
        cell_norm = Affine(cell_w, None)
        grad_projected = hiddens.new_empty(steps, batch, NUM_GATES * units)
        grad_h = torch.zeros_like(hiddens[0])
        grad_c = torch.zeros_like(hiddens[0])
        norm_grads = NormGrads(gate_norm, cell_norm, hiddens[0])
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad_h = grad_h + grad_outputs[t]
            grad_h = ends.inject(t, grad_h, grad_final_h)
            grad_c = ends.inject(t, grad_c, grad_final_c)
            mask = None if g_mask is None else g_mask[t]
            grad_pre, grad_c = pointwise_backward(
                grad_h, grad_c, cells[t], caches[t], gate_norm, cell_norm, mask, norm_grads
            )
            gate_major(grad_projected[t], units).copy_(grad_pre)
            grad_h = grad_projected[t] @ recurrent_weight
        flat = grad_projected.view(steps * batch, -1)
        grad_recurrent = flat.t() @ hiddens[:-1].reshape(steps * batch, units)
        grad_weights = LayerNormLSTMWeights(grad_recurrent, *norm_grads.totals())
        return grad_projected, None, None, None, grad_h, grad_c, *grad_weights


class LayerNormLSTMCell(nn.Module):
    """LSTM with layer norm on each gate's pre-activation and on the cell (no separate bias:
    the gate norm's bias is the LSTM bias). Recurrent dropout on the candidate g."""

    def __init__(
        self, input_size: int, hidden_size: int, forget_bias: float = 1.0,
        recurrent_dropout: float = 0.0, compile: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.forget_bias, self.recurrent_dropout = forget_bias, recurrent_dropout
        self.compile = compile  # fuse the gate arithmetic with torch.compile
        self.input_weight = nn.Parameter(torch.empty(NUM_GATES * hidden_size, input_size))
        self.recurrent_weight = nn.Parameter(torch.empty(NUM_GATES * hidden_size, hidden_size))
        self.gate_norm_weight = nn.Parameter(torch.ones(NUM_GATES, hidden_size))
        self.gate_norm_bias = nn.Parameter(torch.zeros(NUM_GATES, hidden_size))
        self.cell_norm_weight = nn.Parameter(torch.ones(hidden_size))
        self.cell_norm_bias = nn.Parameter(torch.zeros(hidden_size))
        orthogonal_gates_(self.input_weight)
        orthogonal_gates_(self.recurrent_weight)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def gate_bias(self) -> Tensor:
        """The gate norm's bias with the constant forget bias added to the f rows."""
        shift = torch.zeros_like(self.gate_norm_bias)
        shift[FORGET_GATE] = self.forget_bias
        return self.gate_norm_bias + shift

    def recurrence_weights(self) -> LayerNormLSTMWeights:
        return LayerNormLSTMWeights(
            self.recurrent_weight, self.gate_norm_weight, self.gate_bias(),
            self.cell_norm_weight, self.cell_norm_bias,
        )  # fmt: skip

    def forward(self, inputs: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        steps, batch = inputs.shape[1], inputs.shape[0]
        projected = F.linear(inputs.transpose(0, 1), self.input_weight)
        g_mask = dropout_mask(
            self.recurrent_dropout, (steps, batch, self.hidden_size), inputs, self.training
        )
        outputs, *final = _LayerNormLSTMSequence.apply(
            projected, lengths, g_mask, self.compile, *state, *self.recurrence_weights()
        )
        return batch_first_outputs(outputs, lengths), tuple(final)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        w = self.recurrence_weights()
        pre = F.linear(x, self.input_weight) + F.linear(h, w.recurrent)
        mask = dropout_mask(self.recurrent_dropout, h.shape, h, self.training)
        h, c, _ = lstm_pointwise(
            gate_major(pre, self.hidden_size), c, w.gate_norm, w.cell_norm, mask
        )
        return h, (h, c)


class TorchLSTMCell(nn.Module):
    """torch.nn.LSTM (one layer, one direction) behind the cell interface.

    Its fused kernel has no recurrent dropout, so ``recurrent_dropout`` must be 0 here. The
    forget bias initialises the f rows of the input bias (it stays learnable).
    """

    def __init__(
        self, input_size: int, hidden_size: int, forget_bias: float = 1.0,
        recurrent_dropout: float = 0.0, compile: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        del compile  # torch.nn.LSTM's kernel is fused already
        if recurrent_dropout != 0.0:
            raise ValueError(
                "recurrent_dropout must be 0 for cell 'lstm' (torch.nn.LSTM has no dropout on "
                "g); use cell 'ln_lstm' or set recurrent_dropout: 0.0"
            )
        self.input_size, self.hidden_size = input_size, hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        with torch.no_grad():
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_hh_l0.zero_()
            # the forget gate is second in torch.nn.LSTM's order (i, f, g, o), as in ours
            self.lstm.bias_ih_l0.view(NUM_GATES, hidden_size)[FORGET_GATE] = forget_bias

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, inputs: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        h0, c0 = (s.unsqueeze(0).contiguous() for s in state)
        if lengths is None:
            outputs, (h, c) = self.lstm(inputs, (h0, c0))
            return outputs, (h[0], c[0])
        packed = nn.utils.rnn.pack_padded_sequence(
            inputs, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_outputs, (h, c) = self.lstm(packed, (h0, c0))
        outputs, _ = nn.utils.rnn.pad_packed_sequence(
            packed_outputs, batch_first=True, total_length=inputs.shape[1]
        )
        return outputs, (h[0], c[0])

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        lstm = self.lstm
        gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0)
        gates = gates + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)
        i, f, g, o = gates.chunk(NUM_GATES, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)
