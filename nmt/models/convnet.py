"""The paper's MNIST ConvNet, with an ordinary or a hypernetwork-generated second layer.

Two convolutions (f x f, "same" padding), each followed by ReLU and 2x2 max pooling, then a
linear classifier. With ``hyper=True`` the second kernel (16 x 16 x 7 x 7 in the paper) comes
from a ``StaticHyperKernel`` instead of being a free parameter.
Inputs are images (B, 1, H, W) with intensities in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config_bounds import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_HYPER_EMBEDDING,
    MAX_IMAGE_SIZE,
    check_bool,
    check_int,
    rename_keys,
)
from nmt.modules.static_hyper import StaticHyperKernel

POOL = 2  # each conv layer halves the image with 2x2 max pooling


@dataclass
class ConvNetConfig:
    image_size: int = 28
    channels: int = 16  # filters of both conv layers
    kernel_size: int = 7
    num_classes: int = 10
    hyper: bool = True  # generate the second kernel with a static hypernetwork
    n_z: int = 4  # N_z: size of the layer embedding the hypernetwork reads (hyper only)

    def __post_init__(self) -> None:
        check_int(self, "image_size", 1, MAX_IMAGE_SIZE)
        check_int(self, "channels", 1, MAX_CHANNELS)
        check_int(self, "kernel_size", 1, self.image_size)
        check_int(self, "num_classes", 2, MAX_CLASSES)
        check_bool(self, "hyper")
        check_int(self, "n_z", 1, MAX_HYPER_EMBEDDING)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ConvNetConfig:
        """Also reads configs saved before ``n_z`` was called ``embedding_size``."""
        return cls(**rename_keys(values, {"embedding_size": "n_z"}))


class ConvNet(nn.Module):
    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        c, f = config.channels, config.kernel_size
        self.conv1 = nn.Conv2d(1, c, f, padding=f // 2)
        if config.hyper:
            self.conv2_kernel = StaticHyperKernel(c, c, f, config.n_z)
            self.conv2_bias = nn.Parameter(torch.zeros(c))
        else:
            self.conv2 = nn.Conv2d(c, c, f, padding=f // 2)
        pooled = config.image_size // POOL // POOL
        self.classifier = nn.Linear(c * pooled * pooled, config.num_classes)

    def second_kernel(self) -> Tensor:
        """The second layer's kernel (N_out, N_in, f, f), generated or ordinary."""
        return self.conv2_kernel() if self.config.hyper else self.conv2.weight

    def second_kernel_parameters(self) -> int:
        """Parameters spent on the second kernel (hypernetwork or weights; bias excluded)."""
        if self.config.hyper:
            return sum(p.numel() for p in self.conv2_kernel.parameters())
        return self.conv2.weight.numel()

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] -> class logits (B, num_classes)."""
        pad = self.config.kernel_size // 2
        x = F.max_pool2d(F.relu(self.conv1(images)), POOL)
        bias = self.conv2_bias if self.config.hyper else self.conv2.bias
        x = F.conv2d(x, self.second_kernel(), bias, padding=pad)
        x = F.max_pool2d(F.relu(x), POOL)
        return self.classifier(x.flatten(1))
