"""Linear layers at decoding time: the product by an input-major copy of the weight.

A decoding step multiplies a few rows (beam x sentences) by each weight, and at few rows MKL
runs x @ W with W laid out (in, out) 1.2-1.7x faster than x @ W.T on the (out, in) weight
nn.Linear keeps (``benchmarks/weight_layout.py``; the decoder's output layer at beam 5 is the
largest product of a step). Without autograd, ``linear`` therefore multiplies by a copy made
once and kept until the weight changes; under autograd (training) it is ``layer(x)``. The
copy costs one more weight's memory per layer, in inference only.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

# layer -> ((weight identity, version), input-major weight); dropped with the layer
_input_major: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], Tensor]] = (
    weakref.WeakKeyDictionary()
)


def linear(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)``; for a float ``nn.Linear`` without autograd, from the input-major copy.
    Other layers (an int8 quantised linear, say) run as they are."""
    if type(layer) is not nn.Linear or torch.is_grad_enabled():
        return layer(x)
    weight = layer.weight
    key = (id(weight), weight._version)  # an in-place update bumps the version
    cached = _input_major.get(layer)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().t().contiguous())
        _input_major[layer] = cached
    weight_t = cached[1]
    if layer.bias is None:
        return x @ weight_t
    if x.dim() == 2:
        return torch.addmm(layer.bias, x, weight_t)
    return torch.matmul(x, weight_t) + layer.bias
