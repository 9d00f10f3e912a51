"""``nmt prep translation``: a parallel corpus -> cleaned text -> shared wordpieces -> Arrow splits.

The output directory (read by nmt/corpus.py) holds ``manifest.json``, ``wordpieces.model`` and
one ``datasets.save_to_disk`` directory per split. It is built in a temporary directory and
renamed into place; the manifest records a fingerprint of the inputs and options, and a rerun
with the same fingerprint reuses the directory instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_prep.arguments import ArgumentParser
from data_prep.cleaning import CleaningConfig, clean_split
from data_prep.encoding import encode_split
from data_prep.reading import ENCODING_ERRORS
from data_prep.sources import CORPORA, TRAIN_SPLIT, SplitSource, resolve
from data_prep.wordpiece_training import MODEL_TYPES, WordpieceConfig, train_wordpieces
from nmt.corpus import WORDPIECES_NAME, PreparedCorpus
from nmt.errors import UserError
from nmt.io import atomic_directory
from nmt.manifest import MANIFEST_NAME, new_manifest, write_manifest
from nmt.wordpieces import Wordpieces

if TYPE_CHECKING:
    import datasets

FORMAT_VERSION = 2
WORK_DIR_NAME = "_work"
# Below this many pairs a split is processed in one process: forking workers costs more.
MIN_PAIRS_PER_PROCESS = 20_000
VERSIONED_PACKAGES = ("hypernmt", "datasets", "sentencepiece", "pyarrow", "numpy")


@dataclass(frozen=True)
class Request:
    """Everything that determines the output (``--out`` and ``--num-proc`` do not)."""

    corpus: str
    src_lang: str
    tgt_lang: str
    errors: str
    cleaning: CleaningConfig
    wordpieces: WordpieceConfig

    def fingerprint(self, sources: list[dict]) -> str:
        identity = {
            "format": FORMAT_VERSION,
            "corpus": self.corpus,
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "errors": self.errors,
            "cleaning": self.cleaning.to_dict(),
            "wordpieces": self.wordpieces.to_dict(),
            # content, not where it was read from: moving the files needs no rebuild
            "sources": [{k: v for k, v in entry.items() if k != "path"} for entry in sources],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="nmt prep translation",
        description="Prepare a parallel corpus: clean the training split, train shared "
        "sentencepiece wordpieces on it, and save every split as memory-mapped Arrow. "
        "Validation and test splits are kept verbatim.",
    )
    parser.add_argument("--corpus", required=True, choices=CORPORA)
    parser.add_argument("--src", required=True, help="source language code, e.g. en")
    parser.add_argument("--tgt", required=True, help="target language code, e.g. de")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced)")
    source = parser.add_argument_group("sources")
    source.add_argument(
        "--data-dir",
        type=Path,
        help="multi30k: directory of the raw <split>.<lang>.gz files "
        "(default ../shared/data/multi30k if it exists, else the hub)",
    )
    source.add_argument(
        "--hub-repo", help="hub dataset id (or local directory in its layout) to load instead"
    )
    source.add_argument(
        "--split",
        action="append",
        metavar="NAME=FILES",
        help="files: NAME=SRC_FILE,TGT_FILE (aligned lines, plain or .gz) or NAME=FILE.tsv|.jsonl "
        "with columns named by language; repeat per split; 'train' is required",
    )
    source.add_argument(
        "--errors",
        choices=ENCODING_ERRORS,
        default="strict",
        help="invalid UTF-8: fail naming file and line (strict, the default) or replace it "
        "with U+FFFD",
    )
    cleaning = parser.add_argument_group("cleaning (training split only)")
    defaults = CleaningConfig()
    cleaning.add_argument(
        "--max-words",
        type=int,
        default=defaults.max_words,
        help="drop pairs with a side longer than this many words (%(default)s)",
    )
    cleaning.add_argument(
        "--max-ratio",
        type=float,
        default=defaults.max_ratio,
        help="drop pairs whose longer side has more than this times the words of the shorter "
        "(%(default)s)",
    )
    cleaning.add_argument("--no-dedupe", action="store_true", help="keep duplicate pairs")
    pieces = parser.add_argument_group("wordpieces")
    wp_defaults = WordpieceConfig()
    pieces.add_argument(
        "--vocab-size",
        type=int,
        default=wp_defaults.vocab_size,
        help="wordpieces, shared by source and target (%(default)s)",
    )
    pieces.add_argument(
        "--model-type", choices=MODEL_TYPES, default=wp_defaults.model_type, help="(%(default)s)"
    )
    pieces.add_argument(
        "--character-coverage",
        type=float,
        default=wp_defaults.character_coverage,
        help="share of characters given their own piece, the rest fall back to bytes (%(default)s)",
    )
    pieces.add_argument(
        "--max-sentences",
        type=int,
        default=wp_defaults.max_sentences,
        help="sentences sampled for training the wordpieces (%(default)s)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--num-proc",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes for cleaning and encoding large splits (%(default)s)",
    )
    run.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return parser


def _source_entries(sources: list[SplitSource], described: dict) -> list[dict]:
    return [{"split": s.name, **entry} for s in sources for entry in described[s.name]]


def _status(message: str) -> None:
    print(f"nmt prep translation: {message}", file=sys.stderr, flush=True)


def _processes(pairs: int, num_proc: int) -> int | None:
    useful = min(num_proc, pairs // MIN_PAIRS_PER_PROCESS)
    return useful if useful > 1 else None


def _reusable(out: Path, fingerprint: str) -> PreparedCorpus | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        corpus = PreparedCorpus(out)
    except UserError:
        return None
    return corpus if corpus.manifest.get("fingerprint") == fingerprint else None


def _check_out(out: Path) -> None:
    """Refuse to replace a directory that is not a prepared corpus."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST_NAME).is_file():
            raise UserError(f"{out}: exists and is not a prepared corpus; remove it or pick --out")


