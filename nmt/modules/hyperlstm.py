"""HyperLSTM cell (Ha, Dai & Le 2016, appendix A.2.2/A.2.3), with and without layer norm.

Per step, gates y in (i, f, o, g) (gate-major tensors, see nmt/modules/lstm.py):

    hyper cell: layer-norm LSTM with N_hyper units over [h_{t-1}; x_t] -> h^_t
    z_h = W_hh h^_t + b_hh,  z_x = W_hx h^_t + b_hx,  z_b = W_hb h^_t        (N_z per gate)
    y   = LN( d_h(z_h) * (W_h h_{t-1}) + d_x(z_x) * (W_x x_t) + W_bz z_b + b_0 ),  d = W_z z
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) dropout(tanh(g)),  h_t = sigmoid(o) tanh(LN(c_t))

(LN off in the plain variant.) Because d_x(z_x) * (W_x x_t) only rescales rows of an ordinary
projection, W_x x_t and the hyper cell's x_t part are one matrix product over all steps before
the recurrence. The recurrence runs in ``_HyperLSTMSequence``, an autograd function whose
backward keeps every step's gradients and forms all weight gradients as a few large products
after the backward loop. On the CPU, ``_FusedHyperLSTMSequence`` and ``fused_step`` do each
cell's element-wise work of a step in one C++ kernel (``nmt.kernels``); the eager functions
stay the reference and the fallback. For serving, ``HyperLSTMCell.quantize_int8_`` runs the
two large products of every step on int8 weights.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt import kernels
from nmt.modules.lstm import (
    FORGET_GATE,
    NUM_GATES,
    Affine,
    GateMath,
    LayerNormLSTMCell,
    NormGrads,
    batch_first_outputs,
    dropout_mask,
    gate_math,
    lstm_pointwise,
    orthogonal_gates_,
)
from nmt.modules.padding import SequenceEnds, State

NUM_Z = 3 * NUM_GATES  # z_h, z_x, z_b for each gate
FUSED_DTYPES = (torch.float32, torch.float64)  # the fused kernels' types
Z_SCALE_INIT = 0.1  # d_h and d_x start at exactly this value per row
Z_BIAS_STD = 0.01  # std of the z_b projection's initial weights


class HyperWeights(NamedTuple):
    """The cell's parameters arranged for the recurrence (built once per sequence)."""

    recurrent: Tensor  # (4N_hyper + 4H, H): [hyper cell's W for h_{t-1}; W_h]
    hyper_recurrent: Tensor  # (4N_hyper, N_hyper): hyper cell's W for h^_{t-1}
    z_weight: Tensor  # (12 N_z, N_hyper): z_h, z_x, z_b projections, gate-major within each
    z_bias: Tensor  # (12 N_z,): b_hh, b_hx, then zeros (z_b has no bias)
    d_weight: Tensor  # (12, N_z, H): W_hz, W_xz, W_bz per gate
    d_bias: Tensor  # (4, 1, H): b_0 (+ forget bias without LN)
    gate_norm: Affine | None
    cell_norm: Affine | None
    hyper_gate_norm: Affine
    hyper_cell_norm: Affine


class _StepCache(NamedTuple):
    recurrent_products: Tensor  # h_{t-1} @ recurrent.T, (B, 4N_hyper + 4H)
    z: Tensor  # (B, 12 N_z)
    scalings: Tensor  # d_h, d_x = W_z z, (8, B, H)
    hyper: object  # PointwiseCache of the hyper cell
    main: object  # PointwiseCache of the main cell


class Int8Weights(NamedTuple):
    """fbgemm-prepacked int8 weights of a step's two large products (see quantize_int8_)."""

    input: object  # [W_x; hyper cell's W for x_t]
    recurrent: object  # [hyper cell's W for h_{t-1}; W_h]


INT8_MAX = 127  # symmetric int8 range of the weights
REDUCE_RANGE = True  # fbgemm without VNNI saturates with 8-bit activations


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


