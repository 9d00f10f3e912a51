"""Sentence splitters on real text: how many sentence boundaries each one recovers, and how fast.

Real sentences (Multi30k test sets, English and German, those ending in . ! or ?) are joined into
paragraphs of ``--per-paragraph`` sentences with one space between them, so the true boundaries
are known. For each splitter: the fraction of paragraphs split exactly right, boundary precision
and recall, and the time per 1,000 characters, relative to the fastest.

    python benchmarks/sentence_splitters.py
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "multi30k"
FILES = ("test_2016_flickr", "test_2017_flickr")
ENDS = re.compile(r"[.!?]$")


def paragraphs(language: str, per_paragraph: int) -> list[list[str]]:
    sentences = []
    for name in FILES:
        with gzip.open(DATA / f"{name}.{language}.gz", "rt", encoding="utf-8") as file:
            sentences += [line.strip() for line in file if ENDS.search(line.strip())]
    return [
        sentences[i : i + per_paragraph]
        for i in range(0, len(sentences) - per_paragraph + 1, per_paragraph)
    ]


def boundaries(sentences: list[str]) -> set[int]:
    """Character offsets where a sentence ends (in the text joined with single spaces)."""
    ends, position = set(), 0
    for sentence in sentences[:-1]:
        position += len(sentence)
        ends.add(position)
        position += 1
    return ends


def splitters(language: str) -> dict[str, Callable[[str], list[str]]]:
    import pysbd
    import sentencex

    segmenter = pysbd.Segmenter(language=language, clean=False)
    return {
        "pysbd": lambda text: [s.strip() for s in segmenter.segment(text) if s.strip()],
        "sentencex": lambda text: [
            s.strip() for s in sentencex.segment(language, text) if s.strip()
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-paragraph", type=int, default=5)
    args = parser.parse_args(argv)
    header = ("language", "splitter", "exact", "prec", "recall", "ms/1k chars")
    print("{:>8} {:>10} {:>6} {:>6} {:>6} {:>11}".format(*header))
    for language in ("en", "de"):
        groups = paragraphs(language, args.per_paragraph)
        texts = [" ".join(group) for group in groups]
        characters = sum(len(text) for text in texts)
        for name, split in splitters(language).items():
            start = time.perf_counter()
            found = [split(text) for text in texts]
            seconds = time.perf_counter() - start
            exact = sum(f == g for f, g in zip(found, groups, strict=True)) / len(groups)
            true_positives = predicted = actual = 0
            for sentences, group in zip(found, groups, strict=True):
                got, want = boundaries(sentences), boundaries(group)
                true_positives += len(got & want)
                predicted += len(got)
                actual += len(want)
            precision = true_positives / max(predicted, 1)
            recall = true_positives / actual
            per_1k = 1000 * 1000 * seconds / characters
            print(
                f"{language:>8} {name:>10} {exact:>6.3f} {precision:>6.3f} {recall:>6.3f} "
                f"{per_1k:>11.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
