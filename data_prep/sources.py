"""Where a translation corpus comes from: local files or the hub, resolved to one source per split.

Each source loads as a ``datasets.Dataset`` with two string columns, ``src`` and ``tgt``, written
to Arrow on disk (never held in memory), and describes itself for the manifest (sha256 of local
files, or the hub dataset's id and fingerprint) so that a changed input triggers a rebuild.

Corpora:
- ``multi30k``: the raw gzip files of Multi30k task 1 (``<split>.<lang>.gz``) from a local
  directory (default ``../shared/data/multi30k`` when it exists), else the hub copy
  ``bentrevett/multi30k`` (en-de; train, val, test_2016_flickr).
- ``wmt14``: WMT'14 from the hub (``wmt/wmt14``; cs, de, fr, hi, ru paired with en).
- ``files``: any local parallel data given as ``--split NAME=SRC_FILE,TGT_FILE`` (two aligned
  text files, plain or .gz) or ``--split NAME=FILE.tsv|FILE.jsonl`` (columns named by language).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_prep.reading import Pair, read_parallel, read_table, record_pair
from nmt.errors import UserError
from nmt.io import sha256_file

if TYPE_CHECKING:
    import datasets

TRAIN_SPLIT = "train"
CORPORA = ("multi30k", "wmt14", "files")

MULTI30K_LANGUAGES = ("en", "de", "fr")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
MULTI30K_LOCAL_DEFAULT = Path("..") / "shared" / "data" / "multi30k"
MULTI30K_HUB = "bentrevett/multi30k"
MULTI30K_HUB_LANGUAGES = ("en", "de")
MULTI30K_HUB_SPLITS = {"train": "train", "val": "validation", "test_2016_flickr": "test"}

WMT14_HUB = "wmt/wmt14"
WMT14_LANGUAGES = ("cs", "de", "fr", "hi", "ru")  # each paired with en
WMT14_SPLITS = {"train": "train", "val": "validation", "test_newstest2014": "test"}

# Rows per batch when pulling the src/tgt columns out of a hub dataset, and when writing Arrow.
HUB_BATCH_SIZE = 10_000
WRITE_BATCH_ROWS = 10_000


def _pair_features() -> datasets.Features:
    from datasets import Features, Value

    return Features({"src": Value("string"), "tgt": Value("string")})


def _unwrap_generation_error(error: Exception) -> Exception:
    """``datasets`` wraps errors raised in a map function; surface our UserError instead."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, UserError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return error


def write_pairs(pairs: Iterator[Pair], path: Path) -> datasets.Dataset:
    """Stream pairs into an Arrow file, batch by batch, and memory-map it as a Dataset.

    Written with pyarrow directly: a per-example ``Dataset.from_generator`` spends ~80 us a row
    encoding features, which is most of the time on Multi30k and an hour on WMT'14.
    """
    import pyarrow as pa
    from datasets import Dataset

    schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        while batch := list(itertools.islice(pairs, WRITE_BATCH_ROWS)):
            src, tgt = zip(*batch, strict=True)
            writer.write_batch(pa.record_batch([pa.array(src), pa.array(tgt)], schema=schema))
    return Dataset.from_file(str(path))


@dataclass(frozen=True)
class LocalPair:
    """Two line-aligned text files (plain or .gz)."""

    src_path: Path
    tgt_path: Path

    def describe(self) -> list[dict]:
        return [
            {"side": side, "path": str(path), "sha256": sha256_file(path)}
            for side, path in (("src", self.src_path), ("tgt", self.tgt_path))
        ]

    def pairs(self, errors: str) -> Iterator[Pair]:
        return read_parallel(self.src_path, self.tgt_path, errors)

    def load(self, errors: str, path: Path, num_proc: int | None = None) -> datasets.Dataset:
        return write_pairs(self.pairs(errors), path)


@dataclass(frozen=True)
class LocalTable:
    """One TSV or JSONL file (plain or .gz) whose columns are named by language."""

    path: Path
    src_column: str
    tgt_column: str

    def describe(self) -> list[dict]:
        return [{"side": "both", "path": str(self.path), "sha256": sha256_file(self.path)}]

    def pairs(self, errors: str) -> Iterator[Pair]:
        return read_table(self.path, self.src_column, self.tgt_column, errors)

    def load(self, errors: str, path: Path, num_proc: int | None = None) -> datasets.Dataset:
        return write_pairs(self.pairs(errors), path)


