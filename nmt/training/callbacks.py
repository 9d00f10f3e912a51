"""Lightning callbacks shared by every task."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class ValidateAtLastUpdate(Callback):
    """Validate after the last update even when ``max_steps`` is not a multiple of
    ``val_check_interval``, so the best checkpoint is chosen over the whole run.

    Lightning validates at a batch whose end hooks set ``trainer.should_stop``, as its Timer
    (``max_time``) and early stopping do; reaching ``max_steps`` does not set it.
    """

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True