def prepare(
    request: Request,
    sources: list[SplitSource],
    described: dict,
    out: Path,
    num_proc: int,
    command: str,
) -> dict:
    """Build the prepared corpus into ``out`` (atomically); returns its manifest."""
    clock = _Stopwatch()
    fingerprint = request.fingerprint(_source_entries(sources, described))
    with atomic_directory(out) as partial:
        work = partial / WORK_DIR_NAME
        texts, splits = {}, {}
        for source in sources:
            raw = source.origin.load(request.errors, work / f"{source.name}.arrow", num_proc)
            if source.held_out:
                texts[source.name] = raw
                counts = [{"step": "read", "pairs": raw.num_rows}]
            else:
                texts[source.name], counts = clean_split(
                    raw, request.cleaning, _processes(raw.num_rows, num_proc)
                )
            splits[source.name] = {"held_out": source.held_out, "cleaning": counts}
        clock.lap("read_and_clean")
        train = texts[TRAIN_SPLIT]
        if train.num_rows == 0:
            raise UserError("the training split is empty after cleaning")
        _status(
            f"training {request.wordpieces.model_type} wordpieces "
            f"({request.wordpieces.vocab_size}) on {train.num_rows:,} pairs"
        )
        wordpieces = Wordpieces.from_bytes(train_wordpieces(train, request.wordpieces))
        wordpieces.save(partial / WORDPIECES_NAME)
        clock.lap("wordpieces")
        for name, text in texts.items():
            encoded = encode_split(text, wordpieces, _processes(text.num_rows, num_proc), name)
            encoded.save_to_disk(str(partial / name))
            splits[name].update(_statistics(encoded))
        del texts, train, encoded
        shutil.rmtree(work, ignore_errors=True)
        clock.lap("encode_and_write")
        manifest = new_manifest(
            "translation",
            VERSIONED_PACKAGES,
            format=FORMAT_VERSION,
            corpus=request.corpus,
            src_lang=request.src_lang,
            tgt_lang=request.tgt_lang,
            splits=splits,
            sources=described,
            cleaning=request.cleaning.to_dict(),
            wordpieces={
                **request.wordpieces.trainer_options(),
                "trained_on": TRAIN_SPLIT,
                "shared": True,
            },
            errors=request.errors,
            command=command,
            fingerprint=fingerprint,
            seconds=clock.laps,
        )
        write_manifest(partial, manifest)
    return manifest


