"""Write tests/data/corpora: the first lines, characters or images of each real corpus in
../shared/data, in the same layout, for the fast tests. Rerun after changing a size here."""

from __future__ import annotations

import gzip
import itertools
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "shared" / "data"
OUT = HERE / "corpora"
MULTI30K_LINES = {  # split -> {language: lines}
    "train": {"en": 5000, "de": 5000, "fr": 2000},
    "val": {"en": 300, "de": 300, "fr": 300},
    "test_2016_flickr": {"en": 150, "de": 150, "fr": 150},
    "test_2017_flickr": {"en": 1000, "de": 1000, "fr": 150},
}
PTB_CHARACTERS = {"train": 60_000, "valid": 12_000, "test": 6_000}
SHAKESPEARE_CHARACTERS = 25_000
MNIST_IMAGES = {"train": 2000, "t10k": 500}
IDX_HEADER = {"images": 16, "labels": 8}  # bytes before the data (magic and sizes)
IMAGE_BYTES = 28 * 28


def first_lines(source: Path, count: int) -> str:
    with gzip.open(source, "rt", encoding="utf-8") as file:
        return "".join(itertools.islice(file, count))


def ptb_slice(text: str, characters: int, every_symbol: bool) -> str:
    """The first lines of a PTB character file, about ``characters`` long, in its format (every
    symbol, the newline included, followed by one space); with ``every_symbol``, also the first
    line holding each symbol the first lines lack, so the slice has the whole vocabulary."""
    lines, line = [], []
    for symbol in text.split(" ")[:-1]:
        line.append(symbol)
        if symbol == "\n":
            lines.append(line)
            line = []
    kept, size = [], 0
    while size < characters:
        kept.append(lines[len(kept)])
        size += 2 * len(kept[-1])
    if every_symbol:
        missing = {s for line in lines for s in line} - {s for line in kept for s in line}
        for symbol in sorted(missing):
            kept.append(next(line for line in lines if symbol in line))
    return " ".join(symbol for line in kept for symbol in line) + " "


def idx_slice(source: Path, kind: str, count: int) -> bytes:
    """The first ``count`` records of an IDX file, with the record count in its header fixed."""
    with gzip.open(source, "rb") as file:
        data = file.read()
    header = bytearray(data[: IDX_HEADER[kind]])
    header[4:8] = count.to_bytes(4, "big")
    record = IMAGE_BYTES if kind == "images" else 1
    return bytes(header) + data[IDX_HEADER[kind] : IDX_HEADER[kind] + count * record]


def main() -> int:
    if not (SOURCE / "MANIFEST.md").is_file():
        sys.exit(f"no corpora at {SOURCE}")
    shutil.rmtree(OUT, ignore_errors=True)
    for folder in ("multi30k", "ptb_char", "tinyshakespeare", "mnist"):
        (OUT / folder).mkdir(parents=True)
    for split, languages in MULTI30K_LINES.items():
        for lang, count in languages.items():
            text = first_lines(SOURCE / "multi30k" / f"{split}.{lang}.gz", count)
            (OUT / "multi30k" / f"{split}.{lang}.gz").write_bytes(
                gzip.compress(text.encode("utf-8"), mtime=0)
            )
    for split, count in PTB_CHARACTERS.items():
        name = f"ptb.char.{split}.txt"
        text = (SOURCE / "ptb_char" / name).read_text(encoding="utf-8")
        (OUT / "ptb_char" / name).write_text(ptb_slice(text, count, every_symbol=split == "train"))
    text = (SOURCE / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    (OUT / "tinyshakespeare" / "input.txt").write_text(text[:SHAKESPEARE_CHARACTERS])
    for prefix, count in MNIST_IMAGES.items():
        for kind, suffix in (("images", "idx3"), ("labels", "idx1")):
            name = f"{prefix}-{kind}-{suffix}-ubyte.gz"
            data = idx_slice(SOURCE / "mnist" / name, kind, count)
            (OUT / "mnist" / name).write_bytes(gzip.compress(data, mtime=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
