"""Static hypernetwork ConvNet: the paper's parameter counts, the kernel against a float64
transcription of section 3.1, the crop augmentation, learning on real MNIST, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep import mnist
from nmt.models.convnet import ConvNet, ConvNetConfig
from nmt.modules.static_hyper import StaticHyperKernel, generated_kernel_parameters
from nmt.training.convnet import ClassifyTask, MNISTDataModule, random_crop


def paper_parameter_count(n_in: int, n_out: int, f: int, n_z: int) -> int:
    """Section 3.1: z_j (N_z); W_i, B_i for each of N_in slices (N_z x N_z + N_z); the shared
    W_out (N_out f f x N_z) and B_out (N_out f f)."""
    z, first_layer, second_layer = n_z, n_in * (n_z * n_z + n_z), n_out * f * f * (n_z + 1)
    return z + first_layer + second_layer


def test_parameter_counts_match_the_paper():
    assert paper_parameter_count(16, 16, 7, 4) == 4_244
    assert generated_kernel_parameters(16, 16, (7, 7), 4) == 4_244
    hyper, plain = ConvNet(ConvNetConfig(hyper=True)), ConvNet(ConvNetConfig(hyper=False))
    assert hyper.second_kernel_parameters() == 4_244
    assert plain.second_kernel_parameters() == 12_544 == 7 * 7 * 16 * 16
    # the rest of the two networks is identical
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(plain) - total(hyper) == 12_544 - 4_244
    odd = StaticHyperKernel(3, 5, (3, 2), n_z=2)
    assert sum(p.numel() for p in odd.parameters()) == generated_kernel_parameters(3, 5, (3, 2), 2)


def test_generated_kernel_matches_float64_transcription():
    torch.manual_seed(0)
    hyper = StaticHyperKernel(16, 8, (7, 5), n_z=4)
    kernel = hyper()
    assert kernel.shape == (8, 16, 7, 5)
    z, w_in, b_in = (p.detach().double().numpy() for p in (hyper.z, hyper.w_in, hyper.b_in))
    w_out, b_out = hyper.w_out.detach().double().numpy(), hyper.b_out.detach().double().numpy()
    for i in range(16):
        a_i = w_in[i] @ z + b_in[i]
        k_i = (w_out @ a_i + b_out).reshape(8, 7, 5)  # slice i: every output channel's filter
        np.testing.assert_allclose(kernel[:, i].detach().double().numpy(), k_i, atol=1e-6)


def test_random_crop_takes_windows_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.rand(50, 1, 6, 5)
    crops = random_crop(images, padding=1)
    padded = F.pad(images, (1, 1, 1, 1))
    offsets = set()
    for image, crop in zip(padded, crops, strict=True):
        match = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(image[:, dy : dy + 6, dx : dx + 5], crop)
        ]
        assert match
        offsets.add(match[0])
    assert len(offsets) > 4  # offsets differ between images
    assert torch.equal(random_crop(images, padding=0), images)


@pytest.fixture(scope="module")
def mnist_slice(corpora, tmp_path_factory):
    """2,000 training and 500 valid/test images of the real MNIST (the committed slice)."""
    arrays = mnist.load_splits(corpora / "mnist", valid_size=500)
    directory = tmp_path_factory.mktemp("mnist_slice")
    for split, size in (("train", 2000), ("valid", 500), ("test", 500)):
        for kind in ("images", "labels"):
            np.save(directory / f"{split}_{kind}.npy", arrays[f"{split}_{kind}"][:size])
    return directory


@pytest.mark.parametrize("hyper", [True, False])
def test_a_few_steps_reduce_the_loss(mnist_slice, hyper):
    import lightning as L

    torch.manual_seed(0)
    data = MNISTDataModule(str(mnist_slice), batch_size=125)
    task = ClassifyTask(ConvNetConfig(hyper=hyper), learning_rate=3e-3)
    data.setup()
    images, labels = data.splits["valid"][:]
    images = images.float() / 255

    def loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(task(images), labels).item()

    before = loss()
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=data)
    after = loss()
    assert after < 0.8 * before, (before, after)


def test_checkpoint_loads_without_lightning(mnist_slice, tmp_path):
    import lightning as L

    data = MNISTDataModule(str(mnist_slice), batch_size=500)
    task = ClassifyTask(ConvNetConfig(hyper=True))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    meta = checkpoint["hypernmt"]
    assert meta["task"] == "classify"
    model = ConvNet(ConvNetConfig.from_dict(meta["model_config"]))
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(weights)
    images = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(images), task.model(images))


def test_kernel_picture(tmp_path):
    from PIL import Image

    from nmt.plots.small_tasks import plot_kernels

    paths = []
    for hyper in (True, False):
        model = ConvNet(ConvNetConfig(hyper=hyper))
        path = tmp_path / f"{hyper}.ckpt"
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        meta = {"task": "classify", "model_config": model.config.to_dict()}
        torch.save({"hypernmt": meta, "state_dict": state}, path)
        paths.append(path)
    out = plot_kernels(paths, tmp_path / "pictures" / "kernels.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 300
    assert [p.name for p in out.parent.iterdir()] == ["kernels.png"]  # no temporary file left
