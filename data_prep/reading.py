"""Streaming readers for local corpus files: plain or gzip, strict UTF-8, errors as UserError.

Nothing here holds a file in memory: lines and records are yielded one at a time, so the same
code reads Multi30k and WMT'14.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nmt.errors import UserError

ENCODING_ERRORS = ("strict", "replace")

GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # not gzip, truncated, corrupt

Pair = tuple[str, str]  # (source, target)


def check_file(path: Path) -> None:
    """Fail early, with the file's name, on a missing, empty or unreadable input."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: not readable (permission denied)")


def _open_binary(path: Path) -> IO[bytes]:
    check_file(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _locate_bad_utf8(path: Path) -> str:
    """Line number and byte of the first invalid UTF-8 sequence (rescan after a decode error)."""
    with _open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = line[error.start : error.start + 1].hex()
                return f"line {number}, byte {error.start + 1} (0x{bad})"
    return "unknown line"


def read_lines(path: Path, errors: str = "strict") -> Iterator[str]:
    """Lines of ``path`` without their line terminator (``\\n`` or ``\\r\\n``).

    ``errors="replace"`` turns invalid UTF-8 into U+FFFD instead of failing.
    """
    try:
        with _open_binary(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="\n")
            for line in text:
                yield line.rstrip("\n").removesuffix("\r")
    except UnicodeDecodeError:
        where = _locate_bad_utf8(path)
        raise UserError(
            f"{path}: invalid UTF-8 at {where}; fix the file or pass --errors replace"
        ) from None
    except GZIP_ERRORS as error:
        raise UserError(f"{path}: unreadable gzip file ({error})") from None


def read_parallel(src_path: Path, tgt_path: Path, errors: str = "strict") -> Iterator[Pair]:
    """(source, target) pairs from two line-aligned files.

    Line counts are checked as the files are read (one pass); on a mismatch the rest of the
    longer file is counted so that the error names both files and both counts.
    """
    src_lines, tgt_lines = read_lines(src_path, errors), read_lines(tgt_path, errors)
    count = 0
    for src in src_lines:
        tgt = next(tgt_lines, None)
        if tgt is None:
            src_count = count + 1 + sum(1 for _ in src_lines)
            raise _mismatch(src_path, src_count, tgt_path, count)
        count += 1
        yield src, tgt
    rest = sum(1 for _ in tgt_lines)
    if rest:
        raise _mismatch(src_path, count, tgt_path, count + rest)
    if count == 0:
        raise UserError(f"{src_path}: no lines")


def _mismatch(src_path: Path, src_count: int, tgt_path: Path, tgt_count: int) -> UserError:
    return UserError(
        f"line counts differ: {src_path} has {src_count} lines, {tgt_path} has {tgt_count}"
    )


def read_table(
    path: Path, src_column: str, tgt_column: str, errors: str = "strict"
) -> Iterator[Pair]:
    """Pairs from a TSV (header row names the columns) or JSONL file (.gz allowed).

    JSONL records may hold the columns at the top level (``{"en": ..., "de": ...}``) or under
    ``"translation"`` as the hub's translation datasets do.
    """
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        yield from _read_jsonl(path, src_column, tgt_column, errors)
    elif name.endswith(".tsv"):
        yield from _read_tsv(path, src_column, tgt_column, errors)
    else:
        raise UserError(f"{path}: expected a .tsv or .jsonl file (optionally .gz)")


def _read_jsonl(path: Path, src_column: str, tgt_column: str, errors: str) -> Iterator[Pair]:
    for number, line in enumerate(read_lines(path, errors), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        yield record_pair(record, src_column, tgt_column, where=f"{path}:{number}")


def record_pair(record: object, src_column: str, tgt_column: str, where: str) -> Pair:
    """(source, target) from a flat record or a hub-style ``{"translation": {...}}`` record."""
    if isinstance(record, dict) and isinstance(record.get("translation"), dict):
        record = record["translation"]
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with fields {src_column!r}, {tgt_column!r}")
    missing = [column for column in (src_column, tgt_column) if column not in record]
    if missing:
        raise UserError(f"{where}: field(s) {', '.join(map(repr, missing))} missing")
    src, tgt = record[src_column], record[tgt_column]
    if not isinstance(src, str) or not isinstance(tgt, str):
        raise UserError(f"{where}: fields {src_column!r} and {tgt_column!r} must be strings")
    return src, tgt


def _read_tsv(path: Path, src_column: str, tgt_column: str, errors: str) -> Iterator[Pair]:
    # Quoting off: corpus text is full of quote characters that are not CSV quoting.
    rows = csv.reader(read_lines(path, errors), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header is None:
        raise UserError(f"{path}: no header row")
    for column in (src_column, tgt_column):
        if column not in header:
            raise UserError(f"{path}: header has no column {column!r} (it has {header})")
    src_index, tgt_index = header.index(src_column), header.index(tgt_column)
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UserError(f"{path}:{number}: {len(row)} fields, the header has {len(header)}")
        yield row[src_index], row[tgt_index]
