"""A run killed (SIGKILL) after a validation and before its next save resumes with its record
of the best checkpoint: one ``best-*.ckpt`` under ``save_top_k: 1``, and its score kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from helpers import write_config
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
BEST_KEY_PREFIX = "ModelCheckpoint{'monitor': 'val/bleu'"


class KillAtStep(Callback):
    """SIGKILL this process when the training step ``step`` starts (after the step before it
    was saved and validated)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def best_record(checkpoint: dict) -> dict:
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith(BEST_KEY_PREFIX)]
    return checkpoint["callbacks"][key]


def test_kill_between_a_save_and_the_next_validation_keeps_the_best_record(
    corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, corpus, 9)  # validation every 3 steps, last.ckpt every step
    data = json.loads(config.read_text())
    data["checkpoint"].update(save_top_k=1, mode="max")
    killed = tmp_path / "killed.json"
    killed.write_text(
        json.dumps(
            {**data, "trainer": {**data["trainer"], "callbacks": [{
                "class_path": "test_resume.KillAtStep", "init_args": {"step": 3}
            }]}}
        )
    )  # fmt: skip
    config.write_text(json.dumps(data))
    environment = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    run = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "fit", "--config", str(killed)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "best-step=3.ckpt").is_file()
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert best_record(last)["best_model_score"] is None  # saved before that validation
    (checkpoints / ".last.ckpt.x1y2z3.partial").write_bytes(b"a save killed mid-write")

    resume = [sys.executable, "-m", "nmt.cli", "fit", "--config", str(config)]
    run = subprocess.run(
        [*resume, "--ckpt_path", "last"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    best_files = sorted(p.name for p in checkpoints.glob("best-*.ckpt"))
    assert len(best_files) == 1, best_files
    assert not list(checkpoints.glob("*.partial"))
    record = best_record(torch.load(checkpoints / "last.ckpt", weights_only=True))
    assert record["best_model_score"] is not None
    assert Path(record["best_model_path"]).name == best_files[0]
    assert [Path(p).name for p in record["best_k_models"]] == best_files
