"""Forward+backward time of the HyperLSTM layer against torch.nn.LSTM, in the same process.

Sizes of the HyperNetworks NMT setting at benchmark scale: hidden 512, hyper 128, N_z 32,
input 256, batch 64, length 40, two threads. Prints median times and ratios to nn.LSTM,
parameter counts, and (with --profile) where the HyperLSTM's time goes.

    python benchmarks/hyperlstm_speed.py [--repeats 10] [--threads 2] [--compiled] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer

INPUT, HIDDEN, HYPER, N_Z, BATCH, LENGTH, THREADS = 256, 512, 128, 32, 64, 40, 2


def fwd_bwd(module: nn.Module) -> Callable[[torch.Tensor], None]:
    def run(x: torch.Tensor) -> None:
        outputs = module(x)[0]
        outputs.sum().backward()

    return run


def median_ms(run: Callable[[torch.Tensor], None], x: torch.Tensor, repeats: int) -> float:
    run(x)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hyper_layer(cell: str, compile: bool) -> RecurrentLayer:
    return RecurrentLayer(INPUT, RecurrentConfig(cell, HIDDEN, HYPER, N_Z, compile=compile))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile paths")
    parser.add_argument("--profile", action="store_true", help="print the top operators")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, LENGTH, INPUT)
    print(
        f"batch {BATCH}, length {LENGTH}, input {INPUT}, hidden {HIDDEN}, hyper {HYPER}, "
        f"N_z {N_Z}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    baseline = nn.LSTM(INPUT, HIDDEN, batch_first=True)
    candidates = {
        "nn.LSTM": baseline,
        "ln_lstm": hyper_layer("ln_lstm", False),
        "hyperlstm": hyper_layer("hyperlstm", False),
        "ln_hyperlstm": hyper_layer("ln_hyperlstm", False),
    }
    if args.compiled:
        candidates["hyperlstm (compiled)"] = hyper_layer("hyperlstm", True)
        candidates["ln_hyperlstm (compiled)"] = hyper_layer("ln_hyperlstm", True)
    # interleave rounds so that load from other processes hits every candidate alike
    rounds = {name: [] for name in candidates}
    for _ in range(3):
        for name, module in candidates.items():
            rounds[name].append(median_ms(fwd_bwd(module), x, args.repeats))
    base = statistics.median(rounds["nn.LSTM"])
    print(f"{'layer':26s} {'fwd+bwd ms':>10s} {'x nn.LSTM':>9s} {'parameters':>11s}")
    for name, module in candidates.items():
        ms = statistics.median(rounds[name])
        print(f"{name:26s} {ms:10.1f} {ms / base:9.2f} {parameter_count(module):11,d}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        run = fwd_bwd(candidates["ln_hyperlstm"])
        run(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
