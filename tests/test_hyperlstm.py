"""HyperLSTM and the recurrent layers against an independent transcription of the paper.

The reference below is written from Ha, Dai & Le (2016), appendix A.2.2, gate by gate in plain
float64 torch operations; it reads the cell's parameters but none of its helpers.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from torch import nn

from nmt import kernels
from nmt.modules import lstm as lstm_module
from nmt.modules.hyperlstm import BackwardWorkspace, HyperLSTMCell
from nmt.modules.lstm import LayerNormLSTMCell
from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer, RecurrentStack

EPS = 1e-5  # layer-norm epsilon
GATES = ("i", "f", "o", "g")


def layer_norm(v, gain, bias):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + EPS) * gain + bias


def lstm_update(gates, c, forget_bias, cell_norm=None):
    i, f, o, g = (gates[k] for k in GATES)
    c = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
    c_out = c if cell_norm is None else layer_norm(c, *cell_norm)
    return torch.sigmoid(o) * torch.tanh(c_out), c


def reference_ln_lstm(cell: LayerNormLSTMCell, x, h, c):
    """Layer-norm LSTM, each gate normalised on its own: x (B, T, I) -> outputs, (h, c)."""
    n, fb = cell.hidden_size, cell.forget_bias
    outputs = []
    for t in range(x.shape[1]):
        gates = {}
        for k, name in enumerate(GATES):
            rows = slice(k * n, (k + 1) * n)
            pre = x[:, t] @ cell.input_weight[rows].T + h @ cell.recurrent_weight[rows].T
            gates[name] = layer_norm(pre, cell.gate_norm_weight[k], cell.gate_norm_bias[k])
        h, c = lstm_update(gates, c, fb, (cell.cell_norm_weight, cell.cell_norm_bias))
        outputs.append(h)
    return torch.stack(outputs, 1), (h, c)


def reference_hyperlstm(cell: HyperLSTMCell, x, state):
    """HyperLSTM per appendix A.2.2: hyper cell over [h_{t-1}; x_t], z from its new h."""
    h, c, hyper_h, hyper_c = state
    n, n_hyper, n_z, fb = cell.hidden_size, cell.hyper_size, cell.n_z, cell.forget_bias
    hyper = cell.hyper
    outputs = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        x_hat = torch.cat([h, x_t], -1)
        hyper_gates = {}
        for k, name in enumerate(GATES):
            rows = slice(k * n_hyper, (k + 1) * n_hyper)
            pre = x_hat @ hyper.input_weight[rows].T + hyper_h @ hyper.recurrent_weight[rows].T
            hyper_gates[name] = layer_norm(pre, hyper.gate_norm_weight[k], hyper.gate_norm_bias[k])
        hyper_h, hyper_c = lstm_update(
            hyper_gates, hyper_c, fb, (hyper.cell_norm_weight, hyper.cell_norm_bias)
        )
        gates = {}
        for k, name in enumerate(GATES):
            z = []  # z_h, z_x, z_b of gate k; z_weight rows are blocks z_h, z_x, z_b by gate
            for block in range(3):
                rows = slice((block * 4 + k) * n_z, (block * 4 + k + 1) * n_z)
                z.append(hyper_h @ cell.z_weight[rows].T)
                if block < 2:  # z_b has no bias
                    z[-1] = z[-1] + cell.z_bias[rows]
            z_h, z_x, z_b = z
            d_h = z_h @ cell.d_weight[k]  # W_hz z_h: one scale per row of W_h
            d_x = z_x @ cell.d_weight[4 + k]
            b = z_b @ cell.d_weight[8 + k] + cell.bias[k]
            rows = slice(k * n, (k + 1) * n)
            y = d_h * (h @ cell.recurrent_weight[rows].T) + d_x * (x_t @ cell.input_weight[rows].T)
            y = y + b
            if cell.layer_norm:
                y = layer_norm(y, cell.gate_norm_weight[k], cell.gate_norm_bias[k])
            gates[name] = y
        cell_norm = (cell.cell_norm_weight, cell.cell_norm_bias) if cell.layer_norm else None
        h, c = lstm_update(gates, c, fb, cell_norm)
        outputs.append(h)
    return torch.stack(outputs, 1), (h, c, hyper_h, hyper_c)


def perturb_(module: nn.Module, scale: float = 0.3) -> None:
    """Move every parameter away from its structured initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def random_state(cell, batch):
    return tuple(torch.randn_like(s) * 0.5 for s in cell.initial_state(batch, dtype=torch.float64))


