"""Every experiment config in configs/ parses against the code (LightningCLI's own parser), and
every results config budgets its run in updates, with wall-clock time only as a guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt.training.cli import main as cli_main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code in (None, 0), printed.err
    assert "class_path: nmt.training." in printed.out  # the resolved config (after any warnings)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_budget_is_a_number_of_updates(config: Path) -> None:
    trainer = yaml.safe_load(config.read_text())["trainer"]
    assert trainer.get("max_steps", -1) > 0, f"{config.name}: set trainer.max_steps"