class _Stopwatch:
    """Seconds per stage, and in total, for the manifest and the summary."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self.last, 2)
        self.laps["total"] = round(now - self.started, 2)
        self.last = now


def _statistics(encoded: datasets.Dataset) -> dict:
    src_len = encoded.data.column("src_len").to_numpy()
    tgt_len = encoded.data.column("tgt_len").to_numpy()
    return {
        "pairs": encoded.num_rows,
        "src_tokens": int(src_len.sum()),
        "tgt_tokens": int(tgt_len.sum()),
        "src_max_len": int(src_len.max(initial=0)),
        "tgt_max_len": int(tgt_len.max(initial=0)),
    }


def summary(manifest: dict, out: Path, reused: bool = False) -> str:
    """One screen: what was built, each split's size, and what cleaning did to the train split."""
    pair = f"{manifest['src_lang']}-{manifest['tgt_lang']}"
    seconds = manifest["seconds"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total")
    verb = "Up to date (reused)" if reused else f"Prepared in {seconds['total']:.1f} s ({stages})"
    pieces = manifest["wordpieces"]
    lines = [
        f"{verb}: {manifest['corpus']} {pair} -> {out}",
        f"wordpieces: {pieces['model_type']}, {pieces['vocab_size']} pieces shared by "
        f"{pair}, byte fallback, trained on {TRAIN_SPLIT}",
        "",
        f"{'split':<20} {'pairs':>10} {'src tokens':>12} {'tgt tokens':>12} "
        f"{'src max':>8} {'tgt max':>8}",
    ]
    for name, split in manifest["splits"].items():
        lines.append(
            f"{name:<20} {split['pairs']:>10,} {split['src_tokens']:>12,} "
            f"{split['tgt_tokens']:>12,} {split['src_max_len']:>8} {split['tgt_max_len']:>8}"
            + ("   (verbatim)" if split["held_out"] else "")
        )
    lines += ["", f"cleaning of {TRAIN_SPLIT}:"]
    for step in manifest["splits"][TRAIN_SPLIT]["cleaning"]:
        if "changed" in step:
            detail = f"{step['changed']:,} changed"
        elif "dropped" in step:
            detail = f"{step['dropped']:,} dropped"
        else:
            detail = ""
        lines.append(f"  {step['step']:<14} {detail:>16}   -> {step['pairs']:,} pairs")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.vocab_size <= 0 or args.max_words <= 0 or args.max_ratio < 1 or args.num_proc < 1:
        raise UserError("--vocab-size, --max-words, --num-proc must be positive, --max-ratio >= 1")
    request = Request(
        corpus=args.corpus,
        src_lang=args.src,
        tgt_lang=args.tgt,
        errors=args.errors,
        cleaning=CleaningConfig(
            max_words=args.max_words, max_ratio=args.max_ratio, dedupe=not args.no_dedupe
        ),
        wordpieces=WordpieceConfig(
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            max_sentences=args.max_sentences,
        ),
    )
    sources = resolve(args.corpus, args.src, args.tgt, args.data_dir, args.hub_repo, args.split)
    _status("checking sources")
    described = {source.name: source.origin.describe() for source in sources}
    fingerprint = request.fingerprint(_source_entries(sources, described))
    out: Path = args.out
    existing = None if args.force else _reusable(out, fingerprint)
    if existing is not None:
        print(summary(existing.manifest, out, reused=True))
        return 0
    _check_out(out)
    command = shlex.join(["nmt", "prep", "translation", *argv])
    manifest = prepare(request, sources, described, out, args.num_proc, command)
    print(summary(manifest, out))
    return 0