@dataclass(frozen=True)
class HubSplit:
    """One split of a hub dataset (or a local directory laid out like its hub repository).

    Records are flat (``{"en": ..., "de": ...}``, as in Multi30k) or nested under
    ``"translation"`` (as in WMT'14); both are parsed by ``reading.record_pair``. The text is
    already decoded, so ``--errors`` does not apply.
    """

    repo: str
    config: str | None
    split: str
    src_lang: str
    tgt_lang: str

    def _dataset(self) -> datasets.Dataset:
        from datasets import load_dataset

        try:
            return load_dataset(self.repo, self.config, split=self.split)
        except Exception as error:  # network, missing repo or config: one line for the user
            raise UserError(
                f"cannot load {self.repo} ({self.config or 'default'}, split {self.split}) "
                f"through datasets: {type(error).__name__}: {error}".splitlines()[0]
            ) from None

    def describe(self) -> list[dict]:
        dataset = self._dataset()
        return [
            {
                "side": "both",
                "hub": self.repo,
                "config": self.config,
                "split": self.split,
                "fingerprint": dataset._fingerprint,
                "rows": dataset.num_rows,
            }
        ]

    def _extract(self, batch: dict, indices: list[int]) -> dict:
        columns = list(batch)
        pairs = [
            record_pair(
                {column: batch[column][row] for column in columns},
                self.src_lang,
                self.tgt_lang,
                where=f"{self.repo} {self.split} row {index}",
            )
            for row, index in enumerate(indices)
        ]
        return {"src": [src for src, _ in pairs], "tgt": [tgt for _, tgt in pairs]}

    def load(self, errors: str, path: Path, num_proc: int | None = None) -> datasets.Dataset:
        dataset = self._dataset()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return dataset.map(
                self._extract,
                with_indices=True,
                batched=True,
                batch_size=HUB_BATCH_SIZE,
                remove_columns=dataset.column_names,
                features=_pair_features(),
                num_proc=num_proc if num_proc and num_proc > 1 else None,
                cache_file_name=str(path),  # in the run's work directory, not the hub cache
                desc=f"reading {self.repo} {self.split}",
            )
        except Exception as error:
            raise _unwrap_generation_error(error) from None


Origin = LocalPair | LocalTable | HubSplit


@dataclass(frozen=True)
class SplitSource:
    """One output split and where it comes from. Only the training split is ever cleaned."""

    name: str
    origin: Origin

    @property
    def held_out(self) -> bool:
        return self.name != TRAIN_SPLIT


def resolve(
    corpus: str,
    src: str,
    tgt: str,
    data_dir: Path | None = None,
    hub_repo: str | None = None,
    split_specs: list[str] | None = None,
) -> list[SplitSource]:
    """The sources of ``corpus`` for the pair ``src``-``tgt``; UserError for what cannot be."""
    if src == tgt:
        raise UserError(f"source and target language are both {src!r}")
    if split_specs and corpus != "files":
        raise UserError("--split is for --corpus files only")
    if corpus == "multi30k":
        return _multi30k(src, tgt, data_dir, hub_repo)
    if corpus == "wmt14":
        return _wmt14(src, tgt, hub_repo)
    if corpus == "files":
        return _files(src, tgt, split_specs or [])
    raise UserError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")


def _multi30k(src: str, tgt: str, data_dir: Path | None, hub_repo: str | None) -> list[SplitSource]:
    for lang in (src, tgt):  # wherever the files come from
        if lang not in MULTI30K_LANGUAGES:
            raise UserError(
                f"multi30k has no language {lang!r}; it has {', '.join(MULTI30K_LANGUAGES)}"
            )
    if data_dir is None and hub_repo is None and MULTI30K_LOCAL_DEFAULT.is_dir():
        data_dir = MULTI30K_LOCAL_DEFAULT
    if data_dir is not None:
        if not data_dir.is_dir():
            raise UserError(f"{data_dir}: no such directory")
        return [
            SplitSource(
                split, LocalPair(data_dir / f"{split}.{src}.gz", data_dir / f"{split}.{tgt}.gz")
            )
            for split in MULTI30K_SPLITS
        ]
    if {src, tgt} != set(MULTI30K_HUB_LANGUAGES):
        raise UserError(
            f"multi30k from the hub ({MULTI30K_HUB}) has en-de only, not {src}-{tgt}; "
            "give --data-dir with the raw files for fr"
        )
    repo = hub_repo or MULTI30K_HUB
    return [
        SplitSource(name, HubSplit(repo, None, hub_split, src, tgt))
        for name, hub_split in MULTI30K_HUB_SPLITS.items()
    ]


def _wmt14(src: str, tgt: str, hub_repo: str | None) -> list[SplitSource]:
    other = tgt if src == "en" else src
    if "en" not in (src, tgt) or other not in WMT14_LANGUAGES:
        pairs = ", ".join(f"{lang}-en" for lang in WMT14_LANGUAGES)
        raise UserError(f"wmt14 has no pair {src}-{tgt}; it has {pairs} (either direction)")
    repo = hub_repo or WMT14_HUB
    return [
        SplitSource(name, HubSplit(repo, f"{other}-en", hub_split, src, tgt))
        for name, hub_split in WMT14_SPLITS.items()
    ]


def _files(src: str, tgt: str, split_specs: list[str]) -> list[SplitSource]:
    sources: dict[str, SplitSource] = {}
    for spec in split_specs:
        name, sep, paths = spec.partition("=")
        if not sep or not name or not paths:
            raise UserError(f"--split {spec!r}: expected NAME=SRC_FILE,TGT_FILE or NAME=FILE")
        if name in sources:
            raise UserError(f"--split {name!r} given twice")
        files = [Path(p) for p in paths.split(",")]
        if len(files) == 2:
            origin: Origin = LocalPair(files[0], files[1])
        elif len(files) == 1:
            origin = LocalTable(files[0], src, tgt)
        else:
            raise UserError(f"--split {spec!r}: give one table file or two aligned text files")
        sources[name] = SplitSource(name, origin)
    if TRAIN_SPLIT not in sources:
        raise UserError(f"--corpus files needs --split {TRAIN_SPLIT}=... (wordpieces train on it)")
    return list(sources.values())
