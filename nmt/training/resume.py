"""A resumed run keeps its record of the best checkpoints, and starts without stale temp files.

``last.ckpt`` is saved at the end of a training step, before the validation at the same step;
the best checkpoint of that validation is saved after it. A run killed between the two resumes
from a ``last.ckpt`` whose best-checkpoint record predates that validation: it forgets the best
file on disk (a second ``best-*.ckpt`` under ``save_top_k: 1``) and its score. Each best file,
though, holds the record as it was right after its own save. So at the start of a resumed fit,
``ResumeRecord`` looks for a best file saved at the very step the run resumes from and, when
there is one, adopts its record. It also removes the ``.*.partial`` files of saves that were
killed mid-write (they are never read, and would stay for good).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from nmt.checkpoints import load_checkpoint_file
from nmt.errors import UserError
from nmt.io import remove_stale_partials

logger = logging.getLogger(__name__)


class ResumeRecord(Callback):
    """Restore each monitoring ``ModelCheckpoint``'s record from its own newest file on resume;
    remove stale partial checkpoint files at the start of every fit."""

    def __init__(self) -> None:
        self._resumed_step: int | None = None

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._resumed_step = checkpoint.get("global_step")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if trainer.is_global_zero:
            for directory in {cb.dirpath for cb in callbacks if cb.dirpath}:
                for path in remove_stale_partials(directory):
                    logger.info("removed %s, left by a save that was killed", path)
        if self._resumed_step is None:
            return
        for callback in callbacks:
            if callback.monitor is not None and callback.dirpath:
                self._adopt_newer_record(callback, self._resumed_step)

    @staticmethod
    def _adopt_newer_record(callback: ModelCheckpoint, step: int) -> None:
        """Load the record stored in a file of ``callback`` saved at ``step``, if there is one
        and the restored record does not know it."""
        known = {str(Path(path)) for path in callback.best_k_models}
        for path in sorted(Path(callback.dirpath).glob(f"*{callback.FILE_EXTENSION}")):
            last = path.name.startswith(callback.CHECKPOINT_NAME_LAST or "last")
            if str(path) in known or last or not path.is_file():  # DeepSpeed: directories
                continue
            try:
                checkpoint = load_checkpoint_file(path)
            except UserError as error:  # not this run's to repair: say so and go on
                logger.warning("not reading its best-checkpoint record: %s", error)
                continue
            record = checkpoint.get("callbacks", {}).get(callback.state_key)
            if (
                checkpoint.get("global_step") == step
                and record
                and path.name in {Path(p).name for p in record.get("best_k_models", {})}
            ):
                callback.load_state_dict(record)
                logger.info("best-checkpoint record restored from %s", path)
                return
