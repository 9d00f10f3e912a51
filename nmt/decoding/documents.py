"""Documents: split into sentences with their whitespace kept, reassembled after translation.

A document is cut at every run of whitespace that holds a line break (paragraphs and lines),
and each line into sentences by sentencex, a maintained rule-based splitter for about 300
languages. Measured on Multi30k test sentences joined into paragraphs
(``benchmarks/sentence_splitters.py``), it finds as many boundaries as pysbd (precision 1.0 for
both; recall 0.999 against 1.000 in English, 0.996 against 0.999 in German: both merge rather
than cut) and runs about 300 times faster (0.04 against 12 ms per 1,000 characters), which
matters for a 100,000-character document split in a busy worker.

Nothing is dropped or changed: the pieces of a ``Document`` (sentences and the whitespace
between them) concatenate back to the original text exactly, so the translation keeps the
original blank lines, line breaks and spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LINE_BREAKS = re.compile(r"\s*\n\s*")  # whitespace runs holding a line break stay as they are
SPACES = re.compile(r"\s+")


@dataclass
class Document:
    """A text as whitespace and sentences in turn: gaps[0] s[0] gaps[1] ... s[n-1] gaps[n]."""

    sentences: list[str]
    gaps: list[str]  # one more than the sentences; whitespace only (possibly empty)

    def assemble(self, translations: Sequence[str]) -> str:
        """The document with each sentence replaced by its translation, whitespace kept."""
        if len(translations) != len(self.sentences):
            raise ValueError(
                f"{len(translations)} translations for {len(self.sentences)} sentences"
            )
        parts = [self.gaps[0]]
        for translation, gap in zip(translations, self.gaps[1:], strict=True):
            parts += [translation, gap]
        return "".join(parts)


def split_sentences(text: str, language: str) -> list[str]:
    """The sentences of one line of text, stripped (sentencex keeps their trailing spaces)."""
    import sentencex

    return [piece.strip() for piece in sentencex.segment(language, text) if piece.strip()]


def split_document(
    text: str,
    language: str,
    fits: Callable[[str], bool] = lambda sentence: True,
) -> Document:
    """Sentences of ``text`` and the whitespace around them.

    A sentence for which ``fits`` is false (too many wordpieces for the model) is cut at spaces
    into the longest pieces that fit, each its own sentence, so nothing is silently cut off; a
    single word that does not fit raises ``ValueError``.
    """
    sentences: list[str] = []
    gaps: list[str] = []
    position = 0  # the text before it is accounted for
    for line_start, line_end in _lines(text):
        for sentence in split_sentences(text[line_start:line_end], language):
            start = text.find(sentence, position, line_end)
            if start < 0:  # the splitter changed characters: keep the rest of the line whole
                sentence = text[position:line_end].strip()
                start = text.find(sentence, position, line_end)
            for piece_start, piece_end in _pieces(text, start, start + len(sentence), fits):
                gaps.append(text[position:piece_start])
                sentences.append(text[piece_start:piece_end])
                position = piece_end
            if position >= line_end:
                break
    gaps.append(text[position:])
    return Document(sentences, gaps)


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line's non-blank content."""
    spans, start = [], 0
    for match in LINE_BREAKS.finditer(text):
        if text[start : match.start()].strip():
            spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _pieces(text: str, start: int, end: int, fits: Callable[[str], bool]) -> list[tuple[int, int]]:
    """(start, end) of pieces of text[start:end] that fit, cut at spaces, as long as possible."""
    if fits(text[start:end]):
        return [(start, end)]
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[start:end])]
    words = [(start + a, start + b) for a, b in words]
    pieces, first = [], 0
    while first < len(words):
        last = first
        if not fits(text[words[first][0] : words[first][1]]):
            word = text[words[first][0] : words[first][1]]
            raise ValueError(f"the word {word[:40]!r} alone is longer than the model takes")
        while last + 1 < len(words) and fits(text[words[first][0] : words[last + 1][1]]):
            last += 1
        pieces.append((words[first][0], words[last][1]))
        first = last + 1
    return pieces
