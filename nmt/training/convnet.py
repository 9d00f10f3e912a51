"""MNIST classification with the (hyper)ConvNet: a LightningModule and its DataModule.

The DataModule reads the .npy arrays written by `nmt prep mnist` and keeps them in memory
(55,000 images are 43 MB). Training augments as the paper does: pad to 30x30 and crop a random
28x28 window from each image.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from nmt.errors import UserError
from nmt.models.convnet import ConvNet, ConvNetConfig
from nmt.training.task import TEST, TRAIN, VAL, Task

SPLITS = ("train", "valid", "test")
PIXEL_MAX = 255.0


def load_mnist_split(directory: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of a prepared split."""
    directory = Path(directory)
    images_path, labels_path = directory / f"{split}_images.npy", directory / f"{split}_labels.npy"
    if split not in SPLITS:
        raise UserError(f"unknown MNIST split {split!r}; choose from {', '.join(SPLITS)}")
    if not images_path.is_file() or not labels_path.is_file():
        raise UserError(f"{directory}: no prepared MNIST {split} split (run `nmt prep mnist`)")
    images = torch.from_numpy(np.load(images_path)).unsqueeze(1)
    labels = torch.from_numpy(np.load(labels_path).astype(np.int64))
    return images, labels


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Zero-pad each image by ``padding`` and crop a window of the original size at a random
    offset chosen per image (the paper: pad 28x28 to 30x30, crop 28x28)."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), device=images.device)
    rows = (offsets[:, 0, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(width, device=images.device))[:, None, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None, None]
    return padded[
        index, torch.arange(images.shape[1], device=images.device)[None, :, None, None], rows, cols
    ]


class MNISTDataModule(L.LightningDataModule):
    def __init__(self, data_dir: str = "data/mnist", batch_size: int = 1000, crop_padding: int = 1):
        super().__init__()
        self.data_dir, self.batch_size, self.crop_padding = data_dir, batch_size, crop_padding
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = TensorDataset(*load_mnist_split(self.data_dir, split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        # whole batches are indexed at once: one tensor gather instead of 1,000 item lookups
        return DataLoader(
            dataset, sampler=BatchSampler(order, self.batch_size, drop_last=False), batch_size=None
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = images.float() / PIXEL_MAX
        if self.trainer is not None and self.trainer.training:
            images = random_crop(images, self.crop_padding)
        return images, labels


class ClassifyTask(Task):
    """Cross-entropy training of a ``ConvNet``; logs loss and error rate (%) per split."""

    name = "classify"

    def __init__(
        self,
        architecture: ConvNetConfig | None = None,
        learning_rate: float = 1e-3,
        lr_decay: float = 1.0,
    ):
        """``architecture``: the model's configuration (saved in every checkpoint);
        ``lr_decay``: the learning rate is multiplied by this after every epoch."""
        super().__init__(ConvNet(architecture or ConvNetConfig()))
        self.learning_rate, self.lr_decay = learning_rate, lr_decay

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _step(self, batch, split: str) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        error = (logits.argmax(-1) != labels).float().mean() * 100
        on_step = split == TRAIN
        size = len(labels)
        self.log(
            f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=size
        )
        self.log(
            f"{split}/error", error, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=size
        )
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, TRAIN)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, VAL)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, TEST)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_decay)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }
