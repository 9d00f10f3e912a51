"""Cleaning of the training split, every step counted.

Steps, in order (the first three change text, the last four drop pairs):

1. ``normalize``: Unicode NFKC. NFKC, not NFC, because sentencepiece normalises its input with
   NFKC (``nmt_nfkc``) at training and at encoding time; cleaning with the same form means the
   stored text, the wordpieces and decode(encode(text)) all agree. NFKC also folds
   compatibility forms (full-width letters, ligatures, no-break spaces) that carry no meaning
   for translation.
2. ``control_chars``: characters of Unicode category Cc and Cf removed (zero-width joiner and
   non-joiner kept, they matter in some scripts); control characters that are whitespace, such
   as tab, become spaces in the next step.
3. ``whitespace``: runs of whitespace become one space; leading and trailing space removed.
4. ``empty``: pairs with an empty side dropped.
5. ``max_length``: pairs with a side longer than ``max_words`` whitespace-separated words dropped.
6. ``length_ratio``: pairs whose longer side has more than ``max_ratio`` times the words of the
   shorter dropped (as Moses' clean-corpus-n).
7. ``duplicates``: exact duplicate pairs (after steps 1-3) dropped, the first kept; pairs are
   compared by a 64-bit hash, so memory is 8 bytes a pair (a false match needs ~4e9 pairs).

Held-out splits (validation and test sets) are never cleaned: they are kept verbatim so that
scores compare with published ones.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets

TEXT_STEPS = ("normalize", "control_chars", "whitespace")
DROP_STEPS = ("empty", "max_length", "length_ratio")  # "duplicates" follows, over the whole split
KEEP = 0
_KEPT_FORMAT_CHARS = {"\u200c", "\u200d"}  # zero-width non-joiner and joiner
_ANNOTATIONS = ("_changed", "_drop", "_hash")


@dataclass(frozen=True)
class CleaningConfig:
    normalization: str = "NFKC"
    max_words: int = 250
    max_ratio: float = 9.0
    dedupe: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _is_removed_control(char: str) -> bool:
    return (
        unicodedata.category(char) in ("Cc", "Cf")
        and not char.isspace()
        and char not in _KEPT_FORMAT_CHARS
    )


def _remove_controls(text: str) -> str:
    if text.isprintable():  # the common case: no Cc/Cf character at all
        return text
    return "".join(char for char in text if not _is_removed_control(char))


def _text_steps(text: str, normalization: str) -> tuple[str, str, str]:
    """The text after each of steps 1-3."""
    normalized = unicodedata.normalize(normalization, text)
    stripped = _remove_controls(normalized)
    return normalized, stripped, " ".join(stripped.split())


def clean_text(text: str, normalization: str = "NFKC") -> str:
    """Steps 1-3 on one string (also the text that decode(encode(text)) gives back)."""
    return _text_steps(text, normalization)[-1]


def _pair_hash(src: str, tgt: str) -> int:
    digest = hashlib.blake2b(f"{src}\n{tgt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _drop_code(src_words: int, tgt_words: int, config: CleaningConfig) -> int:
    """KEEP, or 1 + the index in DROP_STEPS of the first filter that drops the pair."""
    shorter, longer = sorted((src_words, tgt_words))
    fails = (shorter == 0, longer > config.max_words, longer > config.max_ratio * shorter)
    return next((code for code, fail in enumerate(fails, start=1) if fail), KEEP)


def _annotate(batch: dict, config: CleaningConfig) -> dict:
    """Clean a batch; record per pair which text steps changed it and which filter drops it."""
    out: dict[str, list] = {"src": [], "tgt": [], "_changed": [], "_drop": [], "_hash": []}
    for pair in zip(batch["src"], batch["tgt"], strict=True):
        changed = 0
        texts = []
        for text in pair:
            steps = _text_steps(text, config.normalization)
            # bit i set: step TEXT_STEPS[i] changed this pair
            for bit, (before, after) in enumerate(zip((text, *steps[:-1]), steps, strict=True)):
                changed |= (before != after) << bit
            texts.append(steps[-1])
        src, tgt = texts
        out["src"].append(src)
        out["tgt"].append(tgt)
        out["_changed"].append(changed)
        out["_drop"].append(_drop_code(len(src.split()), len(tgt.split()), config))
        out["_hash"].append(_pair_hash(src, tgt))
    return out


def clean_split(
    dataset: datasets.Dataset, config: CleaningConfig, num_proc: int | None = None
) -> tuple[datasets.Dataset, list[dict]]:
    """Clean a training split (columns src, tgt); returns it and the counts of each step.

    Each count records ``pairs`` left after the step and, for text steps, ``changed`` pairs,
    for dropping steps, ``dropped`` pairs.
    """
    from datasets import Features, Value

    features = Features(
        {
            "src": Value("string"),
            "tgt": Value("string"),
            "_changed": Value("int8"),
            "_drop": Value("int8"),
            "_hash": Value("int64"),
        }
    )
    annotated = dataset.map(
        _annotate,
        batched=True,
        fn_kwargs={"config": config},
        features=features,
        num_proc=num_proc,
        desc="cleaning",
    )
    changed = annotated.data.column("_changed").to_numpy()
    drop = annotated.data.column("_drop").to_numpy()
    pairs = annotated.num_rows
    counts = [{"step": "read", "pairs": pairs}]
    for bit, step in enumerate(TEXT_STEPS):
        counts.append({"step": step, "pairs": pairs, "changed": int(((changed >> bit) & 1).sum())})
    for code, step in enumerate(DROP_STEPS, start=1):
        dropped = int((drop == code).sum())
        pairs -= dropped
        counts.append({"step": step, "pairs": pairs, "dropped": dropped})
    keep = np.flatnonzero(drop == KEEP)
    if config.dedupe:
        hashes = annotated.data.column("_hash").to_numpy()[keep]
        _, first = np.unique(hashes, return_index=True)
        unique = keep[np.sort(first)]
        counts.append(
            {"step": "duplicates", "pairs": len(unique), "dropped": len(keep) - len(unique)}
        )
        keep = unique
    cleaned = annotated.select(keep).remove_columns(list(_ANNOTATIONS))
    return cleaned, counts
