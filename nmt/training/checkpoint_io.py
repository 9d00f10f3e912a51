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
removes the ``.*.partial`` files a killed save left behind (``remove_stale_partials``).

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

from nmt.checkpoints import load_checkpoint_file, seal

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
            super().save_checkpoint(seal(checkpoint), path)
            return
        atomic_torch_save(seal(checkpoint), Path(path))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Plain data only (``weights_only`` cannot be turned off), checksum verified."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location or "cpu")


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


def remove_stale_partials(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that were killed before their rename; the removed
    paths. Call only when no save into ``directory`` is running (at the start of a run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(f".*{PARTIAL_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
