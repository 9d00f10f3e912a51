"""Train the shared sentencepiece model on the (cleaned) training split, source and target together.

Reserved ids come from nmt/special_tokens.py; byte fallback is always on, so a character never
seen in training becomes its UTF-8 bytes rather than <unk>.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from nmt.errors import UserError
from nmt.special_tokens import (
    BOS_ID,
    BOS_PIECE,
    EOS_ID,
    EOS_PIECE,
    PAD_ID,
    PAD_PIECE,
    UNK_ID,
    UNK_PIECE,
)

if TYPE_CHECKING:
    import datasets

MODEL_TYPES = ("unigram", "bpe")
READ_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class WordpieceConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"
    # 1.0 keeps every character of European-language text; CJK corpora want ~0.9995.
    character_coverage: float = 1.0
    # sentencepiece trains on a random sample of at most this many sentences (source and target
    # counted apart); its memory grows with the sample, about 1.5 KB a sentence (unigram).
    max_sentences: int = 2_000_000

    def trainer_options(self) -> dict:
        """Every option handed to sentencepiece (recorded in the manifest)."""
        return {
            "vocab_size": self.vocab_size,
            "model_type": self.model_type,
            "character_coverage": self.character_coverage,
            "input_sentence_size": self.max_sentences,
            "shuffle_input_sentence": True,
            "byte_fallback": True,
            "normalization_rule_name": "nmt_nfkc",
            "pad_id": PAD_ID,
            "unk_id": UNK_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "pad_piece": PAD_PIECE,
            "unk_piece": UNK_PIECE,
            "bos_piece": BOS_PIECE,
            "eos_piece": EOS_PIECE,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def _sentences(dataset: datasets.Dataset) -> Iterator[str]:
    for batch in dataset.iter(batch_size=READ_BATCH_ROWS):
        yield from batch["src"]
        yield from batch["tgt"]


def train_wordpieces(dataset: datasets.Dataset, config: WordpieceConfig) -> bytes:
    """The serialized sentencepiece model trained on columns src and tgt of ``dataset``."""
    import sentencepiece as spm

    if config.model_type not in MODEL_TYPES:
        raise UserError(f"--model-type {config.model_type!r}: choose {' or '.join(MODEL_TYPES)}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(dataset),
            model_writer=model,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **config.trainer_options(),
        )
    except RuntimeError as error:
        raise UserError(f"sentencepiece training failed: {error}".splitlines()[0]) from None
    return model.getvalue()
