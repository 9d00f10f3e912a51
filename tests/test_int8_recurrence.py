"""int8 per-step products of the HyperLSTM for serving, against the float cell."""

from __future__ import annotations

import pytest
import torch

from nmt import bundle
from nmt.modules.hyperlstm import HyperLSTMCell
from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer, RecurrentStack

CLOSE = 0.1  # max |h_int8 - h_float| of a unit-scale hidden state (7-bit activations)


def layer(cell: str, fused: bool = True) -> RecurrentLayer:
    torch.manual_seed(0)
    config = RecurrentConfig(cell, 24, 8, 4, fused_kernels=fused)
    layer = RecurrentLayer(10, config).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize("cell", ["hyperlstm", "ln_hyperlstm"])
def test_int8_sequence_and_steps_stay_close_to_float(cell, fused):
    float_layer, int8_layer = layer(cell, fused), layer(cell, fused)
    int8_layer.cells[0].quantize_int8_()
    x = torch.randn(3, 6, 10)
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        expected, expected_final = float_layer(x, lengths)
        found, found_final = int8_layer(x, lengths)
        assert int8_layer.cells[0]._cached_int8 is not None  # the int8 products ran
        assert not torch.equal(found, expected)
        assert (found - expected).abs().max() < CLOSE
        assert torch.all(found[1, 2:] == 0)  # padding stays zero
        for a, b in zip(found_final, expected_final, strict=True):
            assert (a - b).abs().max() < CLOSE
        state_f = state_q = None
        for t in range(6):
            h_f, state_f = float_layer.step(x[:, t], state_f)
            h_q, state_q = int8_layer.step(x[:, t], state_q)
            assert (h_q - h_f).abs().max() < CLOSE


def test_int8_stays_out_of_training_and_follows_weight_updates():
    float_layer, int8_layer = layer("ln_hyperlstm"), layer("ln_hyperlstm")
    int8_layer.cells[0].quantize_int8_()
    x = torch.randn(2, 4, 10)
    torch.testing.assert_close(int8_layer(x)[0], float_layer(x)[0], rtol=0, atol=0)  # autograd on
    with torch.no_grad():
        before = int8_layer(x)[0]
        for p in int8_layer.parameters():
            p.mul_(1.5)
        after = int8_layer(x)[0]
        for p in float_layer.parameters():
            p.mul_(1.5)
        assert (after - float_layer(x)[0]).abs().max() < CLOSE
        assert (after - before).abs().max() > CLOSE


def test_bundle_int8_quantisation_reaches_the_hyperlstm_cells():
    stack = RecurrentStack(10, RecurrentConfig("ln_hyperlstm", 16, 8, 4), 2, True)
    cells = [m for m in stack.modules() if isinstance(m, HyperLSTMCell)]
    assert len(cells) == 3 and not any(c.int8 for c in cells)
    bundle.quantize_int8(stack)
    assert all(c.int8 for c in cells)
