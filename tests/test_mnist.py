"""MNIST preparation: IDX parsing, the 55k/5k/10k split, errors, nothing half-written."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from data_prep import mnist
from nmt.errors import UserError


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "mnist"
    assert mnist.main(["--source", str(shared_data / "mnist"), "--out", str(out)]) == 0
    return out


def test_counts_first_labels_and_split(prepared, shared_data):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 55_000, "valid": 5_000, "test": 10_000}
    train, valid = np.load(prepared / "train_labels.npy"), np.load(prepared / "valid_labels.npy")
    test = np.load(prepared / "test_labels.npy")
    assert train[:5].tolist() == [5, 0, 4, 1, 9]
    assert test[:5].tolist() == [7, 2, 1, 0, 4]
    images = np.load(prepared / "train_images.npy")
    assert images.shape == (55_000, 28, 28) and images.dtype == np.uint8
    assert np.load(prepared / "test_images.npy").shape == (10_000, 28, 28)
    # valid is the tail of the official training file, read independently here
    with gzip.open(shared_data / "mnist" / "train-labels-idx1-ubyte.gz") as handle:
        raw = np.frombuffer(handle.read()[8:], dtype=np.uint8)
    assert np.array_equal(np.concatenate([train, valid]), raw)
    assert 0 < images.mean() < 255 and images.max() == 255


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


def test_failed_run_leaves_no_output(tmp_path, shared_data):
    source = tmp_path / "source"
    source.mkdir()
    for name in list(mnist.FILES.values())[:3]:  # the test labels are missing
        (source / name).write_bytes((shared_data / "mnist" / name).read_bytes())
    out = tmp_path / "out"
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        mnist.main(["--source", str(source), "--out", str(out)])
    assert list(tmp_path.iterdir()) == [source]


def test_interrupted_write_leaves_no_output(tmp_path, shared_data, monkeypatch):
    def interrupted(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(["--source", str(shared_data / "mnist"), "--out", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []
