"""Encode a split's text into the columns of a prepared corpus (nmt/corpus.py), in parallel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nmt.wordpieces import Wordpieces

if TYPE_CHECKING:
    import datasets


def corpus_features() -> datasets.Features:
    from datasets import Features, List, Value

    return Features(
        {
            "src_ids": List(Value("int32")),
            "tgt_ids": List(Value("int32")),
            "src_len": Value("int32"),
            "tgt_len": Value("int32"),
            "src_text": Value("string"),
            "tgt_text": Value("string"),
        }
    )


class _Encoder:
    """The map function; pickles as the model bytes, so worker processes rebuild it."""

    def __init__(self, wordpieces: Wordpieces) -> None:
        self.wordpieces = wordpieces

    def __call__(self, batch: dict) -> dict:
        src_ids = self.wordpieces.encode_batch(batch["src"])
        tgt_ids = self.wordpieces.encode_batch(batch["tgt"])
        return {
            "src_ids": src_ids,
            "tgt_ids": tgt_ids,
            "src_len": [len(ids) for ids in src_ids],
            "tgt_len": [len(ids) for ids in tgt_ids],
            "src_text": batch["src"],
            "tgt_text": batch["tgt"],
        }


def encode_split(
    dataset: datasets.Dataset, wordpieces: Wordpieces, num_proc: int | None = None, name: str = ""
) -> datasets.Dataset:
    """Columns src, tgt (text) -> src_ids, tgt_ids (no BOS/EOS), lengths, and the text kept."""
    return dataset.map(
        _Encoder(wordpieces),
        batched=True,
        remove_columns=dataset.column_names,
        features=corpus_features(),
        num_proc=num_proc,
        desc=f"encoding {name}".strip(),
    )
