"""Wordpieces: the one sentencepiece model shared by source and target (as in GNMT).

The model is carried as bytes so that a prepared corpus, a checkpoint and an exported bundle can
each hold their own copy; ``Wordpieces`` pickles as those bytes, so it can be handed to worker
processes (``datasets.map(num_proc=...)``, data-loader workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.errors import UserError
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

_RESERVED = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


class Wordpieces:
    """Encode text to wordpiece ids (no BOS/EOS) and decode ids back to text."""

    def __init__(self, model_bytes: bytes, name: str = "wordpiece model") -> None:
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as error:
            raise UserError(f"{name}: not a sentencepiece model ({error})") from None
        actual = {
            "pad": processor.pad_id(),
            "unk": processor.unk_id(),
            "bos": processor.bos_id(),
            "eos": processor.eos_id(),
        }
        if actual != _RESERVED:
            raise UserError(
                f"{name}: reserved ids are {actual}, expected {_RESERVED} (nmt/special_tokens.py)"
            )
        self.model_bytes = model_bytes
        self.vocab_size: int = processor.get_piece_size()
        self._processor = processor

    @classmethod
    def load(cls, path: str | Path) -> Wordpieces:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: wordpiece model not found")
        return cls(path.read_bytes(), name=str(path))

    @classmethod
    def from_bytes(cls, data: bytes) -> Wordpieces:
        return cls(bytes(data))

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_bytes)

    def encode(self, text: str) -> list[int]:
        """Wordpiece ids of ``text``, without BOS/EOS (the model adds them where it needs them)."""
        return self._processor.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: stops at the first EOS and drops PAD and BOS."""
        pieces: list[int] = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                pieces.append(token)
        return self._processor.decode(pieces)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The wordpiece strings of ``ids`` (for display and debugging)."""
        return [self._processor.id_to_piece(int(token)) for token in ids]

    def __getstate__(self) -> dict:
        return {"model_bytes": self.model_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_bytes"])

    def __repr__(self) -> str:
        return f"Wordpieces(vocab_size={self.vocab_size})"
