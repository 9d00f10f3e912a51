"""MNIST preparation: IDX parsing, the train/valid/test split, errors, nothing half-written."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from data_prep import mnist
from nmt.errors import UserError

VALID_SLICE = 500  # held out of the 2,000 training images of the committed slice


@pytest.fixture(scope="module")
def prepared(corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "mnist"
    argv = ["--source", str(corpora / "mnist"), "--out", str(out)]
    assert mnist.main([*argv, "--valid-size", str(VALID_SLICE)]) == 0
    return out


def check_prepared(prepared, source, sizes: dict[str, int]) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["splits"] == sizes
    train, valid = np.load(prepared / "train_labels.npy"), np.load(prepared / "valid_labels.npy")
    test = np.load(prepared / "test_labels.npy")
    assert train[:5].tolist() == [5, 0, 4, 1, 9]
    assert test[:5].tolist() == [7, 2, 1, 0, 4]
    images = np.load(prepared / "train_images.npy")
    assert images.shape == (sizes["train"], 28, 28) and images.dtype == np.uint8
    assert np.load(prepared / "test_images.npy").shape == (sizes["test"], 28, 28)
    # valid is the tail of the official training file, read independently here
    with gzip.open(source / "train-labels-idx1-ubyte.gz") as handle:
        raw = np.frombuffer(handle.read()[8:], dtype=np.uint8)
    assert np.array_equal(np.concatenate([train, valid]), raw)
    assert 0 < images.mean() < 255 and images.max() == 255


def test_counts_first_labels_and_split(prepared, corpora):
    check_prepared(prepared, corpora / "mnist", {"train": 1500, "valid": 500, "test": 500})


@pytest.mark.slow
def test_the_full_mnist_splits_55k_5k_10k(shared_data, tmp_path):
    out = tmp_path / "mnist"
    assert mnist.main(["--source", str(shared_data / "mnist"), "--out", str(out)]) == 0
    check_prepared(out, shared_data / "mnist", {"train": 55_000, "valid": 5_000, "test": 10_000})


def _write_gz(path, payload: bytes) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(payload)


def test_bad_idx_files_raise_user_errors(tmp_path):
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="plain.gz: not a readable gzip"):
        mnist.read_idx(not_gzip)
    truncated = tmp_path / "truncated.gz"
    _write_gz(truncated, bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(3))
    with pytest.raises(UserError, match="truncated.gz: 11 bytes, the header"):
        mnist.read_idx(truncated)
    with pytest.raises(UserError, match="missing.gz: file not found"):
        mnist.read_idx(tmp_path / "missing.gz")


def test_failed_run_leaves_no_output(tmp_path, corpora):
    source = tmp_path / "source"
    source.mkdir()
    for name in list(mnist.FILES.values())[:3]:  # the test labels are missing
        (source / name).write_bytes((corpora / "mnist" / name).read_bytes())
    out = tmp_path / "out"
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        mnist.main(["--source", str(source), "--out", str(out)])
    assert list(tmp_path.iterdir()) == [source]


def test_interrupted_write_leaves_no_output(tmp_path, corpora, monkeypatch):
    def interrupted(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(
            ["--source", str(corpora / "mnist"), "--out", str(tmp_path / "out"),
             "--valid-size", str(VALID_SLICE)]
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []
