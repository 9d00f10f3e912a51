"""HyperLSTM cell (Ha, Dai & Le 2016, appendix A.2.2/A.2.3), with and without layer norm.

Per step, gates y in (i, f, o, g) (gate-major tensors, see nmt/modules/lstm.py):

    hyper cell: layer-norm LSTM with N_hyper units over [h_{t-1}; x_t] -> h^_t
    z_h = W_hh h^_t + b_hh,  z_x = W_hx h^_t + b_hx,  z_b = W_hb h^_t        (N_z per gate)
    y   = LN( d_h(z_h) * (W_h h_{t-1}) + d_x(z_x) * (W_x x_t) + W_bz z_b + b_0 ),  d = W_z z
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) dropout(tanh(g)),  h_t = sigmoid(o) tanh(LN(c_t))

(LN off in the plain variant.) Because d_x(z_x) * (W_x x_t) only rescales rows of an ordinary
projection, W_x x_t and the hyper cell's x_t part are one matrix product over all steps before
the recurrence. The recurrence runs in ``_HyperLSTMSequence``, an autograd function whose
backward keeps every step's gradients (in a buffer each cell reuses, ``BackwardWorkspace``) and
forms all weight gradients as a few large products after the backward loop; the per-step
products read input-major copies of their weights (``input_major``). On the CPU,
``_FusedPath`` and ``fused_step`` do each cell's element-wise work of a step in one C++ kernel
(``nmt.kernels``); the eager functions stay the reference and the fallback. For serving,
``HyperLSTMCell.quantize_int8_`` runs the two large products of every step on int8 weights.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt import kernels
from nmt.modules.lstm import (
    EAGER_GATE_MATH,
    FORGET_GATE,
    NUM_GATES,
    Affine,
    GateMath,
    LayerNormLSTMCell,
    NormGrads,
    PointwiseCache,
    batch_first_outputs,
    dropout_mask,
    gate_major,
    gate_math,
    orthogonal_gates_,
)
from nmt.modules.padding import SequenceEnds, State

NUM_Z = 3 * NUM_GATES  # z_h, z_x, z_b for each gate
# Rows of the (12, B, H) scalings W_z z: d_h, d_x, then the dynamic bias W_bz z_b
D_H = slice(0, NUM_GATES)
D_X = slice(NUM_GATES, 2 * NUM_GATES)
D_B = slice(2 * NUM_GATES, NUM_Z)
FUSED_DTYPES = (torch.float32, torch.float64)  # the fused kernels' types
Z_SCALE_INIT = 0.1  # d_h and d_x start at exactly this value per row
Z_BIAS_STD = 0.01  # std of the z_b projection's initial weights


class HyperWeights(NamedTuple):
    """The cell's parameters as the recurrence uses them (``HyperLSTMCell.recurrence_weights``).

    Every field is a tensor, or None for the main cell's norms without layer norm, so the
    autograd function takes them as ``*weights`` and returns their gradients in this order.
    """

    recurrent: Tensor  # (4N_hyper + 4H, H): [hyper cell's W for h_{t-1}; W_h]
    hyper_recurrent: Tensor  # (4N_hyper, N_hyper): hyper cell's W for h^_{t-1}
    z_weight: Tensor  # (12 N_z, N_hyper): z_h, z_x, z_b projections, gate-major within each
    z_bias: Tensor  # (12 N_z,): b_hh, b_hx, then zeros (z_b has no bias)
    d_weight: Tensor  # (12, N_z, H): W_hz, W_xz, W_bz per gate
    d_bias: Tensor  # (4, 1, H): b_0 (+ forget bias without LN)
    gate_norm_weight: Tensor | None  # (4, H), the main cell's layer norms
    gate_norm_bias: Tensor | None  # (4, H), forget bias included
    cell_norm_weight: Tensor | None  # (H,)
    cell_norm_bias: Tensor | None  # (H,)
    hyper_gate_norm_weight: Tensor  # (4, N_hyper), the hyper cell's (always layer-normed)
    hyper_gate_norm_bias: Tensor  # (4, N_hyper), forget bias included
    hyper_cell_norm_weight: Tensor  # (N_hyper,)
    hyper_cell_norm_bias: Tensor  # (N_hyper,)

    @property
    def gate_norm(self) -> Affine | None:
        if self.gate_norm_weight is None:
            return None
        return Affine(self.gate_norm_weight.unsqueeze(1), self.gate_norm_bias.unsqueeze(1))

    @property
    def cell_norm(self) -> Affine | None:
        if self.cell_norm_weight is None:
            return None
        return Affine(self.cell_norm_weight, self.cell_norm_bias)

    @property
    def hyper_gate_norm(self) -> Affine:
        weight, bias = self.hyper_gate_norm_weight, self.hyper_gate_norm_bias
        return Affine(weight.unsqueeze(1), bias.unsqueeze(1))

    @property
    def hyper_cell_norm(self) -> Affine:
        return Affine(self.hyper_cell_norm_weight, self.hyper_cell_norm_bias)

    def main_norms(self) -> tuple[Tensor | None, ...]:
        """The main cell's gate and cell norms as the fused kernels take them (or Nones)."""
        return (
            self.gate_norm_weight, self.gate_norm_bias, self.cell_norm_weight, self.cell_norm_bias,
        )  # fmt: skip

    def hyper_norms(self) -> tuple[Tensor, ...]:
        return (
            self.hyper_gate_norm_weight, self.hyper_gate_norm_bias, self.hyper_cell_norm_weight,
            self.hyper_cell_norm_bias,
        )  # fmt: skip