def assert_same_values_and_grads(cell, run_a, run_b, inputs):
    """Both runs -> (outputs, state); equal values, and equal gradients of a random loss."""
    results = []
    for run in (run_a, run_b):
        cell.zero_grad()
        x = inputs.clone().requires_grad_(True)
        outputs, state = run(x)
        values = torch.cat([outputs.flatten()] + [s.flatten() for s in state])
        torch.manual_seed(1)
        loss = (values * torch.randn_like(values)).sum()
        loss.backward()
        grads = [x.grad] + [p.grad.clone() for p in cell.parameters()]
        results.append((values.detach(), grads))
    (va, ga), (vb, gb) = results
    torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize(
    "batch,steps,inputs,hidden,hyper,n_z", [(3, 5, 4, 6, 5, 2), (2, 4, 7, 8, 4, 3)]
)
def test_hyperlstm_matches_paper_reference(
    layer_norm, batch, steps, inputs, hidden, hyper, n_z, fused
):
    """Both paths: the fused C++ kernels (where a compiler exists) and the eager reference."""
    if fused and shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused kernels cannot build here")
    torch.manual_seed(0)
    cell = HyperLSTMCell(
        inputs, hidden, hyper, n_z, layer_norm=layer_norm, forget_bias=0.7, fused=fused
    ).double()
    perturb_(cell)
    state = random_state(cell, batch)
    x = torch.randn(batch, steps, inputs, dtype=torch.float64)
    assert cell.uses_fused_kernels(x) == fused, kernels.unavailable_reason()
    assert_same_values_and_grads(
        cell, lambda x: cell(x, None, state), lambda x: reference_hyperlstm(cell, x, state), x
    )


def test_ln_lstm_matches_reference():
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(5, 7, forget_bias=0.5).double()
    perturb_(cell)
    state = random_state(cell, 3)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    assert_same_values_and_grads(
        cell, lambda x: cell(x, None, state), lambda x: reference_ln_lstm(cell, x, *state), x
    )


@pytest.mark.parametrize("cell_type", ["ln_lstm", "hyperlstm"])
def test_recurrent_dropout_gradients(cell_type):
    """Hand-written backward with dropout masks on g (fixed by the seed) passes gradcheck."""
    torch.manual_seed(0)
    config = RecurrentConfig(cell_type, 4, 3, 2, recurrent_dropout=0.4)
    layer = RecurrentLayer(3, config).double().train()
    perturb_(layer)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)

    def run(x):
        torch.manual_seed(5)
        outputs, state = layer(x, torch.tensor([4, 3]))
        return outputs, *state

    torch.autograd.gradcheck(run, (x,), fast_mode=True)
    # dropout really acts in training and not in evaluation
    with torch.no_grad():
        torch.manual_seed(6)
        a = layer(x)[0]
        b = layer(x)[0]
        layer.eval()
        c, d = layer(x)[0], layer(x)[0]
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_initial_values_follow_appendix_a23():
    torch.manual_seed(0)
    hidden, hyper, n_z = 64, 32, 8
    cell = HyperLSTMCell(16, hidden, hyper, n_z)
    gates = 4
    z_h_x = cell.z_weight[: 2 * gates * n_z]
    assert torch.equal(z_h_x, torch.zeros_like(z_h_x))  # z_h, z_x projections: weight 0
    assert torch.equal(cell.z_bias, torch.ones_like(cell.z_bias))  # ... and bias 1
    z_b = cell.z_weight[2 * gates * n_z :]
    assert abs(z_b.std().item() - 0.01) < 0.002  # z_b projection N(0, 0.01)
    assert torch.allclose(cell.d_weight[: 2 * gates], torch.full_like(cell.d_weight[:8], 0.1 / n_z))
    assert torch.equal(cell.d_weight[2 * gates :], torch.zeros_like(cell.d_weight[8:]))  # W_bz
    assert torch.equal(cell.bias, torch.zeros_like(cell.bias))  # b_0
    for weight, rows in [
        (cell.input_weight, hidden), (cell.recurrent_weight, hidden),
        (cell.hyper.input_weight, hyper), (cell.hyper.recurrent_weight, hyper),
    ]:  # fmt: skip
        for block in weight.split(rows):  # orthogonal per gate
            small = min(block.shape)
            gram = block @ block.T if block.shape[0] <= block.shape[1] else block.T @ block
            torch.testing.assert_close(gram, torch.eye(small), atol=1e-5, rtol=0)
    x = torch.randn(3, 5, 16)
    scalings = RecurrentLayer(16, RecurrentConfig("ln_hyperlstm", hidden, hyper, n_z))
    scalings.cells[0] = cell
    d = scalings.weight_scalings(x)
    for name in ("d_h", "d_x"):
        assert d[name].shape == (3, 5, 4 * hidden)
        torch.testing.assert_close(d[name], torch.full_like(d[name], 0.1), rtol=0, atol=1e-6)


