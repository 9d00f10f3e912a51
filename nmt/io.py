"""Outputs that are complete or absent, and the one sha256 of a file.

Everything the project writes (checkpoints, bundles, prepared corpora, reports, translations,
plots) goes through here: it is built under a hidden temporary name beside its destination
(``.<name>.<random>.partial``), flushed to disk and renamed into place. A rename within one
directory is atomic, so a killed process leaves at most a hidden partial, never a file or
directory that looks complete, and the previous version stays usable until the new one is whole.

One permission rule: outputs get what the process's umask gives a newly created file or
directory (``mkstemp``/``mkdtemp`` alone would make them private to their owner).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

from tqdm import tqdm

from nmt.errors import UserError

# Partials start with "." and end with this suffix (never ".ckpt"), so neither Lightning's search
# for the last checkpoint nor a glob for "*.ckpt" picks up a half-written one.
PARTIAL_SUFFIX = ".partial"
RETIRED_SUFFIX = ".retired"  # a replaced directory, kept only until its successor is in place
HASH_CHUNK_BYTES = 1 << 20
HASH_PROGRESS_BYTES = 256 << 20  # show a progress bar when hashing files larger than this


@contextmanager
def atomic_file(path: str | os.PathLike, mode: Literal["w", "wb"] = "wb") -> Iterator[IO]:
    """Yield a file open for writing; when the block ends without an error it becomes ``path``."""
    path = Path(path)
    temporary = _partial_path(path, tempfile.mkstemp)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except IsADirectoryError:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(f"{path}: is a directory; name an output file") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path, "w") as file:
        file.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as file:
        file.write(data)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``target``; when the block ends without an error its files
    are flushed to disk and it replaces ``target`` (see ``replace_directory``)."""
    target = Path(target)
    partial = Path(_partial_path(target, tempfile.mkdtemp))
    try:
        yield partial
        umask = _umask()
        for path in [partial, *partial.rglob("*")]:  # writers such as mkstemp make files private
            if path.is_dir():
                path.chmod(0o777 & ~umask)
            else:
                path.chmod(0o666 & ~umask)
                _fsync_file(path)
        replace_directory(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def replace_directory(new: Path, final: Path) -> None:
    """Put the complete directory ``new`` at ``final``, replacing what was there.

    Two renames within one directory: if the process dies between them, the previous version
    survives intact as ``<final>.retired``; otherwise ``final`` is always a complete directory.
    """
    retired = final.with_name(final.name + RETIRED_SUFFIX)
    if retired.exists():
        shutil.rmtree(retired)
    if final.is_dir():
        os.replace(final, retired)
    elif final.exists():
        final.unlink()  # e.g. a single-file checkpoint of the same name from another strategy
    os.replace(new, final)
    _fsync_directory(final.parent)
    if retired.exists():
        shutil.rmtree(retired)


def remove_stale_partials(directory: str | os.PathLike) -> list[Path]:
    """Delete the partial files and directories of writes killed before their rename; the
    removed paths. Call only when nothing is writing into ``directory`` (at the start of a run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(f".*{PARTIAL_SUFFIX}"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes as stored (compressed files are hashed compressed)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    digest = hashlib.sha256()
    progress = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"sha256 {path.name}",
        disable=size < HASH_PROGRESS_BYTES,
    )
    with handle, progress:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            progress.update(len(chunk))
    return digest.hexdigest()


def _partial_path(path: Path, make) -> str:
    """A new hidden partial beside ``path``, made by ``tempfile.mkstemp`` or ``mkdtemp``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = make(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    except OSError as error:  # a parent that is a file, no permission, ...
        raise UserError(f"{path}: cannot write there ({error.strerror or error})") from None
    if isinstance(made, tuple):  # mkstemp's (descriptor, name)
        os.close(made[0])
        return made[1]
    return made


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make a rename itself durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
