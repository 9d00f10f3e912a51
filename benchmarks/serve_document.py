"""A document through ``POST /translate`` against the same sentences in one `nmt translate` batch.

The document (about ``--words`` words) is made of Multi30k test sentences in paragraphs of five,
separated by blank lines. The baseline translates the same sentences in this process with the
translator `nmt translate` uses, all in one batch (``--batch-size`` = the number of sentences),
on one thread like a server worker. Printed: both times (best of ``--repeats``) and their
ratio; the server must also give the same translations. Target: within 1.3x.

    python benchmarks/serve_document.py --translate bundles/en-de
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests
from serve_load import DEFAULT_SENTENCES, read_sentences, started_server

PER_PARAGRAPH = 5


def build_document(sentences: list[str], words: int) -> tuple[str, list[str]]:
    chosen, count = [], 0
    for sentence in sentences:
        if count >= words:
            break
        chosen.append(sentence)
        count += len(sentence.split())
    paragraphs = [
        " ".join(chosen[i : i + PER_PARAGRAPH]) for i in range(0, len(chosen), PER_PARAGRAPH)
    ]
    return "\n\n".join(paragraphs) + "\n", chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--translate", metavar="BUNDLE", required=True)
    parser.add_argument("--serve-args", default="", help="extra `nmt serve` options")
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES)
    args = parser.parse_args(argv)
    sentences = [s for s in read_sentences(args.sentences) if s.endswith((".", "!", "?"))]
    document, chosen = build_document(sentences, args.words)

    import torch

    from nmt.bundle import load_bundle
    from nmt.decoding.translator import Translator

    torch.set_num_threads(1)
    bundle = load_bundle(args.translate)
    translator = Translator(bundle.model, bundle.wordpieces, bundle.decoding)
    options = translator.options()
    batch_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        expected = translator.translate(chosen, options, batch_size=len(chosen))
        batch_times.append(time.perf_counter() - start)

    with started_server(args.translate, args.serve_args.split()) as url:
        requests.post(f"{url}/translate", json={"text": chosen[0]}, timeout=60)  # warm up
        served_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            answer = requests.post(f"{url}/translate", json={"document": document}, timeout=600)
            served_times.append(time.perf_counter() - start)
            answer.raise_for_status()
    served = [t["text"] for t in answer.json()["translations"]]
    same = served == [t.text for t in expected]
    batch, endpoint = min(batch_times), min(served_times)
    print(
        f"document: {len(document):,} characters, {sum(len(s.split()) for s in chosen):,} words, "
        f"{len(chosen)} sentences; beam {options.beam_size}"
    )
    print(f"one `nmt translate` batch: {batch:.2f} s; through /translate: {endpoint:.2f} s")
    print(f"ratio {endpoint / batch:.2f}x (target <= 1.3x); same translations: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