CELLS = ["lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm"]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell_type", CELLS)
def test_padding_invariance(cell_type, bidirectional):
    """Each sequence alone equals the same sequence inside a padded mixed-length batch."""
    torch.manual_seed(0)
    layer = RecurrentLayer(3, RecurrentConfig(cell_type, 5, 4, 2), bidirectional).double()
    perturb_(layer, 0.1)
    lengths = torch.tensor([4, 7, 1, 5])
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    x_padded = x.clone()
    for b, n in enumerate(lengths):
        x_padded[b, n:] = 1e3  # garbage in the padding must not leak
    outputs, state = layer(x_padded, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_state = layer(x[b : b + 1, :n])
        torch.testing.assert_close(outputs[b : b + 1, :n], alone)
        assert torch.all(outputs[b, n:] == 0)
        for s, s_alone in zip(state, alone_state, strict=True):
            torch.testing.assert_close(s[b : b + 1], s_alone)


@pytest.mark.parametrize("cell_type", CELLS)
def test_step_matches_forward(cell_type):
    torch.manual_seed(0)
    layer = RecurrentLayer(3, RecurrentConfig(cell_type, 6, 4, 2)).double()
    perturb_(layer, 0.1)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    state = tuple(torch.randn_like(s) for s in layer.initial_state(2, dtype=torch.float64))
    outputs, final = layer(x, state=state)
    stepped = []
    for t in range(5):
        h, state = layer.step(x[:, t], state)
        stepped.append(h)
    torch.testing.assert_close(torch.stack(stepped, 1), outputs)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell_type", ["hyperlstm", "ln_hyperlstm"])
def test_decoding_steps_follow_weight_updates(cell_type):
    """Steps without autograd reuse the weights they built until a parameter changes."""
    torch.manual_seed(0)
    layer = RecurrentLayer(3, RecurrentConfig(cell_type, 6, 4, 2)).double()
    other = RecurrentLayer(3, RecurrentConfig(cell_type, 6, 4, 2)).double()
    perturb_(other, 0.1)
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        before, _ = layer.step(x)
        for parameter in layer.parameters():  # in place, as an optimizer step
            parameter.add_(0.1 * torch.randn_like(parameter))
        updated, _ = layer.step(x)
        assert not torch.allclose(before, updated)
        torch.testing.assert_close(updated, layer(x[:, None])[0][:, 0])
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.step(x)[0], other(x[:, None])[0][:, 0])


def test_stack_residual_dropout_and_states():
    torch.manual_seed(0)
    config = RecurrentConfig("ln_hyperlstm", 6, 4, 2)
    stack = RecurrentStack(6, config, 3, bidirectional_bottom=True, residual_from=1, dropout=0.5)
    assert [layer.output_size for layer in stack.layers] == [12, 6, 6]
    assert stack.output_size == 6
    x = torch.randn(2, 5, 6)
    lengths = torch.tensor([5, 2])
    stack.eval()
    outputs, states = stack(x, lengths)
    assert outputs.shape == (2, 5, 6) and len(states) == 3
    assert states[0][0].shape == (2, 12) and states[2][0].shape == (2, 6)
    assert torch.all(outputs[1, 2:] == 0)
    # residual: layer 2's output = its recurrent output + its input (layer 1's output)
    first, _ = stack.layers[0](x, lengths)
    second, _ = stack.layers[1](first, lengths)
    third, _ = stack.layers[2](second, lengths)
    torch.testing.assert_close(outputs, third + second)
    stack.train()
    a, _ = stack(x, lengths)
    assert not torch.allclose(a, outputs)  # dropout between layers acts in training


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="cell must be one of"):
        RecurrentConfig(cell="gru")
    with pytest.raises(ValueError, match="recurrent_dropout must be 0 for cell 'lstm'"):
        RecurrentLayer(3, RecurrentConfig("lstm", recurrent_dropout=0.1))
    layer = RecurrentLayer(3, RecurrentConfig("ln_lstm", 4))
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer(torch.randn(2, 3, 3), torch.tensor([3, 4]))