def hyper_step(
    x_main: Tensor,
    x_hyper: Tensor,
    state: State,
    w: HyperWeights,
    g_mask: Tensor | None,
    hyper_g_mask: Tensor | None,
    math: GateMath | None = None,
    products: Tensor | None = None,
) -> tuple[State, _StepCache]:
    """One step. x_main = W_x x_t as (4, B, H); x_hyper = hyper cell's x_t part, (B, 4N_hyper);
    ``products`` = h_{t-1} @ w.recurrent.T when the caller computed it (int8 decoding)."""
    h, c, hyper_h, hyper_c = state
    batch, hidden = h.shape
    hyper_units = hyper_h.shape[-1]
    products = h @ w.recurrent.t() if products is None else products
    split = NUM_GATES * hyper_units
    h_part = products[:, split:].view(batch, NUM_GATES, hidden).transpose(0, 1)
    hyper_pre = torch.addmm(products[:, :split] + x_hyper, hyper_h, w.hyper_recurrent.t())
    hyper_pre = hyper_pre.view(batch, NUM_GATES, hyper_units).transpose(0, 1)
    pointwise = lstm_pointwise if math is None else math.forward
    hyper_h, hyper_c, hyper_cache = pointwise(
        hyper_pre, hyper_c, w.hyper_gate_norm, w.hyper_cell_norm, hyper_g_mask
    )
    z = torch.addmm(w.z_bias, hyper_h, w.z_weight.t())
    z_size = w.d_weight.shape[1]
    z_gates = z.view(batch, NUM_Z, z_size).transpose(0, 1)
    scales = 2 * NUM_GATES  # d_h and d_x; the backward keeps them, not W_bz z_b
    d = torch.bmm(z_gates[:scales], w.d_weight[:scales])
    pre = torch.baddbmm(w.d_bias, z_gates[scales:], w.d_weight[scales:])
    pre.addcmul_(d[:NUM_GATES], h_part).addcmul_(d[NUM_GATES:], x_main)
    h, c, main_cache = pointwise(pre, c, w.gate_norm, w.cell_norm, g_mask)
    return (h, c, hyper_h, hyper_c), _StepCache(products, z, d, hyper_cache, main_cache)


