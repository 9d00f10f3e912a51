"""`nmt quickstart` (nmt/commands/quickstart.py): the pieces beyond the `nmt` commands it runs,
which their own tests cover. Here: a run cut short by the time guard is reported as such."""

from __future__ import annotations

from pathlib import Path

from helpers import write_config

from nmt.commands.quickstart import _unfinished_budget
from nmt.training.cli import main as cli_main


def test_a_run_cut_short_is_reported(corpus: Path, tmp_path) -> None:
    """The summary's note: none after the whole budget, the update reached when a guard
    (here max_epochs: the corpus makes 8 batches an epoch) ended training first."""
    whole = write_config(tmp_path / "whole", corpus, 5)
    assert cli_main(["fit", "--config", str(whole)]) == 0
    assert _unfinished_budget(whole, tmp_path / "whole" / "checkpoints") is None

    short = write_config(tmp_path / "short", corpus, 20)
    assert cli_main(["fit", "--config", str(short), "--trainer.max_epochs", "1"]) == 0
    note = _unfinished_budget(short, tmp_path / "short" / "checkpoints")
    assert note is not None and "stopped at update 8 of the budget's 20" in note


def test_a_budget_in_epochs_has_nothing_to_report(tmp_path) -> None:
    """A config without trainer.max_steps (the quickstart accepts any --config) gives no note
    and no error, before any checkpoint is read."""
    config = tmp_path / "epochs.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n")
    assert _unfinished_budget(config, tmp_path / "no-checkpoints") is None
