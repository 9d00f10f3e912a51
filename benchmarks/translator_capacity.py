"""What a worker's capacity costs: memory per live cost unit, and the decoding rate.

For each ``--live-cost`` cap, a fresh process (one thread, like a server worker) translates a
document of Multi30k test sentences through the translator's open batch with that cap, and
reports its peak resident memory above the model's own, the highest live cost it held, and
the cost units decoded per second (a request's cost over its time: what ``nmt serve
--decode-rate`` assumes when it refuses up front what could not finish in time). Printed per
cap, with memory per cost unit relative to the first cap's.

    python benchmarks/translator_capacity.py --bundle bundles/en-de --live-cost 10000 40000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from serve_load import DEFAULT_SENTENCES, read_sentences


def measure(bundle: str, live_cost: int, sentences: int, beam_size: int, alignment: bool) -> dict:
    import torch

    from nmt.bundle import load_bundle
    from nmt.decoding.translator import Translator, TranslatorConfig

    torch.set_num_threads(1)
    loaded = load_bundle(bundle)
    texts = read_sentences(DEFAULT_SENTENCES)[:sentences]
    translator = Translator(
        loaded.model, loaded.wordpieces, loaded.decoding, TranslatorConfig(max_live_cost=live_cost)
    )
    options = translator.options(beam_size=beam_size, alignment=alignment)
    translator.translate(texts[:2], options, batch_size=2)  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cost = translator.add("document", translator.prepare(texts=texts), options)
    highest, start = 0, time.perf_counter()
    while len(translator):
        translator.step()
        highest = max(highest, translator.stats()["live_cost"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cost": cost, "highest": highest, "extra": peak - base, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--live-cost", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--alignment", action="store_true")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's measurement
    args = parser.parse_args(argv)
    if args.one is not None:
        print(
            json.dumps(
                measure(args.bundle, args.one, args.sentences, args.beam_size, args.alignment)
            )
        )
        return 0
    print(
        f"{args.sentences} Multi30k test sentences, beam {args.beam_size}, "
        f"alignment {args.alignment}, one thread per process"
    )
    print(
        f"{'cap':>7} {'held':>7} {'extra MiB':>9} {'bytes/unit':>10} {'x first':>7} {'units/s':>8}"
    )
    first = None
    for cap in args.live_cost:
        command = [sys.executable, str(Path(__file__)), "--bundle", args.bundle, "--one", str(cap)]
        command += ["--sentences", str(args.sentences), "--beam-size", str(args.beam_size)]
        command += ["--alignment"] if args.alignment else []
        result = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout
        )
        per_unit = result["extra"] / max(result["highest"], 1)
        first = first or per_unit
        print(
            f"{cap:>7} {result['highest']:>7} {result['extra'] / 2**20:>9.0f} {per_unit:>10.0f} "
            f"{per_unit / first:>7.2f} {result['cost'] / result['seconds']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