def char_lm_loss_after_training(text: str, steps: int, compile: bool = False) -> tuple[float, int]:
    """Train a tiny HyperLSTM character LM on ``text``; final training loss (nats) and vocab."""
    torch.manual_seed(0)
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    config = RecurrentConfig("ln_hyperlstm", 64, 16, 4, compile=compile)
    embed = nn.Embedding(len(vocab), 16)
    layer = RecurrentLayer(16, config)
    head = nn.Linear(64, len(vocab))
    params = [*embed.parameters(), *layer.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    batch, length = 16, 32
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - length - 1, (batch,))
        window = torch.stack([ids[s : s + length + 1] for s in starts.tolist()])
        outputs, _ = layer(embed(window[:, :-1]))
        loss = nn.functional.cross_entropy(head(outputs).flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20, len(vocab)


def test_char_lm_fits_tiny_shakespeare(corpora):
    text = (corpora / "tinyshakespeare" / "input.txt").read_text()[:20_000]
    loss, vocab = char_lm_loss_after_training(text, steps=120)
    chance = math.log(vocab)
    assert loss < 0.7 * chance, f"loss {loss:.3f} nats vs chance {chance:.3f}"


def compiled_matches_eager(cell_type: str) -> None:
    torch.manual_seed(0)
    eager = RecurrentLayer(5, RecurrentConfig(cell_type, 8, 4, 2))
    compiled = RecurrentLayer(5, RecurrentConfig(cell_type, 8, 4, 2, compile=True))
    compiled.load_state_dict(eager.state_dict())
    perturb_(eager, 0.1)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(3, 6, 5)
    lengths = torch.tensor([6, 2, 4])
    results = [layer(x, lengths) for layer in (eager, compiled)]
    (reference, reference_state), (outputs, state) = results
    torch.testing.assert_close(outputs, reference, rtol=1e-5, atol=1e-6)
    for final, expected in zip(state, reference_state, strict=True):
        torch.testing.assert_close(final, expected, rtol=1e-5, atol=1e-6)
    for out, final in results:
        (out.square().sum() + sum(s.sum() for s in final)).backward()
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert a.grad is not None and a.grad.abs().sum() > 0
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell_type", ["ln_lstm", "ln_hyperlstm", "hyperlstm"])
def test_compiled_path_wiring(cell_type, monkeypatch):
    """The compiled path captures the gate arithmetic with dynamo (eager backend: fast)."""
    monkeypatch.setattr(lstm_module, "COMPILE_BACKEND", "eager")
    compiled_matches_eager(cell_type)


@pytest.mark.slow
@pytest.mark.parametrize("cell_type", ["ln_hyperlstm", "hyperlstm"])
def test_compiled_matches_eager(cell_type):
    """Inductor-fused gate arithmetic agrees with eager (first compile takes about a minute)."""
    compiled_matches_eager(cell_type)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_backward_workspace_reuse_changes_no_gradient(fused):
    """A backward pass of another shape in between (the workspace grows, then a prefix of it
    is reused, holding the larger pass's values) leaves the gradients bit for bit as a fresh
    cell's: every step writes all of its gradient columns before they are read."""
    torch.manual_seed(0)
    cell = HyperLSTMCell(4, 6, 5, 2, fused=fused).double()
    perturb_(cell)
    fresh = HyperLSTMCell(4, 6, 5, 2, fused=fused).double()
    fresh.load_state_dict(cell.state_dict())

    def gradients(module, steps, batch):
        module.zero_grad()
        torch.manual_seed(steps * 10 + batch)
        x = torch.randn(batch, steps, 4, dtype=torch.float64, requires_grad=True)
        outputs, _ = module(x, None, module.initial_state(batch, dtype=torch.float64))
        (outputs * torch.randn_like(outputs)).sum().backward()
        return [x.grad] + [p.grad.clone() for p in module.parameters()]

    small = gradients(cell, 3, 2)
    gradients(cell, 7, 5)  # grows the workspace
    again = gradients(cell, 3, 2)  # reuses a prefix of it
    for a, b, c in zip(small, again, gradients(fresh, 3, 2), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_backward_workspace_grows_and_reuses_its_buffer():
    workspace = BackwardWorkspace()
    like = torch.empty(0)
    large = workspace.take((4, 3, 5), like)
    small = workspace.take((2, 3, 5), like)
    assert small.shape == (2, 3, 5) and small.is_contiguous()
    assert small.data_ptr() == large.data_ptr()  # the same memory, no new allocation
    assert workspace.take((2, 3, 5), like.double()).dtype == torch.float64  # a new buffer
