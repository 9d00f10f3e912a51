"""What int8 dynamic quantisation costs and gains: BLEU and decoding speed, float vs int8.

Loads one translation bundle twice, as stored and with its linear layers quantised to int8
(``load_bundle(..., quantize="int8")``; the same modules ``nmt export --quantize int8``
stores), decodes the same Multi30k test sentences with the bundle's default beam settings in
this process, and prints sacreBLEU for each (with its signature), the BLEU difference, and the
decoding time ratio.

    python benchmarks/bundle_int8.py bundles/en-de --sentences 500
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import sacrebleu
import torch

from nmt.bundle import load_bundle
from nmt.decoding import translate_texts

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
BATCH_SIZE = 64


def read_lines(path: Path, count: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file][:count]


def decode(bundle, sources: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    with torch.inference_mode():
        found = translate_texts(
            bundle.model, bundle.wordpieces, sources, bundle.decoding, BATCH_SIZE
        )
    seconds = time.perf_counter() - start
    return [bundle.wordpieces.decode(hypotheses[0].tokens) for hypotheses in found], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a float translation bundle")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    sources = read_lines(MULTI30K / f"{args.split}.{args.src}.gz", args.sentences)
    references = read_lines(MULTI30K / f"{args.split}.{args.tgt}.gz", args.sentences)
    results = {}
    for name, quantize in (("float32", None), ("int8", "int8")):
        bundle = load_bundle(args.bundle, quantize=quantize)
        hypotheses, seconds = decode(bundle, sources)
        bleu = sacrebleu.metrics.BLEU()
        score = bleu.corpus_score(hypotheses, [references])
        results[name] = (score.score, seconds)
        print(f"{name:>7}: BLEU {score.score:.2f}  {seconds:.1f} s  ({bleu.get_signature()})")
    (float_bleu, float_seconds), (int8_bleu, int8_seconds) = results["float32"], results["int8"]
    print(
        f"int8 - float32: {int8_bleu - float_bleu:+.2f} BLEU; "
        f"int8 decodes in {int8_seconds / float_seconds:.2f}x the float time "
        f"({len(sources)} sentences of {args.split}, {args.src}->{args.tgt})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
