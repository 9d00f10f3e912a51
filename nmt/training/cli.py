"""``nmt fit|validate|test --config configs/<experiment>.yaml``: LightningCLI over any task.

Configs name the task and its data by ``class_path`` (``subclass_mode``), so the translation
model, the ConvNet and the character LM share this one entry point. Every run gets
ModelCheckpoint callbacks in one directory: ``checkpoint`` keeps the best (configs choose what it
monitors, e.g. validation BLEU), ``last_checkpoint`` rewrites ``last.ckpt`` for
``--ckpt_path last``, and ``recent_checkpoints`` (off by default) keeps the last N validated
checkpoints for averaging. Checkpoint files are written atomically and sealed with a checksum,
every run validates after its last update and warns if it ends before ``max_steps``, a resumed
run keeps its best-checkpoint record (``ResumeRecord``), and the data modules' rank-aware
samplers are left in place under DDP.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from nmt.training.callbacks import ValidateAtLastUpdate, WarnIfBudgetUnfinished
from nmt.training.checkpoint_io import AtomicCheckpointIO
from nmt.training.resume import ResumeRecord


class TrainingCLI(LightningCLI):
    """LightningCLI with a best and a last checkpoint, atomic checkpoint files, and samplers
    left to the data modules."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The best checkpoint: configs set what it monitors (e.g. val/bleu, mode max).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # last.ckpt, rewritten at every validation (and every_n_train_steps): Lightning's own
        # save_last only rewrites it when the monitored metric improves.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        # The last N validated checkpoints (``recent-step=*.ckpt``) for ``nmt average``; off
        # unless a config sets ``recent_checkpoints.save_top_k``.
        parser.add_lightning_class_args(ModelCheckpoint, "recent_checkpoints")
        parser.link_arguments("checkpoint.dirpath", "recent_checkpoints.dirpath")
        parser.set_defaults(
            {
                "checkpoint.filename": "best-{step}",
                "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
                "recent_checkpoints.filename": "recent-{step}",
                "recent_checkpoints.monitor": "step",
                "recent_checkpoints.mode": "max",
                "recent_checkpoints.save_top_k": 0,
                "recent_checkpoints.enable_version_counter": False,
                # The data modules split each epoch between ranks themselves.
                "trainer.use_distributed_sampler": False,
            }
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if config.get("enable_checkpointing") is False:  # then Lightning refuses checkpoints
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        else:
            callbacks = [*callbacks, ResumeRecord()]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        callbacks = [*callbacks, ValidateAtLastUpdate(), WarnIfBudgetUnfinished()]
        return super()._instantiate_trainer({**config, "plugins": plugins}, callbacks)


def main(argv: list[str]) -> int:
    """argv[0] is the LightningCLI subcommand: fit, validate or test."""
    # ``nmt`` passes its own argv explicitly; LightningCLI warns whenever sys.argv is also set.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    TrainingCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )
    return 0