class _HyperLSTMSequence(torch.autograd.Function):
    """The whole recurrence with a hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx, projected, h0, c0, hyper_h0, hyper_c0, recurrent, hyper_recurrent, z_weight,
        z_bias, d_weight, d_bias, gate_w, gate_b, cell_w, cell_b, hyper_gate_w, hyper_gate_b,
        hyper_cell_w, hyper_cell_b, g_mask, hyper_g_mask, lengths, compiled,
    ):  # fmt: skip
        math = gate_math(compiled)
        weights = _weights(
            recurrent, hyper_recurrent, z_weight, z_bias, d_weight, d_bias, gate_w, gate_b,
            cell_w, cell_b, hyper_gate_w, hyper_gate_b, hyper_cell_w, hyper_cell_b,
        )  # fmt: skip
        steps, batch, _ = projected.shape
        hidden = h0.shape[-1]
        split = NUM_GATES * hidden
        x_main = projected[..., :split].view(steps, batch, NUM_GATES, hidden).transpose(1, 2)
        x_hyper = projected[..., split:]
        states = [[h0], [c0], [hyper_h0], [hyper_c0]]  # per step, from the initial state
        caches = []
        for t in range(steps):
            state, cache = hyper_step(
                x_main[t], x_hyper[t], tuple(s[t] for s in states), weights,
                None if g_mask is None else g_mask[t],
                None if hyper_g_mask is None else hyper_g_mask[t], math,
            )  # fmt: skip
            for history, value in zip(states, state, strict=True):
                history.append(value)
            caches.append(cache)
        ends = SequenceEnds(lengths, steps, batch, h0.device)
        hs, hyper_hs = torch.stack(states[0]), torch.stack(states[2])
        ctx.caches, ctx.cells, ctx.hyper_cells = caches, states[1], states[3]
        ctx.ends, ctx.compiled = ends, compiled
        ctx.save_for_backward(
            projected, hs, hyper_hs, recurrent, hyper_recurrent, z_weight, d_weight, gate_w,
            cell_w, hyper_gate_w, hyper_cell_w, g_mask, hyper_g_mask,
        )  # fmt: skip
        ctx.set_materialize_grads(False)
        final_c, final_hyper_c = (ends.gather(torch.stack(s[1:])) for s in (states[1], states[3]))
        outputs = hs[1:]
        return outputs, ends.gather(outputs), final_c, ends.gather(hyper_hs[1:]), final_hyper_c

    @staticmethod
    def backward(ctx, grad_outputs, *grad_finals):
        (
            projected, hs, hyper_hs, recurrent, hyper_recurrent, z_weight, d_weight, gate_w,
            cell_w, hyper_gate_w, hyper_cell_w, g_mask, hyper_g_mask,
        ) = ctx.saved_tensors  # fmt: skip
        caches, cs, hyper_cs, ends = ctx.caches, ctx.cells, ctx.hyper_cells, ctx.ends
        pointwise_backward = gate_math(ctx.compiled).backward
        layer_norm = gate_w is not None
        gate_norm = Affine(gate_w.unsqueeze(1), None) if layer_norm else None
        cell_norm = Affine(cell_w, None) if layer_norm else None
        hyper_gate_norm = Affine(hyper_gate_w.unsqueeze(1), None)
        hyper_cell_norm = Affine(hyper_cell_w, None)
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        hyper_units = hyper_hs.shape[-1]
        split, hyper_split = NUM_GATES * hidden, NUM_GATES * hyper_units
        z_size = d_weight.shape[1]
        x_main = projected[..., :split].view(steps, batch, NUM_GATES, hidden).transpose(1, 2)

        # One buffer, columns [W_x x_t | hyper pre-activation | W_h h_{t-1}]: the gradients of
        # the input-side projections and of the recurrent products share the hyper columns.
        grads = hs.new_empty(steps, batch, 2 * split + hyper_split)
        grad_projected = grads[..., : split + hyper_split]
        grad_products = grads[..., split:]  # d (h_{t-1} @ recurrent.T)
        d_weight_t = d_weight.transpose(1, 2).contiguous()
        grad_d = hs.new_empty(NUM_Z, batch, hidden)  # d loss / d (W_z z) at one step
        grad_d_weight = d_weight.new_zeros(d_weight.shape)
        grad_bias_rows = hs.new_zeros(NUM_GATES, batch, hidden)
        grad_z = hs.new_empty(steps, batch, NUM_Z * z_size)
        grad = [torch.zeros_like(s[0]) for s in (hs, hs, hyper_hs, hyper_hs)]
        main_norm_grads = NormGrads(gate_norm, cell_norm, hs[0])
        hyper_norm_grads = NormGrads(hyper_gate_norm, hyper_cell_norm, hyper_hs[0])

        def gate_major(t_rows: Tensor, units: int) -> Tensor:
            return t_rows.view(batch, NUM_GATES, units).transpose(0, 1)

        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad[0] = grad[0] + grad_outputs[t]
            grad = [ends.inject(t, g, final) for g, final in zip(grad, grad_finals, strict=True)]
            cache = caches[t]
            grad_pre, grad_c_prev = pointwise_backward(
                grad[0], grad[1], cs[t], cache.main, gate_norm, cell_norm,
                None if g_mask is None else g_mask[t], main_norm_grads,
            )  # fmt: skip
            h_part = gate_major(cache.recurrent_products[:, hyper_split:], hidden)
            d = cache.scalings
            torch.mul(grad_pre, h_part, out=grad_d[:4])
            torch.mul(grad_pre, x_main[t], out=grad_d[4:8])
            grad_d[8:] = grad_pre
            grad_bias_rows += grad_pre
            grad_d_weight.baddbmm_(cache.z.view(batch, NUM_Z, z_size).permute(1, 2, 0), grad_d)
            torch.mul(grad_pre, d[:4], out=gate_major(grad_products[t, :, hyper_split:], hidden))
            torch.mul(grad_pre, d[4:8], out=gate_major(grad_projected[t, :, :split], hidden))
            grad_z_t = grad_z[t]
            grad_z_t.view(batch, NUM_Z, z_size).transpose(0, 1).copy_(torch.bmm(grad_d, d_weight_t))
            grad_hyper_h = torch.addmm(grad[2], grad_z_t, z_weight)
            grad_hyper_pre, grad_hyper_c_prev = pointwise_backward(
                grad_hyper_h, grad[3], hyper_cs[t], cache.hyper, hyper_gate_norm,
                hyper_cell_norm, None if hyper_g_mask is None else hyper_g_mask[t],
                hyper_norm_grads,
            )  # fmt: skip
            gate_major(grad_products[t, :, :hyper_split], hyper_units).copy_(grad_hyper_pre)
            grad[0] = grad_products[t] @ recurrent
            grad[1] = grad_c_prev
            grad[2] = grad_products[t, :, :hyper_split] @ hyper_recurrent
            grad[3] = grad_hyper_c_prev

        grad_recurrent, grad_hyper_recurrent, grad_z_weight, grad_z_bias, grad_d_bias = (
            _weight_gradients(grad_products, grad_z, grad_bias_rows, hs, hyper_hs, hyper_split)
        )

        grad_gate_w, grad_gate_b, grad_cell_w, grad_cell_b = main_norm_grads.totals()
        grad_hyper_norms = hyper_norm_grads.totals()
        return (
            grad_projected, *grad, grad_recurrent, grad_hyper_recurrent, grad_z_weight,
            grad_z_bias, grad_d_weight, grad_d_bias, grad_gate_w, grad_gate_b, grad_cell_w,
            grad_cell_b, *grad_hyper_norms, None, None, None, None,
        )  # fmt: skip


class _FusedCache(NamedTuple):
    """What the fused backward kernels recompute a step from (instead of its gate values)."""

    recurrent_products: Tensor  # h_{t-1} @ recurrent.T, (B, 4N_hyper + 4H)
    hyper_pre: Tensor  # the hyper cell's pre-activations, (4, B, N_hyper) gate-major view
    z: Tensor  # (B, 12 N_z)
    scalings: Tensor  # d_h, d_x, W_bz z_b = W_z z, (12, B, H)


def fused_step(
    x_main: Tensor,
    x_hyper: Tensor,
    state: State,
    w: HyperWeights,
    g_mask: Tensor | None,
    hyper_g_mask: Tensor | None,
    products: Tensor | None = None,
) -> tuple[State, _FusedCache]:
    """``hyper_step`` with each cell's element-wise work in one fused kernel
    (``torch.ops.hypernmt``); the matrix products are the same BLAS calls."""
    h, c, hyper_h, hyper_c = state
    batch, hidden = h.shape
    hyper_units = hyper_h.shape[-1]
    products = h @ w.recurrent.t() if products is None else products
    split = NUM_GATES * hyper_units
    h_part = products[:, split:].view(batch, NUM_GATES, hidden).transpose(0, 1)
    hyper_pre = torch.addmm(products[:, :split] + x_hyper, hyper_h, w.hyper_recurrent.t())
    hyper_pre = hyper_pre.view(batch, NUM_GATES, hyper_units).transpose(0, 1)
    hn, cn = w.hyper_gate_norm, w.hyper_cell_norm
    hyper_h, hyper_c = torch.ops.hypernmt.ln_lstm_cell(
        hyper_pre, hyper_c, hn.weight.squeeze(1), hn.bias.squeeze(1), cn.weight, cn.bias,
        hyper_g_mask,
    )  # fmt: skip
    z = torch.addmm(w.z_bias, hyper_h, w.z_weight.t())
    z_gates = z.view(batch, NUM_Z, w.d_weight.shape[1]).transpose(0, 1)
    d = torch.bmm(z_gates, w.d_weight)
    h, c = torch.ops.hypernmt.hyper_main_cell(
        h_part, x_main, d, w.d_bias.squeeze(1), c, *_main_norms(w), g_mask
    )
    return (h, c, hyper_h, hyper_c), _FusedCache(products, hyper_pre, z, d)


def _main_norms(w: HyperWeights) -> tuple[Tensor | None, ...]:
    """Gate gain and bias (4, H), cell gain and bias (H,) for the kernels, or four Nones."""
    if w.gate_norm is None:
        return (None, None, None, None)
    return (
        w.gate_norm.weight.squeeze(1), w.gate_norm.bias.squeeze(1), w.cell_norm.weight,
        w.cell_norm.bias,
    )  # fmt: skip


class _FusedHyperLSTMSequence(torch.autograd.Function):
    """``_HyperLSTMSequence`` with the fused per-step kernels: same inputs and outputs, same
    large weight-gradient products after the backward loop, far less kept per step."""

    @staticmethod
    def forward(
        ctx, projected, h0, c0, hyper_h0, hyper_c0, recurrent, hyper_recurrent, z_weight,
        z_bias, d_weight, d_bias, gate_w, gate_b, cell_w, cell_b, hyper_gate_w, hyper_gate_b,
        hyper_cell_w, hyper_cell_b, g_mask, hyper_g_mask, lengths,
    ):  # fmt: skip
        weights = _weights(
            recurrent, hyper_recurrent, z_weight, z_bias, d_weight, d_bias, gate_w, gate_b,
            cell_w, cell_b, hyper_gate_w, hyper_gate_b, hyper_cell_w, hyper_cell_b,
        )  # fmt: skip
        steps, batch, _ = projected.shape
        hidden = h0.shape[-1]
        split = NUM_GATES * hidden
        x_main = projected[..., :split].view(steps, batch, NUM_GATES, hidden).transpose(1, 2)
        x_hyper = projected[..., split:]
        states = [[h0], [c0], [hyper_h0], [hyper_c0]]
        caches = []
        for t in range(steps):
            state, cache = fused_step(
                x_main[t], x_hyper[t], tuple(s[t] for s in states), weights,
                None if g_mask is None else g_mask[t],
                None if hyper_g_mask is None else hyper_g_mask[t],
            )  # fmt: skip
            for history, value in zip(states, state, strict=True):
                history.append(value)
            caches.append(cache)
        ends = SequenceEnds(lengths, steps, batch, h0.device)
        hs, hyper_hs = torch.stack(states[0]), torch.stack(states[2])
        ctx.caches, ctx.cells, ctx.hyper_cells, ctx.ends = caches, states[1], states[3], ends
        ctx.save_for_backward(
            projected, hs, hyper_hs, recurrent, hyper_recurrent, z_weight, d_weight, d_bias,
            gate_w, gate_b, cell_w, cell_b, hyper_gate_w, hyper_gate_b, hyper_cell_w,
            hyper_cell_b, g_mask, hyper_g_mask,
        )  # fmt: skip
        ctx.set_materialize_grads(False)
        final_c, final_hyper_c = (ends.gather(torch.stack(s[1:])) for s in (states[1], states[3]))
        outputs = hs[1:]
        return outputs, ends.gather(outputs), final_c, ends.gather(hyper_hs[1:]), final_hyper_c

    @staticmethod
    def backward(ctx, grad_outputs, *grad_finals):
        (
            projected, hs, hyper_hs, recurrent, hyper_recurrent, z_weight, d_weight, d_bias,
            gate_w, gate_b, cell_w, cell_b, hyper_gate_w, hyper_gate_b, hyper_cell_w,
            hyper_cell_b, g_mask, hyper_g_mask,
        ) = ctx.saved_tensors  # fmt: skip
        caches, cs, hyper_cs, ends = ctx.caches, ctx.cells, ctx.hyper_cells, ctx.ends
        ops = torch.ops.hypernmt
        layer_norm = gate_w is not None
        main_norms = (gate_w, gate_b, cell_w, cell_b)
        hyper_norms = (hyper_gate_w, hyper_gate_b, hyper_cell_w, hyper_cell_b)
        bias = d_bias.squeeze(1)
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        hyper_units = hyper_hs.shape[-1]
        split, hyper_split = NUM_GATES * hidden, NUM_GATES * hyper_units
        z_size = d_weight.shape[1]
        x_main = projected[..., :split].view(steps, batch, NUM_GATES, hidden).transpose(1, 2)

        # columns [W_x x_t | hyper pre-activation | W_h h_{t-1}], as in _HyperLSTMSequence
        grads = hs.new_empty(steps, batch, 2 * split + hyper_split)
        grad_projected = grads[..., : split + hyper_split]
        grad_products = grads[..., split:]
        d_weight_t = d_weight.transpose(1, 2).contiguous()
        grad_d = hs.new_empty(NUM_Z, batch, hidden)
        grad_d_weight = d_weight.new_zeros(d_weight.shape)
        grad_bias_rows = hs.new_zeros(NUM_GATES, batch, hidden)
        grad_z = hs.new_empty(steps, batch, NUM_Z * z_size)
        rows = kernels.NORM_ROWS
        main_acc = hs.new_zeros(rows, batch, hidden) if layer_norm else hs.new_empty(0)
        hyper_acc = hs.new_zeros(rows, batch, hyper_units)
        grad = [torch.zeros_like(s[0]) for s in (hs, hs, hyper_hs, hyper_hs)]

        def gate_major(t_rows: Tensor, units: int) -> Tensor:
            return t_rows.view(batch, NUM_GATES, units).transpose(0, 1)

        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad[0] = grad[0] + grad_outputs[t]
            grad = [ends.inject(t, g, final) for g, final in zip(grad, grad_finals, strict=True)]
            cache = caches[t]
            grad_c_prev, grad_hyper_c_prev = torch.empty_like(grad[1]), torch.empty_like(grad[3])
            ops.hyper_main_cell_backward(
                grad[0], grad[1], gate_major(cache.recurrent_products[:, hyper_split:], hidden),
                x_main[t], cache.scalings, bias, cs[t], *main_norms,
                None if g_mask is None else g_mask[t],
                gate_major(grad_products[t, :, hyper_split:], hidden),
                gate_major(grad_projected[t, :, :split], hidden), grad_d, grad_c_prev,
                main_acc, grad_bias_rows,
            )  # fmt: skip
            grad_d_weight.baddbmm_(cache.z.view(batch, NUM_Z, z_size).permute(1, 2, 0), grad_d)
            grad_z_t = grad_z[t]
            grad_z_t.view(batch, NUM_Z, z_size).transpose(0, 1).copy_(torch.bmm(grad_d, d_weight_t))
            grad_hyper_h = torch.addmm(grad[2], grad_z_t, z_weight)
            ops.ln_lstm_cell_backward(
                grad_hyper_h, grad[3], cache.hyper_pre, hyper_cs[t], *hyper_norms,
                None if hyper_g_mask is None else hyper_g_mask[t],
                gate_major(grad_products[t, :, :hyper_split], hyper_units), grad_hyper_c_prev,
                hyper_acc,
            )  # fmt: skip
            grad[0] = grad_products[t] @ recurrent
            grad[1] = grad_c_prev
            grad[2] = grad_products[t, :, :hyper_split] @ hyper_recurrent
            grad[3] = grad_hyper_c_prev

        grad_recurrent, grad_hyper_recurrent, grad_z_weight, grad_z_bias, grad_d_bias = (
            _weight_gradients(grad_products, grad_z, grad_bias_rows, hs, hyper_hs, hyper_split)
        )
        grad_main_norms = kernels.norm_totals(main_acc) if layer_norm else (None,) * 4
        return (
            grad_projected, *grad, grad_recurrent, grad_hyper_recurrent, grad_z_weight,
            grad_z_bias, grad_d_weight, grad_d_bias, *grad_main_norms,
            *kernels.norm_totals(hyper_acc), None, None, None,
        )  # fmt: skip


def _weight_gradients(
    grad_products: Tensor, grad_z: Tensor, grad_bias_rows: Tensor, hs: Tensor, hyper_hs: Tensor,
    hyper_split: int,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The weight gradients of a whole sequence as a few large products over all its steps:
    recurrent, hyper recurrent, z weight and bias, and the dynamic-bias rows' d bias.

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
    return (
        grad_recurrent, grad_hyper_recurrent, grad_z_weight, flat_z.sum(0),
        grad_bias_rows.sum(1).unsqueeze(1),
    )  # fmt: skip


def _weights(
    recurrent, hyper_recurrent, z_weight, z_bias, d_weight, d_bias, gate_w, gate_b, cell_w,
    cell_b, hyper_gate_w, hyper_gate_b, hyper_cell_w, hyper_cell_b,
) -> HyperWeights:  # fmt: skip
    layer_norm = gate_w is not None
    return HyperWeights(
        recurrent, hyper_recurrent, z_weight, z_bias, d_weight, d_bias,
        Affine(gate_w.unsqueeze(1), gate_b.unsqueeze(1)) if layer_norm else None,
        Affine(cell_w, cell_b) if layer_norm else None,
        Affine(hyper_gate_w.unsqueeze(1), hyper_gate_b.unsqueeze(1)),
        Affine(hyper_cell_w, hyper_cell_b),
    )  # fmt: skip


class HyperLSTMCell(nn.Module):
    """HyperLSTM cell; ``layer_norm`` switches the main cell's layer norms (the hyper cell is
    always a layer-norm LSTM, as in the paper)."""

    def __init__(
        self, input_size: int, hidden_size: int, hyper_size: int = 128, embedding_size: int = 32,
        layer_norm: bool = True, forget_bias: float = 1.0, recurrent_dropout: float = 0.0,
        compile: bool = False, fused: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.hyper_size, self.embedding_size = hyper_size, embedding_size
        self.layer_norm, self.forget_bias = layer_norm, forget_bias
        self.recurrent_dropout = recurrent_dropout
        self.compile = compile  # fuse the gate arithmetic with torch.compile
        self.fused = fused  # the fused C++ kernels where they apply (see uses_fused_kernels)
        # (parameter versions, weights) built for decoding steps; see _step_weights
        self._cached_step_weights: tuple[tuple, tuple[Tensor, HyperWeights]] | None = None
        # int8 products for inference (see quantize_int8_); (parameter versions, packed weights)
        self.int8 = False
        self._cached_int8: tuple[tuple, Int8Weights] | None = None
        gates, n_z = NUM_GATES * hidden_size, embedding_size
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

    def _parameters_for_recurrence(self) -> tuple[Tensor, ...]:
        """Parameters in ``_HyperLSTMSequence``'s order (combined where the loop wants them)."""
        hidden = self.hidden_size
        hyper_h_weight = self.hyper.input_weight[:, :hidden]
        recurrent = torch.cat([hyper_h_weight, self.recurrent_weight])
        z_bias = torch.cat([self.z_bias, self.z_bias.new_zeros(NUM_GATES * self.embedding_size)])
        bias = self.bias if self.layer_norm else self.bias + self._forget_shift()
        d_bias = bias.unsqueeze(1)
        if self.layer_norm:
            norms = (
                self.gate_norm_weight, self.gate_norm_bias + self._forget_shift(),
                self.cell_norm_weight, self.cell_norm_bias,
            )  # fmt: skip
        else:
            norms = (None, None, None, None)
        hyper = self.hyper
        return (
            recurrent, hyper.recurrent_weight, self.z_weight, z_bias, self.d_weight, d_bias,
            *norms, hyper.gate_norm_weight, hyper.gate_bias(), hyper.cell_norm_weight,
            hyper.cell_norm_bias,
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
        projected = F.linear(inputs.transpose(0, 1), self._input_weight())
        g_mask, hyper_g_mask = self._masks((steps, batch), inputs)
        parameters = self._parameters_for_recurrence()
        if self.uses_fused_kernels(inputs):
            outputs, *final = _FusedHyperLSTMSequence.apply(
                projected, *state, *parameters, g_mask, hyper_g_mask, lengths
            )
        else:
            outputs, *final = _HyperLSTMSequence.apply(
                projected, *state, *parameters, g_mask, hyper_g_mask, lengths, self.compile
            )
        return batch_first_outputs(outputs, lengths), tuple(final)

    def _step_weights(self) -> tuple[Tensor, HyperWeights]:
        """The input weight and the recurrence's weights, for one step at a time.

        Building them concatenates weight matrices, a cost as large as a small batch's whole
        step, so without autograd (decoding) they are built once and reused until a parameter
        changes: every in-place update (an optimizer step, ``load_state_dict``) bumps its
        tensor's version.
        """
        if torch.is_grad_enabled():
            return self._input_weight(), _weights(*self._parameters_for_recurrence())
        versions = self._parameter_versions()
        if self._cached_step_weights is None or self._cached_step_weights[0] != versions:
            weights = (self._input_weight(), _weights(*self._parameters_for_recurrence()))
            self._cached_step_weights = (versions, weights)
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
            input_weight, weights = self._step_weights()
            packed = Int8Weights(pack_int8(input_weight), pack_int8(weights.recurrent))
            self._cached_int8 = (versions, packed)
        return self._cached_int8[1]

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        batch, split = x.shape[0], NUM_GATES * self.hidden_size
        input_weight, weights = self._step_weights()
        int8 = self._int8_weights()
        if int8 is None:
            projected, products = F.linear(x, input_weight), None
        else:
            projected = linear_int8(x, int8.input)
            products = linear_int8(state[0], int8.recurrent)
        x_main = projected[:, :split].view(batch, NUM_GATES, self.hidden_size).transpose(0, 1)
        g_mask, hyper_g_mask = self._masks((batch,), x)
        step = fused_step if self.uses_fused_kernels(x) else hyper_step
        state, _ = step(
            x_main, projected[:, split:], state, weights, g_mask, hyper_g_mask, products=products
        )
        return state[0], state

    def _forward_int8(
        self, inputs: Tensor, lengths: Tensor | None, state: State, int8: Int8Weights
    ) -> tuple[Tensor, State]:
        """The sequence without autograd, one step at a time with the int8 products."""
        batch, steps = inputs.shape[:2]
        split = NUM_GATES * self.hidden_size
        _, weights = self._step_weights()
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
        input_weight, weights = self._step_weights()
        projected = F.linear(inputs, input_weight)
        split = NUM_GATES * self.hidden_size
        d_h, d_x = [], []
        for t in range(steps):
            x_main = projected[:, t, :split].view(batch, NUM_GATES, -1).transpose(0, 1)
            state, cache = hyper_step(x_main, projected[:, t, split:], state, weights, None, None)
            d_h.append(cache.scalings[:4].transpose(0, 1).reshape(batch, split))
            d_x.append(cache.scalings[4:8].transpose(0, 1).reshape(batch, split))
        return {"d_h": torch.stack(d_h, 1), "d_x": torch.stack(d_x, 1)}
