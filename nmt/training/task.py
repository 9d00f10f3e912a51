"""What the three training tasks share: how their config is saved and what a checkpoint carries.

Each task trains one model built from one config dataclass, its ``architecture`` argument.
``save_hyperparameters`` records that config and the task's own settings (Lightning's
``hyper_parameters``); ``checkpoint["hypernmt"]`` carries, as plain data, what a loader without
Lightning needs (``nmt.checkpoints.hypernmt_metadata``). Metrics are logged as ``<split>/<name>``
with the splits ``train``, ``val`` and ``test``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
from torch import nn

from nmt.checkpoints import CHECKPOINT_KEY, hypernmt_metadata

TRAIN, VAL, TEST = "train", "val", "test"  # the logging namespaces


class Task(L.LightningModule):
    """A LightningModule that trains ``self.model`` (which has a ``config`` dataclass)."""

    name: ClassVar[str]  # the task's name in checkpoints and bundles

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # The subclass's __init__ arguments (its architecture config and settings), not the model.
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def checkpoint_extras(self) -> dict[str, Any]:
        """What a loader needs besides the model config (wordpieces, a vocabulary)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = hypernmt_metadata(
            self.name, self.model.config.to_dict(), **self.checkpoint_extras()
        )
