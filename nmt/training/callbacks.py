"""Lightning callbacks shared by every task."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn


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


class WarnIfBudgetUnfinished(Callback):
    """Say loudly when a run ends before ``max_steps``.

    The budget is in updates so that a config and its seed reproduce one model; ``max_time``
    is only a guard. When the guard (or ``max_epochs``, or early stopping) ends a run first,
    the model is an earlier one than the config's, and its scores are not the reproducible
    figures: a slow or busy machine must not pass for a worse recipe without a word.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.max_steps <= 0 or trainer.global_step >= trainer.max_steps:
            return
        rank_zero_warn(
            f"training stopped at update {trainer.global_step} of trainer.max_steps "
            f"{trainer.max_steps} ({_stop_reason(trainer)}): this model is not the one the "
            "config reproduces, and its scores are lower than a whole run's"
        )


def _stop_reason(trainer: Trainer) -> str:
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None and remaining <= 0:
        return (
            f"trainer.max_time reached first, after {timer.time_elapsed():.0f} s; "
            "raise it, or free the machine"
        )
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        return f"trainer.max_epochs {trainer.max_epochs} reached first"
    return "a callback such as early stopping ended it"
