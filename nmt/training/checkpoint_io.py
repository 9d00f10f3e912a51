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

(DeepSpeed writes its own checkpoint directories; ``DeepSpeedAnyDeviceStrategy`` swaps those in
atomically.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

# Temporary files start with "." and end with this suffix (never ".ckpt"), so neither Lightning's
# search for the last checkpoint nor a glob for "*.ckpt" picks up a half-written one.
PARTIAL_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (temporary file, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, "
                f"got {storage_options!r}"
            )
        if not _is_local_file_protocol(path):  # object stores: fsspec's own transaction
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` never holds a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX
    )
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it owner-only
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