class _StepCache(NamedTuple):
    """What the eager backward keeps of a step."""

    recurrent_products: Tensor  # h_{t-1} @ recurrent.T, (B, 4N_hyper + 4H)
    z: Tensor  # (B, 12 N_z)
    scalings: Tensor  # d_h, d_x = W_z z, (8, B, H)
    hyper: PointwiseCache  # the hyper cell's gate values
    main: PointwiseCache  # the main cell's gate values


class _FusedCache(NamedTuple):
    """What the fused backward kernels recompute a step from (instead of its gate values).

    Not the scalings W_z z: the backward recomputes them from z with one small product instead
    of keeping a (12, B, H) copy per step (63 MB a sequence at the benchmark sizes).
    """

    recurrent_products: Tensor  # h_{t-1} @ recurrent.T, (B, 4N_hyper + 4H)
    hyper_pre: Tensor  # the hyper cell's pre-activations, (4, B, N_hyper) gate-major view
    z: Tensor  # (B, 12 N_z)


class _StepWeights(NamedTuple):
    """What one step at a time multiplies by (``HyperLSTMCell._step_weights``)."""

    input_t: Tensor  # (I, 4H + 4N_hyper): [W_x; hyper cell's W for x_t], input-major
    recurrent_t: Tensor  # (H, 4N_hyper + 4H): HyperWeights.recurrent, input-major
    recurrence: HyperWeights


class Int8Weights(NamedTuple):
    """fbgemm-prepacked int8 weights of a step's two large products (see quantize_int8_)."""

    input: object  # [W_x; hyper cell's W for x_t]
    recurrent: object  # [hyper cell's W for h_{t-1}; W_h]


INT8_MAX = 127  # symmetric int8 range of the weights
# 7-bit activations: fbgemm without VNNI saturates with 8 bits, and on a VNNI CPU 8 bits still
# put the int8 model further from float (tests/test_bundle.py)
REDUCE_RANGE = True


def pack_int8(weight: Tensor) -> object:
    """Per-row symmetric int8 quantisation of a float weight, prepacked for fbgemm."""
    weight = weight.detach().float().contiguous()
    scales = weight.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # quantised tensor creation is deprecated in favour of torchao (not a dependency); the
        # fbgemm kernels it feeds are the ones torch's dynamic quantisation uses.
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, None)


def linear_int8(x: Tensor, packed: object) -> Tensor:
    """x @ W.T with the prepacked int8 W (x quantised per call; reduce_range as fbgemm needs)."""
    out = torch.ops.quantized.linear_dynamic(x.float(), packed, REDUCE_RANGE)
    return out.to(x.dtype)


