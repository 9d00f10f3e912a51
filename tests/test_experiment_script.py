"""configs/multi30k_experiment.sh, the protocol of the published Multi30k figures, end to end
on a tiny model: train, average the recent checkpoints, choose alpha on validation only, score
both test sets, and write summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, write_config

ALPHAS = ("0.0", "1.0")


@pytest.mark.slow  # about 15 `nmt` processes
def test_experiment_trains_averages_picks_alpha_on_validation_and_scores(
    corpus: Path, tmp_path
) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "config", corpus, 5)
    env = {
        **os.environ,
        "NMT": f"{sys.executable} -m nmt.cli",
        "PYTHON": sys.executable,
        "CORPUS": str(corpus),
        "ALPHAS": " ".join(ALPHAS),
        "AVERAGE": "2",
        "LIMIT": "8",
    }
    script = [str(REPO / "configs" / "multi30k_experiment.sh"), str(config), str(run)]
    result = subprocess.run(script, env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 5
    assert summary["best_checkpoint"].startswith("best-step=")
    assert (run / "checkpoints" / "average.ckpt").is_file()
    for name in ("best", "average"):
        row = summary["checkpoints"][name]
        # alpha is the validation argmax (the smallest on a tie), read from the reports
        val = {
            alpha: json.loads((run / "eval" / name / f"val-alpha{alpha}" / "val.json").read_text())
            for alpha in ALPHAS
        }
        scores = {alpha: report["bleu"]["score"] for alpha, report in val.items()}
        chosen = min(ALPHAS, key=lambda alpha: (-scores[alpha], float(alpha)))
        assert row["alpha"] == float(chosen) and row["val_bleu"] == scores[chosen]
        for split in ("test_2016_flickr", "test_2017_flickr"):
            report = run / "eval" / name / f"test-alpha{chosen}" / f"{split}.json"
            assert row[split]["bleu"] == json.loads(report.read_text())["bleu"]["score"]
    rows = summary["checkpoints"]
    assert rows[summary["chosen"]]["val_bleu"] == max(row["val_bleu"] for row in rows.values())
    assert f"| run | {summary['chosen']} |" in result.stdout

    # a trained run is only evaluated again
    again = subprocess.run(script, env=env, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "is trained" in again.stdout
