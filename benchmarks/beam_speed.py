"""Decoding speed: sentences per second with beam 1 (greedy) and beam 5, batch 1 and batch 64.

Decodes Multi30k test_2016_flickr (source side) with ``nmt.decoding.translate_ids`` and prints
sentences/s per setting and the cost of beam 5 relative to greedy at batch 64 (target: at most
2.5x greedy's time). Settings run in alternating rounds, so that a busy machine slows all alike;
each figure is the median over rounds. Batch-1 settings decode only the first
``--batch1-sentences`` sentences (per-sentence speed is what they measure).

With ``--checkpoint`` the trained model decodes with the default options (GNMT alpha 0.6, the
output ends at EOS or at 2 x source + 10). Without one, an untrained model of the size of
configs/multi30k_hyperlstm.yaml decodes exactly ``--fixed-length`` wordpieces per hypothesis
(an untrained model's EOS is arbitrary), so both beams do the same number of steps.

    nmt prep translation --corpus multi30k --src en --tgt de --out data/multi30k.en-de
    python benchmarks/beam_speed.py --checkpoint runs/multi30k_hyperlstm/checkpoints/last.ckpt
    python benchmarks/beam_speed.py            # untrained model of the Multi30k config size
    python benchmarks/beam_speed.py --paths int8 fused eager   # serving int8, fused, eager

With ``--paths fused eager`` every setting runs with the fused C++ step kernels and with the
eager PyTorch step, alternating within each round, and the table adds the time ratio of the
last path to each path per setting. ``int8`` is the server's ``--quantize int8`` model (int8
linear layers and HyperLSTM products, fused kernels): ``--paths int8 fused eager`` compares the
serving path with float decoding before and after the fused kernels. ``transposed`` is the fused
path with every product of a step on the (out, in) weights (x @ W.T, as nn.Linear keeps them)
instead of input-major copies (``nmt/modules/linear.py``): ``--paths fused transposed``
measures what the copies buy. ``--clock cpu`` times the
process's CPU time instead of wall time, which leaves out the waits for a core on a machine
shared with other jobs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from weight_layout import transposed_products

from nmt.bundle import quantize_int8
from nmt.decoding import DecodingOptions, translate_ids
from nmt.modules.hyperlstm import HyperLSTMCell

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "multi30k_hyperlstm.yaml"
SETTINGS = [(1, 1), (5, 1), (1, 64), (5, 64)]  # (beam size, batch size)
PATHS = ("fused", "eager", "int8", "transposed")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def path_model(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """A copy of ``model`` decoding the way ``path`` says: the fused kernels or the eager step
    in every HyperLSTM cell, or the int8 serving model (fused)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, HyperLSTMCell):
            module.fused = path != "eager"
    return quantize_int8(model) if path == "int8" else model


def untrained_model(vocab_size: int):
    import yaml

    from nmt.models.translation import TranslationConfig, TranslationModel

    architecture = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["architecture"]
    architecture["vocab_size"] = vocab_size
    torch.manual_seed(0)
    return TranslationModel(TranslationConfig.from_dict(architecture)).eval()


def profile_beam5(models: dict, sources, base: DecodingOptions) -> None:
    """Where a beam-5 decode at batch 1 spends its time, for each step path."""
    from torch.profiler import ProfilerActivity, profile

    options = replace(base, beam_size=5)
    for path, model in models.items():
        with transposed_products(path == "transposed"):
            translate_ids(model, sources[:1], options, batch_size=1)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                translate_ids(model, sources, options, batch_size=1)
        print(f"\n{path}: beam 5, batch 1, {len(sources)} sentences")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained translation checkpoint")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "multi30k.en-de")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--batch1-sentences", type=int, default=100)
    parser.add_argument("--limit", type=int, help="decode only the first N sentences")
    parser.add_argument("--fixed-length", type=int, default=20, help="untrained model only")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["fused"])
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument(
        "--profile", action="store_true", help="top operators of beam 5, batch 1, per path"
    )
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)

    from nmt.corpus import PreparedCorpus

    corpus = PreparedCorpus(args.corpus)
    texts = list(corpus.split(args.split)["src_text"])[: args.limit]
    if args.checkpoint is not None:
        from nmt.checkpoints import load_translation

        model, wordpieces = load_translation(args.checkpoint)
        base = DecodingOptions()
        what = f"trained checkpoint {args.checkpoint}"
    else:
        wordpieces = corpus.wordpieces
        model = untrained_model(wordpieces.vocab_size)
        base = DecodingOptions(min_length=args.fixed_length, max_length=args.fixed_length)
        what = f"untrained model of {CONFIG.name}, {args.fixed_length} wordpieces per output"
    sources = [wordpieces.encode(text) for text in texts]
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{what}; {parameters / 1e6:.1f}M parameters; {len(sources)} sentences of "
        f"{args.split}; {args.threads} thread(s); {args.clock} clock; torch {torch.__version__}"
    )

    models = {path: path_model(model, path) for path in args.paths}
    if args.profile:
        profile_beam5(models, sources[: args.batch1_sentences], base)
        return
    runs = [(path, setting) for setting in SETTINGS for path in args.paths]
    seconds: dict[tuple[str, tuple[int, int]], list[float]] = {run: [] for run in runs}
    counts, lengths = {}, {}
    for _ in range(args.rounds):
        for path, (beam, batch) in runs:
            model = models[path]
            chosen = sources[: args.batch1_sentences] if batch == 1 else sources
            options = replace(base, beam_size=beam)
            with transposed_products(path == "transposed"):
                start = clock()
                found = translate_ids(model, chosen, options, batch_size=batch)
                seconds[(path, (beam, batch))].append(clock() - start)
            counts[(beam, batch)] = len(chosen)
            lengths[(path, (beam, batch))] = statistics.mean(len(h[0].tokens) for h in found)

    compare = len(args.paths) > 1
    print(
        f"{'path':>10} {'beam':>4} {'batch':>5} {'sentences':>9} {'out len':>7} {'seconds':>8} "
        f"{'sent/s':>8}" + (f" {'x ' + args.paths[-1]:>8}" if compare else "")
    )
    for path, setting in runs:
        median = statistics.median(seconds[(path, setting)])
        line = (
            f"{path:>10} {setting[0]:>4} {setting[1]:>5} {counts[setting]:>9} "
            f"{lengths[(path, setting)]:>7.1f} {median:>8.2f} {counts[setting] / median:>8.1f}"
        )
        if compare:
            other = statistics.median(seconds[(args.paths[-1], setting)])
            line += f" {other / median:>8.2f}"
        print(line)
    for path in args.paths:
        for batch in (1, 64):
            beam5 = statistics.median(seconds[(path, (5, batch))])
            ratio = beam5 / statistics.median(seconds[(path, (1, batch))])
            print(
                f"{path}: beam 5 / greedy time at batch {batch}: {ratio:.2f}x"
                + ("  (target <= 2.5x)" if batch == 64 else "")
            )


if __name__ == "__main__":
    main()
