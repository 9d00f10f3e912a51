"""Checkpoints from others: no code runs from them, damage is caught, bad content is one line.

``tests/data/translation-before-checksums.ckpt`` is a Lightning checkpoint of a tiny model
written by ``nmt fit`` before checkpoints carried a checksum (with Adam state and loop state):
it must keep loading.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import torch
from helpers import (
    BEFORE_CHECKSUMS,
    BEFORE_RENAMES,
    REPO,
    before_renames_input,
    before_renames_logits,
)

from nmt.checkpoints import (
    CHECKPOINT_KEY,
    CHECKSUM_KEY,
    load_checkpoint_file,
    load_translation,
    read_checkpoint,
    seal,
)
from nmt.cli import main as nmt_main
from nmt.errors import UserError
from nmt.models.char_lm import CharLMConfig
from nmt.models.convnet import ConvNetConfig
from nmt.training.checkpoint_io import AtomicCheckpointIO


class Payload:
    """Unpickling this writes a marker file: the proof that loading ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.fixture
def legacy() -> dict:
    return torch.load(BEFORE_CHECKSUMS, map_location="cpu", weights_only=True)


def sealed_copy(legacy: dict, path: Path) -> Path:
    torch.save(seal(dict(legacy)), path)
    return path


def test_checkpoint_written_before_checksums_still_loads(legacy) -> None:
    assert CHECKSUM_KEY not in legacy
    model, wordpieces = load_translation(BEFORE_CHECKSUMS)
    assert wordpieces.vocab_size == model.config.vocab_size == 400
    torch.testing.assert_close(model.output.bias, legacy["state_dict"]["model.output.bias"])
    assert not model.training


def test_checkpoint_written_before_the_config_renames_still_loads() -> None:
    model, _ = load_translation(BEFORE_RENAMES / "translation.ckpt")
    assert model.config.recurrent.hidden_size == 8 and model.config.recurrent.n_z == 2
    with torch.no_grad():
        logits = model(*before_renames_input())[0, :, :6]
    torch.testing.assert_close(logits, before_renames_logits("checkpoint"), atol=1e-5, rtol=0)


def test_a_pickled_payload_is_refused_without_running(tmp_path, legacy) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.ckpt"
    torch.save({**legacy, "extra": Payload(str(marker))}, path)
    with pytest.raises(UserError, match=f"{path}: not a readable checkpoint"):
        read_checkpoint(path)
    # every command that reads checkpoints goes through the same loader
    assert nmt_main(["export", str(path), str(tmp_path / "bundle")]) != 0
    run = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "translate", "--checkpoint", str(path)],
        input="A man.\n",
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode != 0 and "not a readable checkpoint" in run.stderr, run.stderr
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: full unpickling runs it
    assert marker.read_text() == "ran"


def flip_middle_byte(path: Path, info: zipfile.ZipInfo) -> None:
    """Flip one bit in the middle of the stored data of one zip record (torch stores tensors
    uncompressed, one record per storage)."""
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x01]))


def test_one_flipped_byte_in_any_tensor_is_refused(tmp_path, legacy) -> None:
    """Weights, Adam's moments, the scheduler's and the loops' tensors: every storage."""
    path = sealed_copy(legacy, tmp_path / "sealed.ckpt")
    read_checkpoint(path)  # intact: loads
    with zipfile.ZipFile(path) as archive:
        storages = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size]
    assert len(storages) > len(legacy["state_dict"])  # the optimizer state is among them
    damaged = tmp_path / "damaged.ckpt"
    for info in storages:
        damaged.write_bytes(path.read_bytes())
        flip_middle_byte(damaged, info)
        with pytest.raises(UserError, match="checksum does not match"):
            read_checkpoint(damaged)


def test_checksum_covers_the_optimizer_state(tmp_path, legacy) -> None:
    path = sealed_copy(legacy, tmp_path / "sealed.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    state = next(iter(checkpoint["optimizer_states"][0]["state"].values()))
    state["exp_avg"].view(-1)[0] += 1e-6
    torch.save(checkpoint, path)  # the old checksum stays: the content no longer matches it
    with pytest.raises(UserError, match="checksum does not match"):
        load_checkpoint_file(path)


def test_training_saves_are_sealed_and_verified(tmp_path, legacy) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "run" / "last.ckpt"
    io.save_checkpoint(dict(legacy), path)
    stored = torch.load(path, weights_only=True)
    assert stored[CHECKSUM_KEY]["algorithm"] == "sha256"
    loaded = io.load_checkpoint(path)
    assert CHECKSUM_KEY not in loaded and loaded["global_step"] == legacy["global_step"]
    stored["global_step"] += 1
    torch.save(stored, path)
    with pytest.raises(UserError, match="checksum does not match"):
        io.load_checkpoint(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("state_dict"), "no 'state_dict' entry"),
        (
            lambda c: c.update(
                state_dict=dict(list(c["state_dict"].items())[: len(c["state_dict"]) // 2])
            ),
            r"weights do not fit the model config \(missing",
        ),
        (
            lambda c: c[CHECKPOINT_KEY]["model_config"].update(hidden_size=8),
            r"weights do not fit the model config \(wrong shape",
        ),
        (
            lambda c: c[CHECKPOINT_KEY]["model_config"].update(width=3),
            r"not a valid TranslationConfig \(.*width",
        ),
        (
            lambda c: c[CHECKPOINT_KEY]["model_config"].update(hidden_size=-5),
            "hidden_size=-5",
        ),
        (lambda c: c[CHECKPOINT_KEY].update(wordpieces=b"junk"), "wordpieces: not a sentencepiece"),
    ],
    ids=[
        "no-state-dict",
        "half-the-weights",
        "config-mismatch",
        "unknown-field",
        "bad-value",
        "spm",
    ],
)
def test_bad_checkpoint_content_is_one_line(tmp_path, legacy, edit, message) -> None:
    edit(legacy)
    path = tmp_path / "bad.ckpt"
    torch.save(legacy, path)
    with pytest.raises(UserError, match=message) as caught:
        load_translation(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_output_that_cannot_be_written_is_one_line(tmp_path, capsys, where) -> None:
    source = tmp_path / "in.txt"
    source.write_text("A man.\n")
    out = source / "out.txt" if where == "under-a-file" else tmp_path
    code = nmt_main(
        ["translate", "--checkpoint", str(BEFORE_CHECKSUMS), "--input", str(source)]
        + ["--output", str(out), "--beam-size", "1", "--no-progress"]
    )
    assert code != 0
    error = capsys.readouterr().err.strip()
    assert str(out) in error and len(error.splitlines()) == 1 and "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


def test_config_dataclasses_load_and_other_classes_are_refused(tmp_path) -> None:
    """The tasks' save_hyperparameters stores their config dataclasses: allowed, nothing else."""
    hyperparameters = {"model": ConvNetConfig(channels=4), "lm": CharLMConfig(num_layers=2)}
    path = tmp_path / "hparams.ckpt"
    torch.save(seal({"hyper_parameters": hyperparameters, "global_step": 1}), path)
    assert load_checkpoint_file(path)["hyper_parameters"] == hyperparameters
    torch.save({"hyper_parameters": {"where": PurePosixPath("runs")}}, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint_file(path)
