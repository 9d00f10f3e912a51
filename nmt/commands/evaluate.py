"""``nmt evaluate``: translate a test set and score it with sacreBLEU (BLEU and chrF).

    nmt evaluate --checkpoint runs/x/checkpoints/last.ckpt --corpus data/multi30k.en-de \\
        --split test_2016_flickr --beam-size 5
    nmt evaluate --checkpoint last.ckpt --source test.en --reference test.de

The hypotheses are detokenised text scored against the raw references, so the BLEU equals
what ``sacrebleu REFERENCE -i HYPOTHESES`` prints for the written hypothesis file. Writes
``<name>.hyp`` (one translation a line) and ``<name>.json`` (scores with their signatures,
decoding options, the model's sha256, time and speed) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from nmt.commands.translate import (
    add_decoding_arguments,
    add_model_source_arguments,
    decoding_options,
    load_model_source,
    read_lines,
    set_threads,
    translate_lines,
    translator_for,
)
from nmt.errors import UserError
from nmt.io import write_text

DEFAULT_SPLIT = "test_2016_flickr"
DEFAULT_OUT_DIR = Path("evaluation")


@dataclass
class TestSet:
    name: str  # names the output files
    sources: list[str]
    references: list[str]
    target_lang: str | None  # picks sacreBLEU's tokeniser for e.g. zh, ja, ko
    description: dict = field(default_factory=dict)


def load_test_set(args: argparse.Namespace) -> TestSet:
    """A prepared split (raw source and reference text) or a pair of aligned text files."""
    files = args.source is not None or args.reference is not None
    if (args.corpus is None) == (not files):
        raise UserError("give either --corpus DIR [--split NAME] or --source FILE --reference FILE")
    if args.corpus is not None:
        from nmt.corpus import PreparedCorpus

        corpus = PreparedCorpus(args.corpus)
        split = corpus.split(args.split)
        test_set = TestSet(
            name=args.split,
            sources=list(split["src_text"]),
            references=list(split["tgt_text"]),
            target_lang=args.target_lang or corpus.tgt_lang,
            description={"corpus": str(args.corpus), "split": args.split},
        )
    else:
        if args.source is None or args.reference is None:
            raise UserError("--source and --reference go together")
        test_set = TestSet(
            name=args.source.name.removesuffix(".gz"),
            sources=read_lines(args.source),
            references=read_lines(args.reference),
            target_lang=args.target_lang,
            description={"source": str(args.source), "reference": str(args.reference)},
        )
        if len(test_set.sources) != len(test_set.references):
            raise UserError(
                f"{args.source} has {len(test_set.sources)} lines but {args.reference} has "
                f"{len(test_set.references)}; they must be aligned line by line"
            )
    if args.limit is not None:
        test_set.sources = test_set.sources[: args.limit]
        test_set.references = test_set.references[: args.limit]
    if not test_set.sources:
        raise UserError(f"the test set {test_set.description} has no sentences")
    test_set.description["sentences"] = len(test_set.sources)
    return test_set


def sacrebleu_scores(hypotheses: list[str], references: list[str], target_lang: str | None) -> dict:
    """Corpus BLEU and chrF, each with its signature and sacreBLEU's own one-line summary."""
    from sacrebleu.metrics import BLEU, CHRF

    scores = {}
    for key, metric in (("bleu", BLEU(trg_lang=target_lang or "")), ("chrf", CHRF())):
        result = metric.corpus_score(hypotheses, [references])
        signature = str(metric.get_signature())
        scores[key] = {
            "score": result.score,
            "signature": signature,
            "summary": result.format(signature=signature),
        }
    return scores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt evaluate",
        description="Translate a prepared split or a pair of files and score it with sacreBLEU.",
    )
    add_model_source_arguments(parser)
    data = parser.add_argument_group("test set: a prepared split, or a pair of files")
    data.add_argument("--corpus", type=Path, help="a directory written by `nmt prep translation`")
    data.add_argument("--split", default=DEFAULT_SPLIT, help=f"default {DEFAULT_SPLIT}")
    data.add_argument("--source", type=Path, help="source sentences, one a line (.gz allowed)")
    data.add_argument("--reference", type=Path, help="reference translations, aligned")
    data.add_argument(
        "--target-lang", help="language of the references (default: the corpus's target)"
    )
    data.add_argument("--limit", type=int, help="only the first N sentences")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"where <name>.hyp and <name>.json go (default {DEFAULT_OUT_DIR}/)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decoding_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args)
    test_set = load_test_set(args)
    source = load_model_source(args)
    options = decoding_options(args, source)

    import torch

    start = time.perf_counter()
    results = translate_lines(
        translator_for(source),
        test_set.sources,
        options,
        args.batch_size,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    hypotheses = [translation.text for translation in results]
    scores = sacrebleu_scores(hypotheses, test_set.references, test_set.target_lang)

    hypothesis_path = args.out_dir / f"{test_set.name}.hyp"
    report_path = args.out_dir / f"{test_set.name}.json"
    report = {
        "model": source.description,
        "test_set": test_set.description,
        "hypotheses": str(hypothesis_path),
        **scores,
        "decoding": options.to_dict(),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "sentences_per_second": len(hypotheses) / max(seconds, 1e-9),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: metadata.version(name) for name in ("hypernmt", "torch", "sacrebleu")},
    }
    write_text(hypothesis_path, "".join(f"{line}\n" for line in hypotheses))
    write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print(scores["bleu"]["summary"])
    print(scores["chrf"]["summary"])
    print(
        f"{len(hypotheses)} sentences in {seconds:.1f} s ({report['sentences_per_second']:.1f}/s); "
        f"wrote {hypothesis_path} and {report_path}"
    )
    return 0
