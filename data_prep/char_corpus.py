"""Character corpora as id arrays: `nmt prep chars`.

Two sources:
- PTB characters (``--ptb DIR``, the default): Mikolov's ptb.char.{train,valid,test}.txt, whose
  symbols are separated by spaces, ``_`` marking a word break and the end of a line being a
  symbol of its own; the official splits; 50 symbols.
- Any plain text file (``--text FILE``, plain or .gz): every character is a symbol; the text is
  cut into contiguous train/valid/test parts by ``--split`` fractions.

The vocabulary is the set of symbols of the training split (sorted, after the reserved ids of
``nmt.special_tokens``); a symbol seen only in valid/test becomes ``<unk>`` and is counted.

Output directory (written to a temporary directory, then renamed):
    vocab.json                  JSON list of symbols, index = id
    {train,valid,test}.npy      1-D id arrays (uint8 when the vocabulary fits), for memory-mapped
                                contiguous reading
    manifest.json               sources with sha256, symbol counts, unknowns, command line
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from data_prep.reading import ENCODING_ERRORS, read_lines
from nmt.errors import UserError
from nmt.io import atomic_directory, sha256_file
from nmt.manifest import new_manifest, write_manifest
from nmt.models.char_lm import CharVocabulary
from nmt.special_tokens import RESERVED_PIECES, UNK_ID

DEFAULT_PTB = Path("../shared/data/ptb_char")
DEFAULT_OUT = Path("data/ptb_char")
SPLITS = ("train", "valid", "test")
PTB_FILE = "ptb.char.{split}.txt"
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
END_OF_LINE = "\n"
PACKAGES = ("hypernmt", "numpy")  # versions recorded in the manifest


def read_text(path: Path, errors: str = "strict") -> str:
    """The whole file as text with ``\\n`` line ends (UTF-8 errors name file and line)."""
    return "".join(line + END_OF_LINE for line in read_lines(path, errors))


def ptb_symbols(path: Path, errors: str = "strict") -> list[str]:
    """Symbols of a PTB character file: space-separated, plus one end-of-line symbol a line."""
    symbols: list[str] = []
    for number, line in enumerate(read_lines(path, errors), start=1):
        tokens = line.split()
        if not tokens:  # the files end with "\n " (a last line holding only the separator)
            continue
        for token in tokens:
            if len(token) != 1:
                raise UserError(
                    f"{path}, line {number}: {token!r} is not a single character; PTB character "
                    "files separate every symbol with a space"
                )
        symbols += tokens
        symbols.append(END_OF_LINE)
    if not symbols:
        raise UserError(f"{path}: no symbols")
    return symbols


def split_by_fractions(text: str, fractions: tuple[float, ...]) -> dict[str, str]:
    """Contiguous train/valid/test parts of ``text`` in the given proportions."""
    if len(fractions) != len(SPLITS) or any(f <= 0 for f in fractions):
        raise UserError(f"--split takes {len(SPLITS)} positive fractions, got {list(fractions)}")
    total = sum(fractions)
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"--split fractions must add up to 1, got {total:g}")
    ends = np.round(np.cumsum(fractions) * len(text)).astype(int)
    starts = [0, *ends[:-1]]
    parts = {split: text[a:b] for split, a, b in zip(SPLITS, starts, ends, strict=True)}
    for split, part in parts.items():
        if not part:
            raise UserError(f"the {split} part of {len(text)} characters is empty; adjust --split")
    return parts


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(
        np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.int32
    )


def encode(symbols: Sequence[str], vocabulary: CharVocabulary) -> tuple[np.ndarray, int]:
    """Ids of ``symbols`` (a list or a string) and how many were unknown."""
    ids = np.fromiter(
        vocabulary.encode(symbols), dtype=id_dtype(len(vocabulary)), count=len(symbols)
    )
    return ids, int(np.count_nonzero(ids == UNK_ID))


def prepare(
    splits: dict[str, list[str] | str],
    out: Path,
    manifest: dict,
    log: Callable[[str], None] = print,
) -> dict:
    """Build the vocabulary from the train split, encode all splits, write ``out``."""
    vocabulary = CharVocabulary.from_characters(set(splits["train"]))
    manifest = {**manifest, "vocab_size": len(vocabulary), "splits": {}}
    with atomic_directory(out) as tmp:
        vocabulary.save(tmp / "vocab.json")
        for split in SPLITS:
            ids, unknown = encode(splits[split], vocabulary)
            np.save(tmp / f"{split}.npy", ids)
            manifest["splits"][split] = {"symbols": len(ids), "unknown": unknown}
        write_manifest(tmp, manifest)
    counts = ", ".join(f"{s} {v['symbols']:,}" for s, v in manifest["splits"].items())
    reserved = len(RESERVED_PIECES)
    log(f"{len(vocabulary) - reserved} symbols (+{reserved} reserved) -> {out}: {counts}")
    return manifest


def prepare_ptb(source: Path, out: Path, errors: str = "strict", command: str = "") -> dict:
    paths = {split: source / PTB_FILE.format(split=split) for split in SPLITS}
    manifest = new_manifest(
        "char_lm",
        PACKAGES,
        format="ptb",
        sources={path.name: sha256_file(path) for path in paths.values()},
        command=command,
    )
    splits = {split: ptb_symbols(path, errors) for split, path in paths.items()}
    return prepare(splits, out, manifest)


def prepare_text(
    source: Path,
    out: Path,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    errors: str = "strict",
    command: str = "",
) -> dict:
    manifest = new_manifest(
        "char_lm",
        PACKAGES,
        format="text",
        sources={source.name: sha256_file(source)},
        fractions=list(fractions),
        command=command,
    )
    splits = split_by_fractions(read_text(source, errors), fractions)
    return prepare(splits, out, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nmt prep chars",
        description="character corpus -> vocab.json + train/valid/test id arrays (.npy)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ptb", type=Path, help=f"PTB character directory (default {DEFAULT_PTB})")
    source.add_argument("--text", type=Path, help="a plain text file (or .gz), split by --split")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=DEFAULT_FRACTIONS,
        metavar=("TRAIN", "VALID", "TEST"),
        help="fractions of a --text file (default 0.9 0.05 0.05)",
    )
    parser.add_argument(
        "--errors",
        choices=ENCODING_ERRORS,
        default="strict",
        help="invalid UTF-8: fail naming the line (strict) or replace it",
    )
    args = parser.parse_args(argv)
    command = " ".join(["nmt prep chars", *(argv if argv is not None else sys.argv[1:])])
    if args.text is not None:
        prepare_text(args.text, args.out, tuple(args.split), args.errors, command)
    else:
        prepare_ptb(args.ptb or DEFAULT_PTB, args.out, args.errors, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
