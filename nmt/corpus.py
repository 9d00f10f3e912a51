"""PreparedCorpus: read a directory written by ``nmt prep translation``.

Layout (see data_prep/parallel_corpus.py, which writes it)::

    manifest.json       sources with sha256, cleaning counts, wordpiece parameters, versions
    wordpieces.model    the shared sentencepiece model
    <split>/            datasets.save_to_disk: src_ids, tgt_ids (int32, no BOS/EOS),
                        src_len, tgt_len (int32), src_text, tgt_text (str)

The manifest is written last, just before the directory is renamed into place, so a directory
with a manifest is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from nmt.errors import UserError
from nmt.manifest import MANIFEST_NAME
from nmt.wordpieces import Wordpieces

if TYPE_CHECKING:
    import datasets

WORDPIECES_NAME = "wordpieces.model"
COLUMNS = ("src_ids", "tgt_ids", "src_len", "tgt_len", "src_text", "tgt_text")


class PreparedCorpus:
    """A prepared translation corpus: its wordpieces, manifest and memory-mapped splits."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise UserError(
                f"{self.directory}: not a prepared corpus (no {MANIFEST_NAME}); "
                "create it with `nmt prep translation`"
            )
        try:
            self.manifest: dict = json.loads(manifest_path.read_text(encoding="utf-8"))
            self.src_lang: str = self.manifest["src_lang"]
            self.tgt_lang: str = self.manifest["tgt_lang"]
            self.split_names: list[str] = list(self.manifest["splits"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{manifest_path}: malformed manifest ({error})") from None
        missing = [name for name in self.split_names if not (self.directory / name).is_dir()]
        if missing:
            raise UserError(f"{self.directory}: incomplete, split(s) missing: {', '.join(missing)}")
        self.wordpieces = Wordpieces.load(self.directory / WORDPIECES_NAME)

    def split(self, name: str) -> datasets.Dataset:
        """The split ``name`` as a memory-mapped ``datasets.Dataset``."""
        if name not in self.split_names:
            raise UserError(
                f"{self.directory}: no split {name!r}; it has {', '.join(self.split_names)}"
            )
        from datasets import load_from_disk

        return load_from_disk(str(self.directory / name))

    def __repr__(self) -> str:
        return (
            f"PreparedCorpus({str(self.directory)!r}, {self.src_lang}-{self.tgt_lang}, "
            f"splits={self.split_names})"
        )
