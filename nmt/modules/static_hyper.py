"""Static hypernetwork: a convolution kernel generated from a small learned layer embedding.

Section 3.1 of Ha, Dai & Le (2016). A layer j is described by an embedding z_j (N_z numbers).
A two-layer linear hypernetwork turns it into the kernel, one input-channel slice at a time:

    a_i = W_i z_j + b_i                    i = 1..N_in,  W_i: N_z x N_z   (first layer)
    K_i = W_out a_i + b_out                W_out: (N_out f_h f_w) x N_z   (second layer, shared)

so the layer costs N_z + N_in (N_z^2 + N_z) + (N_z + 1) N_out f_h f_w parameters instead of
N_in N_out f_h f_w. For the paper's 7x7x16x16 MNIST layer with N_z = 4: 4,244 instead of 12,544.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def generated_kernel_parameters(
    in_channels: int, out_channels: int, kernel_size: tuple[int, int], n_z: int
) -> int:
    """Parameters of a ``StaticHyperKernel`` (the formula of the module docstring)."""
    slice_size = out_channels * kernel_size[0] * kernel_size[1]
    return n_z + in_channels * (n_z * n_z + n_z) + (n_z + 1) * slice_size


class StaticHyperKernel(nn.Module):
    """Generates a conv kernel (out_channels, in_channels, f_h, f_w) for ``F.conv2d``.

    Initialised so that the generated kernel starts at the scale of PyTorch's default
    convolution initialisation (uniform with bound 1/sqrt(fan_in), i.e. std 1/sqrt(3 fan_in)):
    z ~ N(0, 1) and orthogonal-like W_i keep each a_i at unit scale, and W_out is scaled so that
    every kernel entry has that std. Training then starts where an ordinary conv layer would.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        n_z: int = 4,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (
            (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        )
        self.n_z = n_z
        slice_size = out_channels * self.kernel_size[0] * self.kernel_size[1]
        self.z = nn.Parameter(torch.empty(n_z))
        self.w_in = nn.Parameter(torch.empty(in_channels, n_z, n_z))
        self.b_in = nn.Parameter(torch.empty(in_channels, n_z))
        self.w_out = nn.Parameter(torch.empty(slice_size, n_z))
        self.b_out = nn.Parameter(torch.empty(slice_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        kernel_std = 1.0 / math.sqrt(3.0 * fan_in)
        nn.init.normal_(self.z)
        z_norm = self.z.detach().norm().clamp_min(1e-6)
        with torch.no_grad():
            for w in self.w_in:
                nn.init.orthogonal_(w)
            # a_i = W_i z has the norm of z; rescale so each entry of a_i has unit variance
            self.w_in.mul_(math.sqrt(self.n_z) / z_norm)
        nn.init.zeros_(self.b_in)
        nn.init.normal_(self.w_out, std=kernel_std / math.sqrt(self.n_z))
        nn.init.zeros_(self.b_out)

    def forward(self) -> Tensor:
        a = torch.einsum("iyz,z->iy", self.w_in, self.z) + self.b_in  # (N_in, N_z)
        slices = a @ self.w_out.T + self.b_out  # (N_in, N_out * f_h * f_w)
        kernel = slices.view(self.in_channels, self.out_channels, *self.kernel_size)
        return kernel.transpose(0, 1)  # (N_out, N_in, f_h, f_w)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"n_z={self.n_z}"
        )
