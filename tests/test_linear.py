"""Decoding-time linear layers (input-major weight copies) against nn.Linear itself."""

from __future__ import annotations

import torch
from torch import nn

from nmt.modules.linear import _input_major, linear


def test_matches_the_layer_with_and_without_autograd_and_follows_weight_updates():
    torch.manual_seed(0)
    layer = nn.Linear(16, 40)
    x2, x3 = torch.randn(5, 16), torch.randn(5, 1, 16)
    torch.testing.assert_close(linear(layer, x2), layer(x2))  # autograd on: the layer itself
    assert layer not in _input_major
    with torch.no_grad():
        for x in (x2, x3):
            torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-5, atol=1e-6)
        assert layer in _input_major
        layer.weight.mul_(2.0)  # an in-place update (optimizer step, load_state_dict)
        torch.testing.assert_close(linear(layer, x2), layer(x2), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x2), layer(x2), rtol=1e-5, atol=1e-6)


def test_without_bias_and_for_other_layers():
    torch.manual_seed(0)
    layer, other = nn.Linear(8, 12, bias=False), nn.Tanh()
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-5, atol=1e-6)
        assert torch.equal(linear(other, x), other(x))