def _hyper_pre_activation(
    x_hyper: Tensor, state: State, w: HyperWeights, products: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The step's matrix products before the cells: [hyper; main] recurrent products, the
    main cell's W_h h_{t-1} as (4, B, H) and the hyper cell's pre-activation (4, B, N_hyper)."""
    h, _, hyper_h, _ = state
    hyper_split = NUM_GATES * hyper_h.shape[-1]
    products = h @ w.recurrent.t() if products is None else products
    h_part = gate_major(products[:, hyper_split:], h.shape[-1])
    hyper_pre = torch.addmm(products[:, :hyper_split] + x_hyper, hyper_h, w.hyper_recurrent.t())
    return products, h_part, gate_major(hyper_pre, hyper_h.shape[-1])


def hyper_step(
    x_main: Tensor,
    x_hyper: Tensor,
    state: State,
    w: HyperWeights,
    g_mask: Tensor | None,
    hyper_g_mask: Tensor | None,
    products: Tensor | None = None,
    gate_ops: GateMath = EAGER_GATE_MATH,
) -> tuple[State, _StepCache]:
    """One step, eager. x_main = W_x x_t as (4, B, H); x_hyper = hyper cell's x_t part,
    (B, 4N_hyper); ``products`` = h_{t-1} @ w.recurrent.T when the caller computed it (from an
    input-major copy of the weight, or in int8)."""
    _, c, _, hyper_c = state
    batch = x_hyper.shape[0]
    products, h_part, hyper_pre = _hyper_pre_activation(x_hyper, state, w, products)
    hyper_h, hyper_c, hyper_cache = gate_ops.forward(
        hyper_pre, hyper_c, w.hyper_gate_norm, w.hyper_cell_norm, hyper_g_mask
    )
    z = torch.addmm(w.z_bias, hyper_h, w.z_weight.t())
    z_gates = z.view(batch, NUM_Z, w.d_weight.shape[1]).transpose(0, 1)
    # the backward keeps d_h and d_x; the dynamic bias W_bz z_b goes straight into the sum
    d = torch.bmm(z_gates[: D_X.stop], w.d_weight[: D_X.stop])
    pre = torch.baddbmm(w.d_bias, z_gates[D_B], w.d_weight[D_B])
    pre.addcmul_(d[D_H], h_part).addcmul_(d[D_X], x_main)
    h, c, main_cache = gate_ops.forward(pre, c, w.gate_norm, w.cell_norm, g_mask)
    return (h, c, hyper_h, hyper_c), _StepCache(products, z, d, hyper_cache, main_cache)


def fused_step(
    x_main: Tensor,
    x_hyper: Tensor,
    state: State,
    w: HyperWeights,
    g_mask: Tensor | None,
    hyper_g_mask: Tensor | None,
    products: Tensor | None = None,
    scalings: Tensor | None = None,
) -> tuple[State, _FusedCache]:
    """``hyper_step`` with each cell's element-wise work in one fused kernel
    (``torch.ops.hypernmt``); the matrix products are the same BLAS calls. ``scalings``: a
    (12, B, H) buffer for W_z z that a sequence reuses every step (without autograd only)."""
    _, c, _, hyper_c = state
    products, h_part, hyper_pre = _hyper_pre_activation(x_hyper, state, w, products)
    hyper_h, hyper_c = torch.ops.hypernmt.ln_lstm_cell(
        hyper_pre, hyper_c, *w.hyper_norms(), hyper_g_mask
    )
    z = torch.addmm(w.z_bias, hyper_h, w.z_weight.t())
    d = _scalings(z, w, scalings)
    h, c = torch.ops.hypernmt.hyper_main_cell(
        h_part, x_main, d, w.d_bias.squeeze(1), c, *w.main_norms(), g_mask
    )
    return (h, c, hyper_h, hyper_c), _FusedCache(products, hyper_pre, z)


def _scalings(z: Tensor, w: HyperWeights, out: Tensor | None = None) -> Tensor:
    """d_h, d_x and the dynamic bias W_bz z_b = W_z z, (12, B, H), from z (B, 12 N_z)."""
    z_gates = z.view(z.shape[0], NUM_Z, w.d_weight.shape[1]).transpose(0, 1)
    return torch.bmm(z_gates, w.d_weight, out=out)


class _StepGrads(NamedTuple):
    """Where a step's backward writes: views into the sequence's gradient buffers."""

    h_part: Tensor  # d (W_h h_{t-1}), (4, B, H)
    x_main: Tensor  # d (W_x x_t), (4, B, H)
    hyper_pre: Tensor  # d of the hyper cell's pre-activation, (4, B, N_hyper)
    d: Tensor  # d (W_z z), (12, B, H)
    bias: Tensor  # d b_0 summed over the steps and the rows of each slot, (4, slots, H)


class _EagerPath:
    """A step's element-wise work in PyTorch (the reference), optionally torch.compile'd."""

    def __init__(self, compiled: bool) -> None:
        self.gate_ops = gate_math(compiled)

    def step(self, x_main, x_hyper, state, w, g_mask, hyper_g_mask, products):
        return hyper_step(
            x_main, x_hyper, state, w, g_mask, hyper_g_mask, products, gate_ops=self.gate_ops
        )

    def norm_accumulators(self, w: HyperWeights, h: Tensor, hyper_h: Tensor) -> tuple:
        main = NormGrads(w.gate_norm, w.cell_norm, h)
        return main, NormGrads(w.hyper_gate_norm, w.hyper_cell_norm, hyper_h)

    def bias_accumulator(self, h: Tensor) -> Tensor:
        return h.new_zeros(NUM_GATES, 1, h.shape[-1])

    def norm_totals(self, acc: NormGrads) -> tuple[Tensor | None, ...]:
        return acc.totals()

    def main_backward(
        self, grad_h: Tensor, grad_c: Tensor, cache: _StepCache, h_part: Tensor,
        x_main: Tensor, cell_prev: Tensor, w: HyperWeights, g_mask: Tensor | None,
        acc: NormGrads, out: _StepGrads,
    ) -> Tensor:  # fmt: skip
        """Fills out.h_part, out.x_main, out.d, adds to out.bias; returns d c_{t-1}."""
        grad_pre, grad_c_prev = self.gate_ops.backward(
            grad_h, grad_c, cell_prev, cache.main, w.gate_norm, w.cell_norm, g_mask, acc
        )
        torch.mul(grad_pre, h_part, out=out.d[D_H])
        torch.mul(grad_pre, x_main, out=out.d[D_X])
        out.d[D_B] = grad_pre
        out.bias.add_(grad_pre.sum(1, keepdim=True))
        torch.mul(grad_pre, cache.scalings[D_H], out=out.h_part)
        torch.mul(grad_pre, cache.scalings[D_X], out=out.x_main)
        return grad_c_prev

    def hyper_backward(
        self, grad_h: Tensor, grad_c: Tensor, cache: _StepCache, cell_prev: Tensor,
        w: HyperWeights, g_mask: Tensor | None, acc: NormGrads, out: _StepGrads,
    ) -> Tensor:  # fmt: skip
        grad_pre, grad_c_prev = self.gate_ops.backward(
            grad_h, grad_c, cell_prev, cache.hyper, w.hyper_gate_norm, w.hyper_cell_norm,
            g_mask, acc,
        )  # fmt: skip
        out.hyper_pre.copy_(grad_pre)
        return grad_c_prev


class _FusedPath:
    """A step's element-wise work in the fused C++ kernels; the backward kernels recompute
    the gates from the step's inputs and sum the norm and bias gradients per thread. One
    path serves one sequence's forward and backward: its buffer for the scalings W_z z is
    written every step, forward and backward, so it stays in the cache."""

    def __init__(self) -> None:
        self._scalings: Tensor | None = None

    def _scalings_buffer(self, like: Tensor, w: HyperWeights) -> Tensor:
        """The sequence's (12, B, H) buffer; ``like`` is any (B, *) tensor of the step."""
        if self._scalings is None:
            self._scalings = like.new_empty(NUM_Z, like.shape[0], w.d_weight.shape[-1])
        return self._scalings

    def step(self, x_main, x_hyper, state, w, g_mask, hyper_g_mask, products):
        buffer = self._scalings_buffer(x_hyper, w)
        return fused_step(x_main, x_hyper, state, w, g_mask, hyper_g_mask, products, buffer)

    def norm_accumulators(self, w: HyperWeights, h: Tensor, hyper_h: Tensor) -> tuple:
        main = kernels.norm_accumulator(h) if w.gate_norm_weight is not None else None
        return main, kernels.norm_accumulator(hyper_h)

    def bias_accumulator(self, h: Tensor) -> Tensor:
        return kernels.bias_accumulator(h)

    def norm_totals(self, acc: Tensor | None) -> tuple[Tensor | None, ...]:
        return (None,) * 4 if acc is None else kernels.norm_totals(acc)

    def main_backward(
        self, grad_h: Tensor, grad_c: Tensor, cache: _FusedCache, h_part: Tensor,
        x_main: Tensor, cell_prev: Tensor, w: HyperWeights, g_mask: Tensor | None,
        acc: Tensor | None, out: _StepGrads,
    ) -> Tensor:  # fmt: skip
        grad_c_prev = torch.empty_like(grad_c)
        scalings = _scalings(cache.z, w, self._scalings_buffer(cache.z, w))
        torch.ops.hypernmt.hyper_main_cell_backward(
            grad_h, grad_c, h_part, x_main, scalings, w.d_bias.squeeze(1), cell_prev,
            *w.main_norms(), g_mask, out.h_part, out.x_main, out.d, grad_c_prev,
            cell_prev.new_empty(0) if acc is None else acc, out.bias,
        )  # fmt: skip
        return grad_c_prev

    def hyper_backward(
        self, grad_h: Tensor, grad_c: Tensor, cache: _FusedCache, cell_prev: Tensor,
        w: HyperWeights, g_mask: Tensor | None, acc: Tensor, out: _StepGrads,
    ) -> Tensor:  # fmt: skip
        grad_c_prev = torch.empty_like(grad_c)
        torch.ops.hypernmt.ln_lstm_cell_backward(
            grad_h, grad_c, cache.hyper_pre, cell_prev, *w.hyper_norms(), g_mask, out.hyper_pre,
            grad_c_prev, acc,
        )  # fmt: skip
        return grad_c_prev


def input_major(weight: Tensor) -> Tensor:
    """A contiguous (in, out) copy of an (out, in) weight, made once for many products: for
    the few rows of one step, x @ W with W laid out (in, out) runs 15-40 % faster in MKL than
    x @ W.T on the (out, in) parameter (``benchmarks/weight_layout.py``)."""
    return weight.t().contiguous()


def _at(mask: Tensor | None, t: int) -> Tensor | None:
    return None if mask is None else mask[t]


def _split_projected(projected: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """(T, B, 4H + 4N_hyper) input projections -> W_x x as (T, 4, B, H), the hyper part."""
    steps, batch, _ = projected.shape
    split = NUM_GATES * hidden
    x_main = projected[..., :split].view(steps, batch, NUM_GATES, hidden).transpose(1, 2)
    return x_main, projected[..., split:]


class BackwardWorkspace:
    """One cell's buffer for every step's gradients of the input projections and recurrent
    products, (T, B, 4H + 4N_hyper + 4H), reused by each backward pass instead of allocated
    fresh.

    Why: a fresh buffer this large is new memory every pass, and the kernel that first writes
    each 4 KB page of it pays a page fault there (in the loop, the main cell's backward kernel
    took 4.0 ms a step with a fresh buffer and 1.6 ms with a reused one). Reuse is safe because
    the buffer never leaves the backward pass: the input and weight gradients are products of
    it, made before the pass returns, and the passes of one cell run one after another
    (autograd runs a graph's CPU nodes on one thread). It grows to the largest (T, B) seen and
    keeps that size. CPU only: a GPU's caching allocator already reuses memory without faults,
    and there a buffer held between passes would only add to the forward pass's peak memory.
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
        if like.device.type != "cpu":
            return like.new_empty(shape)
        size = math.prod(shape)
        buffer = self._buffer
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype:
            buffer = self._buffer = like.new_empty(size)
        return buffer[:size].view(shape)


class _HyperLSTMSequence(torch.autograd.Function):
    """The whole layer, input projections included, with a hand-written backward (see the
    module docstring); ``path`` (``_EagerPath`` or ``_FusedPath``) does each step's element-wise
    work, ``workspace`` holds the backward pass's per-step gradients. ``inputs`` is (B, T, I),
    ``input_weight`` [W_x; hyper cell's W for x_t], (4H + 4N_hyper, I)."""

    @staticmethod
    def forward(
        ctx, path, workspace, inputs, input_weight, lengths, g_mask, hyper_g_mask, h0, c0,
        hyper_h0, hyper_c0, *weights,
    ):  # fmt: skip
        w = HyperWeights(*weights)
        projected = F.linear(inputs.transpose(0, 1), input_weight)  # (T, B, 4H + 4N_hyper)
        steps, batch, _ = projected.shape
        x_main, x_hyper = _split_projected(projected, h0.shape[-1])
        states = [[h0], [c0], [hyper_h0], [hyper_c0]]  # per step, from the initial state
        caches = []
        recurrent_t = input_major(w.recurrent)
        for t in range(steps):
            state, cache = path.step(
                x_main[t], x_hyper[t], tuple(s[t] for s in states), w, _at(g_mask, t),
                _at(hyper_g_mask, t), states[0][t] @ recurrent_t,
            )  # fmt: skip
            for history, value in zip(states, state, strict=True):
                history.append(value)
            caches.append(cache)
        ends = SequenceEnds(lengths, steps, batch, h0.device)
        hs, hyper_hs = torch.stack(states[0]), torch.stack(states[2])
        ctx.path, ctx.workspace, ctx.caches, ctx.ends = path, workspace, caches, ends
        ctx.cells, ctx.hyper_cells = states[1], states[3]
        ctx.save_for_backward(
            inputs, input_weight, projected, hs, hyper_hs, g_mask, hyper_g_mask, *weights
        )
        ctx.set_materialize_grads(False)
        final_c, final_hyper_c = (ends.gather(torch.stack(s[1:])) for s in (states[1], states[3]))
        outputs = hs[1:]
        return outputs, ends.gather(outputs), final_c, ends.gather(hyper_hs[1:]), final_hyper_c

    @staticmethod
    def backward(ctx, grad_outputs, *grad_finals):
        inputs, input_weight, projected, hs, hyper_hs, g_mask, hyper_g_mask, *weights = (
            ctx.saved_tensors
        )
        w = HyperWeights(*weights)
        path, caches, ends = ctx.path, ctx.caches, ctx.ends
        cs, hyper_cs = ctx.cells, ctx.hyper_cells
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        hyper_units = hyper_hs.shape[-1]
        split, hyper_split = NUM_GATES * hidden, NUM_GATES * hyper_units
        z_size = w.d_weight.shape[1]
        x_main, _ = _split_projected(projected, hidden)

        # One buffer, columns [W_x x_t | hyper pre-activation | W_h h_{t-1}]: the gradients of
        # the input-side projections and of the recurrent products share the hyper columns.
        grads = ctx.workspace.take((steps, batch, 2 * split + hyper_split), hs)
        grad_projected = grads[..., : split + hyper_split]
        grad_products = grads[..., split:]  # d (h_{t-1} @ recurrent.T)
        d_weight_t = w.d_weight.transpose(1, 2).contiguous()
        grad_d = hs.new_empty(NUM_Z, batch, hidden)  # d loss / d (W_z z) at one step
        grad_d_weight = w.d_weight.new_zeros(w.d_weight.shape)
        grad_bias = path.bias_accumulator(hs[0])
        grad_z = hs.new_empty(steps, batch, NUM_Z * z_size)
        main_acc, hyper_acc = path.norm_accumulators(w, hs[0], hyper_hs[0])
        grad = [torch.zeros_like(s[0]) for s in (hs, hs, hyper_hs, hyper_hs)]

        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad[0] = grad[0] + grad_outputs[t]
            grad = [ends.inject(t, g, final) for g, final in zip(grad, grad_finals, strict=True)]
            cache = caches[t]
            out = _StepGrads(
                gate_major(grad_products[t, :, hyper_split:], hidden),
                gate_major(grad_projected[t, :, :split], hidden),
                gate_major(grad_products[t, :, :hyper_split], hyper_units), grad_d, grad_bias,
            )  # fmt: skip
            h_part = gate_major(cache.recurrent_products[:, hyper_split:], hidden)
            grad_c_prev = path.main_backward(
                grad[0], grad[1], cache, h_part, x_main[t], cs[t], w, _at(g_mask, t), main_acc, out
            )
            grad_d_weight.baddbmm_(cache.z.view(batch, NUM_Z, z_size).permute(1, 2, 0), grad_d)
            grad_z_t = grad_z[t]
            grad_z_t.view(batch, NUM_Z, z_size).transpose(0, 1).copy_(torch.bmm(grad_d, d_weight_t))
            grad_hyper_h = torch.addmm(grad[2], grad_z_t, w.z_weight)
            grad_hyper_c_prev = path.hyper_backward(
                grad_hyper_h, grad[3], cache, hyper_cs[t], w, _at(hyper_g_mask, t), hyper_acc, out
            )
            grad = [
                grad_products[t] @ w.recurrent, grad_c_prev,
                grad_products[t, :, :hyper_split] @ w.hyper_recurrent, grad_hyper_c_prev,
            ]  # fmt: skip

        grad_inputs, grad_input_weight = _input_gradients(
            grads, split + hyper_split, inputs, input_weight, ctx.needs_input_grad[2:4]
        )
        grad_weights = HyperWeights(
            *_weight_gradients(grad_products, grad_z, hs, hyper_hs, hyper_split),
            grad_d_weight, grad_bias.sum(1, keepdim=True),
            *path.norm_totals(main_acc), *path.norm_totals(hyper_acc),
        )  # fmt: skip
        return (
            None, None, grad_inputs, grad_input_weight, None, None, None, *grad, *grad_weights
        )  # fmt: skip


def _input_gradients(
    grads: Tensor, columns: int, inputs: Tensor, input_weight: Tensor, needed: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of the inputs (B, T, I) and of the input weight from the first
    ``columns`` columns of ``grads`` (T, B, *), d (W x_t) of every step; each only if needed."""
    steps, batch = grads.shape[:2]
    flat = grads.view(steps * batch, -1)[:, :columns]
    grad_inputs = grad_weight = None
    if needed[0]:
        grad_inputs = (flat @ input_weight).view(steps, batch, -1).transpose(0, 1)
    if needed[1]:
        grad_weight = flat.t() @ inputs.transpose(0, 1).reshape(steps * batch, -1)
    return grad_inputs, grad_weight


def _weight_gradients(
    grad_products: Tensor, grad_z: Tensor, hs: Tensor, hyper_hs: Tensor, hyper_split: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The weight gradients of a whole sequence as a few large products over all its steps:
    recurrent, hyper recurrent, z weight and z bias.

    grad_products (T, B, 4N_hyper + 4H) and grad_z (T, B, *) hold every step's gradients;
    hs (T+1, B, H) and hyper_hs (T+1, B, N_hyper) every state, the initial one first.
    """
    rows = grad_products.shape[0] * grad_products.shape[1]
    flat_products = grad_products.view(rows, -1)
    hidden, hyper_units = hs.shape[-1], hyper_hs.shape[-1]
    grad_recurrent = flat_products.t() @ hs[:-1].reshape(rows, hidden)
    grad_hyper_recurrent = flat_products[:, :hyper_split].t() @ hyper_hs[:-1].reshape(
        rows, hyper_units
    )
    flat_z = grad_z.view(rows, -1)
    grad_z_weight = flat_z.t() @ hyper_hs[1:].reshape(rows, hyper_units)
    return grad_recurrent, grad_hyper_recurrent, grad_z_weight, flat_z.sum(0)


class HyperLSTMCell(nn.Module):
    """HyperLSTM cell; ``layer_norm`` switches the main cell's layer norms (the hyper cell is
    always a layer-norm LSTM, as in the paper)."""

    def __init__(
        self, input_size: int, hidden_size: int, hyper_size: int = 128, n_z: int = 32,
        layer_norm: bool = True, forget_bias: float = 1.0, recurrent_dropout: float = 0.0,
        compile: bool = False, fused: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.hyper_size, self.n_z = hyper_size, n_z
        self.layer_norm, self.forget_bias = layer_norm, forget_bias
        self.recurrent_dropout = recurrent_dropout
        self.compile = compile  # fuse the gate arithmetic with torch.compile
        self.fused = fused  # the fused C++ kernels where they apply (see uses_fused_kernels)
        # (parameter versions, weights) built for decoding steps; see _step_weights
        self._cached_step_weights: tuple[tuple, _StepWeights] | None = None
        # int8 products for inference (see quantize_int8_); (parameter versions, packed weights)
        self.int8 = False
        self._cached_int8: tuple[tuple, Int8Weights] | None = None
        self._workspace = BackwardWorkspace()
        gates = NUM_GATES * hidden_size
        self.hyper = LayerNormLSTMCell(
            hidden_size + input_size, hyper_size, forget_bias, recurrent_dropout
        )
        self.input_weight = nn.Parameter(orthogonal_gates_(torch.empty(gates, input_size)))
        self.recurrent_weight = nn.Parameter(orthogonal_gates_(torch.empty(gates, hidden_size)))
        # z_h, z_x (weight 0, bias 1) and z_b (weight N(0, 0.01), no bias)
        self.z_weight = nn.Parameter(torch.zeros(NUM_Z * n_z, hyper_size))
        nn.init.normal_(self.z_weight[2 * NUM_GATES * n_z :], std=Z_BIAS_STD)
        self.z_bias = nn.Parameter(torch.ones(2 * NUM_GATES * n_z))
        # d_h = W_hz z_h, d_x = W_xz z_x (constant 0.1/N_z), W_bz z_b (zero): (12, N_z, H)
        self.d_weight = nn.Parameter(torch.zeros(NUM_Z, n_z, hidden_size))
        with torch.no_grad():
            self.d_weight[: 2 * NUM_GATES] = Z_SCALE_INIT / n_z
        self.bias = nn.Parameter(torch.zeros(NUM_GATES, hidden_size))  # b_0
        if layer_norm:
            self.gate_norm_weight = nn.Parameter(torch.ones(NUM_GATES, hidden_size))
            self.gate_norm_bias = nn.Parameter(torch.zeros(NUM_GATES, hidden_size))
            self.cell_norm_weight = nn.Parameter(torch.ones(hidden_size))
            self.cell_norm_bias = nn.Parameter(torch.zeros(hidden_size))

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        def zeros(n: int) -> Tensor:
            return torch.zeros(batch_size, n, device=device, dtype=dtype)

        return (
            zeros(self.hidden_size),
            zeros(self.hidden_size),
            zeros(self.hyper_size),
            zeros(self.hyper_size),
        )

    def _forget_shift(self) -> Tensor:
        shift = torch.zeros_like(self.bias)
        shift[FORGET_GATE] = self.forget_bias
        return shift

    def recurrence_weights(self) -> HyperWeights:
        """The parameters as the recurrence uses them (combined where the loop wants them)."""
        hidden = self.hidden_size
        hyper = self.hyper
        recurrent = torch.cat([hyper.input_weight[:, :hidden], self.recurrent_weight])
        z_bias = torch.cat([self.z_bias, self.z_bias.new_zeros(NUM_GATES * self.n_z)])
        bias = self.bias if self.layer_norm else self.bias + self._forget_shift()
        if self.layer_norm:
            norms = (
                self.gate_norm_weight, self.gate_norm_bias + self._forget_shift(),
                self.cell_norm_weight, self.cell_norm_bias,
            )  # fmt: skip
        else:
            norms = (None, None, None, None)
        return HyperWeights(
            recurrent, hyper.recurrent_weight, self.z_weight, z_bias, self.d_weight,
            bias.unsqueeze(1), *norms, hyper.gate_norm_weight, hyper.gate_bias(),
            hyper.cell_norm_weight, hyper.cell_norm_bias,
        )  # fmt: skip

    def _input_weight(self) -> Tensor:
        """[W_x; hyper cell's W for x_t]: both input-side projections in one product."""
        return torch.cat([self.input_weight, self.hyper.input_weight[:, self.hidden_size :]])

    def _masks(self, shape: tuple[int, ...], like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        p = self.recurrent_dropout
        hyper_shape = (*shape, self.hyper_size)
        main = dropout_mask(p, (*shape, self.hidden_size), like, self.training)
        return main, dropout_mask(p, hyper_shape, like, self.training)

    def uses_fused_kernels(self, like: Tensor) -> bool:
        """Fused C++ kernels (``nmt.kernels``) or the eager PyTorch path for tensors like
        ``like``; logs the choice once per process. The eager path is the reference: it runs
        with ``fused: false``, with ``compile: true`` (torch.compile of the eager gate math),
        on other devices than the CPU, for other dtypes, and when the kernels do not build."""
        if not self.fused:
            reason = "fused_kernels is off"
        elif self.compile:
            reason = "compile is on"
        elif like.device.type != "cpu":
            reason = f"the fused kernels are CPU-only, tensors are on {like.device.type}"
        elif like.dtype not in FUSED_DTYPES:
            reason = f"the fused kernels take float32/float64, not {like.dtype}"
        elif not kernels.available():
            reason = f"the fused kernels did not build: {kernels.unavailable_reason()}"
        else:
            kernels.log_path_once("HyperLSTM recurrence: fused C++ CPU kernels (nmt.kernels)")
            return True
        kernels.log_path_once(f"HyperLSTM recurrence: eager PyTorch path ({reason})")
        return False

    def forward(self, inputs: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        int8 = self._int8_weights()
        if int8 is not None:
            return self._forward_int8(inputs, lengths, state, int8)
        batch, steps = inputs.shape[:2]
        g_mask, hyper_g_mask = self._masks((steps, batch), inputs)
        path = _FusedPath() if self.uses_fused_kernels(inputs) else _EagerPath(self.compile)
        outputs, *final = _HyperLSTMSequence.apply(
            path, self._workspace, inputs, self._input_weight(), lengths, g_mask, hyper_g_mask,
            *state, *self.recurrence_weights(),
        )  # fmt: skip
        return batch_first_outputs(outputs, lengths), tuple(final)

    def _step_weights(self) -> _StepWeights:
        """The weights of one step at a time (decoding, input feeding).

        Building them concatenates weight matrices, a cost as large as a small batch's whole
        step, so without autograd (decoding) they are built once, with input-major copies of
        the two large products' weights, and reused until a parameter changes: every in-place
        update (an optimizer step, ``load_state_dict``) bumps its tensor's version. Under
        autograd the products use transposed views (a copy a step would cost more).
        """
        if torch.is_grad_enabled():
            input_weight, weights = self._input_weight(), self.recurrence_weights()
            return _StepWeights(input_weight.t(), weights.recurrent.t(), weights)
        versions = self._parameter_versions()
        if self._cached_step_weights is None or self._cached_step_weights[0] != versions:
            weights = self.recurrence_weights()
            step_weights = _StepWeights(
                input_major(self._input_weight()), input_major(weights.recurrent), weights
            )
            self._cached_step_weights = (versions, step_weights)
        return self._cached_step_weights[1]

    def _parameter_versions(self) -> tuple:
        return tuple((id(p), p._version) for p in self.parameters())

    def quantize_int8_(self) -> HyperLSTMCell:
        """Serve with int8 weights for the two large products of every step: the input
        projection [W_x; hyper W for x_t] and the recurrent product [hyper W for h; W_h]
        (fbgemm's dynamically quantised linear on prepacked per-row int8 weights; inputs are
        quantised per call). Applies without autograd only; training stays float."""
        self.int8 = True
        self._cached_int8 = None
        return self

    def _int8_weights(self) -> Int8Weights | None:
        """The prepacked int8 weights, rebuilt when a parameter changed; None when int8 is off,
        under autograd, or off the CPU."""
        if not self.int8 or torch.is_grad_enabled() or self.input_weight.device.type != "cpu":
            return None
        versions = self._parameter_versions()
        if self._cached_int8 is None or self._cached_int8[0] != versions:
            recurrent = self.recurrence_weights().recurrent
            packed = Int8Weights(pack_int8(self._input_weight()), pack_int8(recurrent))
            self._cached_int8 = (versions, packed)
        return self._cached_int8[1]

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        batch, split = x.shape[0], NUM_GATES * self.hidden_size
        step_weights = self._step_weights()
        int8 = self._int8_weights()
        if int8 is None:
            projected = x @ step_weights.input_t
            products = state[0] @ step_weights.recurrent_t
        else:
            projected = linear_int8(x, int8.input)
            products = linear_int8(state[0], int8.recurrent)
        x_main = projected[:, :split].view(batch, NUM_GATES, self.hidden_size).transpose(0, 1)
        g_mask, hyper_g_mask = self._masks((batch,), x)
        step = fused_step if self.uses_fused_kernels(x) else hyper_step
        state, _ = step(
            x_main,
            projected[:, split:],
            state,
            step_weights.recurrence,
            g_mask,
            hyper_g_mask,
            products=products,
        )
        return state[0], state

    def _forward_int8(
        self, inputs: Tensor, lengths: Tensor | None, state: State, int8: Int8Weights
    ) -> tuple[Tensor, State]:
        """The sequence without autograd, one step at a time with the int8 products."""
        batch, steps = inputs.shape[:2]
        split = NUM_GATES * self.hidden_size
        weights = self._step_weights().recurrence
        projected = linear_int8(inputs.reshape(batch * steps, -1), int8.input)
        projected = projected.view(batch, steps, -1)
        step = fused_step if self.uses_fused_kernels(inputs) else hyper_step
        history = []
        for t in range(steps):
            x_main = projected[:, t, :split].view(batch, NUM_GATES, -1).transpose(0, 1)
            products = linear_int8(state[0], int8.recurrent)
            state, _ = step(
                x_main, projected[:, t, split:], state, weights, None, None, products=products
            )
            history.append(state)
        ends = SequenceEnds(lengths, steps, batch, inputs.device)
        outputs = torch.stack([s[0] for s in history])
        final = tuple(ends.gather(torch.stack([s[k] for s in history])) for k in range(4))
        return batch_first_outputs(outputs, lengths), final

    @torch.no_grad()
    def weight_scalings(self, inputs: Tensor, state: State | None = None) -> dict[str, Tensor]:
        """d_h and d_x at every step, (B, T, 4H) each, gates in (i, f, o, g) order."""
        batch, steps = inputs.shape[:2]
        state = state or self.initial_state(batch, inputs.device, inputs.dtype)
        step_weights = self._step_weights()
        weights = step_weights.recurrence
        projected = inputs @ step_weights.input_t
        split = NUM_GATES * self.hidden_size
        d_h, d_x = [], []
        for t in range(steps):
            x_main = projected[:, t, :split].view(batch, NUM_GATES, -1).transpose(0, 1)
            state, cache = hyper_step(x_main, projected[:, t, split:], state, weights, None, None)
            d_h.append(cache.scalings[:4].transpose(0, 1).reshape(batch, split))
            d_x.append(cache.scalings[4:8].transpose(0, 1).reshape(batch, split))
        return {"d_h": torch.stack(d_h, 1), "d_x": torch.stack(d_x, 1)}
