"""MNIST from the original IDX gzip files into .npy arrays: `nmt prep mnist`.

The IDX format is four big-endian header fields and raw bytes, so numpy reads it directly (no
torchvision). The split follows the paper's sizes: 55,000 train, 5,000 valid (the last 5,000
images of the official training file), 10,000 test.

Output directory (written to a temporary directory, then renamed):
    {train,valid,test}_images.npy   uint8 (N, 28, 28)
    {train,valid,test}_labels.npy   uint8 (N,)
    manifest.json                   source files with sha256, split sizes, command line
"""

from __future__ import annotations

import argparse
import gzip
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nmt.errors import UserError
from nmt.io import atomic_directory, sha256_file
from nmt.manifest import new_manifest, write_manifest

DEFAULT_SOURCE = Path("../shared/data/mnist")
DEFAULT_OUT = Path("data/mnist")
VALID_SIZE = 5_000
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only type MNIST uses
SPLITS = ("train", "valid", "test")
PACKAGES = ("hypernmt", "numpy")  # versions recorded in the manifest


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes into an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: not a readable gzip file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code != IDX_UBYTE:
        raise UserError(f"{path}: IDX type {type_code:#04x} is not unsigned byte (0x08)")
    header_size = 4 + 4 * ndim
    shape = tuple(int(n) for n in np.frombuffer(data[4:header_size], dtype=">u4"))
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"{path}: {len(data)} bytes, the header {shape} declares {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def load_splits(source: Path, valid_size: int = VALID_SIZE) -> dict[str, np.ndarray]:
    """The train/valid/test images and labels, keyed e.g. ``"valid_images"``."""
    raw = {key: read_idx(source / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
        if len(images) != len(labels):
            raise UserError(
                f"{source / FILES[split + '_images']} has {len(images)} images but "
                f"{source / FILES[split + '_labels']} has {len(labels)} labels"
            )
    if not 0 < valid_size < len(raw["train_images"]):
        raise UserError(f"--valid-size {valid_size} must be between 1 and the training size - 1")
    cut = len(raw["train_images"]) - valid_size
    return {
        "train_images": raw["train_images"][:cut],
        "train_labels": raw["train_labels"][:cut],
        "valid_images": raw["train_images"][cut:],
        "valid_labels": raw["train_labels"][cut:],
        "test_images": raw["test_images"],
        "test_labels": raw["test_labels"],
    }


def prepare(
    source: Path,
    out: Path,
    valid_size: int = VALID_SIZE,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Write the three splits of MNIST as .npy arrays under ``out``; return the manifest."""
    arrays = load_splits(source, valid_size)
    manifest = new_manifest(
        "classify",
        PACKAGES,
        sources={name: sha256_file(source / name) for name in FILES.values()},
        splits={split: len(arrays[f"{split}_labels"]) for split in SPLITS},
        image_shape=list(arrays["train_images"].shape[1:]),
        valid=f"last {valid_size} images of the official training file",
        command=command,
    )
    with atomic_directory(out) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        write_manifest(tmp, manifest)
    counts = ", ".join(f"{split} {n:,}" for split, n in manifest["splits"].items())
    log(f"MNIST -> {out}: {counts}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nmt prep mnist", description="MNIST IDX gzip files -> .npy train/valid/test"
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="IDX .gz directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--valid-size", type=int, default=VALID_SIZE, help="held out of train")
    args = parser.parse_args(argv)
    command = " ".join(["nmt prep mnist", *(argv if argv is not None else sys.argv[1:])])
    prepare(args.source, args.out, args.valid_size, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
