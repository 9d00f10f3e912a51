"""Checkpoint files that are either complete or absent, even when training is killed mid-save.

Lightning's default ``TorchCheckpointIO`` serialises into memory, writes a temporary file in the
system's temp directory and moves it into place; when that directory is on another filesystem the
move is a copy, and a process killed during the copy leaves a truncated checkpoint under the final
name. ``AtomicCheckpointIO`` writes the temporary file beside the destination, flushes it to disk
and renames it over the destination: a rename within one directory is atomic, so the previous
good checkpoint stays loadable until the new one is complete. Use it from a YAML config::

    trainer:
      plugins:
        - class_path: nmt.training.checkpoint_io.AtomicCheckpointIO

Every checkpoint it writes is sealed with a checksum, and it loads checkpoints (``--ckpt_path``)
the way ``nmt.checkpoints`` does: no code run from the file, the checksum verified. At start it
removes the ``.*.partial`` files a killed save left behind (``nmt.io.remove_stale_partials``).

(DeepSpeed writes its own checkpoint directories; ``DeepSpeedAnyDeviceStrategy`` swaps those in
atomically.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from nmt.checkpoints import load_checkpoint_file, save_checkpoint_file, seal


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (``nmt.io``) and sealed."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, "
                f"got {storage_options!r}"
            )
        if not _is_local_file_protocol(path):  # object stores: fsspec's own transaction
            super().save_checkpoint(seal(checkpoint), path)
            return
        save_checkpoint_file(checkpoint, Path(path))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Plain data only (``weights_only`` cannot be turned off), checksum verified."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location or "cpu")
