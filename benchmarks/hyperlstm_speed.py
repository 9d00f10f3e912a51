"""Forward+backward time of the HyperLSTM layer against torch.nn.LSTM, in the same process.

Sizes of the HyperNetworks NMT setting at benchmark scale: hidden 512, hyper 128, N_z 32,
input 256, batch 64, length 40, two threads. Prints median times and ratios to nn.LSTM for the
fused C++ kernels and the eager path (and the fused layer without its input-major weight
copies, ``W.T``), parameter counts, the time of one decoding step
(``step()`` without autograd) at small batches, and (with --profile) where the fused
ln_hyperlstm's time goes. Each figure is the median over interleaved rounds; with --rounds the
per-round ratios are printed too, to show the spread on a busy machine. The page faults column
counts the minor page faults of one forward+backward (new memory the process touches: a
deterministic cost that timing on a noisy machine hides). ``--clock cpu`` times
the process's CPU time instead of wall time: on a machine shared with other jobs it leaves out
the time spent waiting for a core (it still includes their effect on the caches).

    python benchmarks/hyperlstm_speed.py [--repeats 10] [--rounds 3] [--threads 2] [--compiled]
        [--clock wall|cpu] [--profile]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from weight_layout import transposed_products

from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer

INPUT, HIDDEN, HYPER, N_Z, BATCH, LENGTH, THREADS = 256, 512, 128, 32, 64, 40, 2
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]
TRANSPOSED = "ln_hyperlstm (fused, W.T)"  # the fused layer without input-major weight copies


def fwd_bwd(module: nn.Module, transposed: bool = False) -> Callable[[torch.Tensor], None]:
    """Forward and backward of ``module``; ``transposed``: its step products on (out, in)
    weights instead of input-major copies (``weight_layout.py``)."""

    def run(x: torch.Tensor) -> None:
        with transposed_products(transposed):
            outputs = module(x)[0]
            outputs.sum().backward()

    return run


def median_ms(
    run: Callable[[torch.Tensor], None], x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """The median time of ``run`` in ms, and its minor page faults per call."""
    run(x)  # warm-up (and compilation)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = clock()
        run(x)
        times.append(clock() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return 1000 * statistics.median(times), faults / repeats


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hyper_layer(cell: str, compile: bool = False, fused: bool = True) -> RecurrentLayer:
    config = RecurrentConfig(cell, HIDDEN, HYPER, N_Z, compile=compile, fused_kernels=fused)
    return RecurrentLayer(INPUT, config)


def step_ms(layer: nn.Module, batch: int, steps: int) -> float:
    """Milliseconds per decoding step (no autograd), median over ``steps`` steps."""
    x = torch.randn(batch, INPUT)
    times = []
    with torch.no_grad():
        state = None
        for _ in range(steps + 1):
            start = clock()
            _, state = layer.step(x, state)
            times.append(clock() - start)
    return 1000 * statistics.median(times[1:])


def decoding_steps(rounds: int, steps: int) -> None:
    """One step of each layer at decoding batches (beam 5 x 1 sentence, x 8, and 64)."""
    torch.manual_seed(0)
    fused = hyper_layer("ln_hyperlstm")
    eager = hyper_layer("ln_hyperlstm", fused=False)
    eager.load_state_dict(fused.state_dict())
    lstm = hyper_layer("lstm")
    print(f"\none decoding step, ms (median of {steps} steps, median of {rounds} rounds)")
    print(f"{'batch':>5} {'lstm':>7} {'eager':>7} {'fused':>7} {'eager/fused':>11}")
    for batch in (5, 40, 64):
        times = {name: [] for name in ("lstm", "eager", "fused")}
        for _ in range(rounds):
            for name, layer in (("lstm", lstm), ("eager", eager), ("fused", fused)):
                times[name].append(step_ms(layer, batch, steps))
        lstm_ms, eager_ms, fused_ms = (statistics.median(times[k]) for k in times)
        print(
            f"{batch:>5} {lstm_ms:7.3f} {eager_ms:7.3f} {fused_ms:7.3f} {eager_ms / fused_ms:11.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--step-count", type=int, default=200, help="decoding steps timed")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile paths")
    parser.add_argument("--profile", action="store_true", help="print the top operators")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, LENGTH, INPUT)
    print(
        f"batch {BATCH}, length {LENGTH}, input {INPUT}, hidden {HIDDEN}, hyper {HYPER}, "
        f"N_z {N_Z}, {torch.get_num_threads()} threads, median of {args.repeats}, "
        f"{args.clock} clock"
    )
    baseline = nn.LSTM(INPUT, HIDDEN, batch_first=True)
    candidates = {
        "nn.LSTM": baseline,
        "ln_lstm": hyper_layer("ln_lstm"),
        "hyperlstm (eager)": hyper_layer("hyperlstm", fused=False),
        "ln_hyperlstm (eager)": hyper_layer("ln_hyperlstm", fused=False),
        "hyperlstm (fused)": hyper_layer("hyperlstm"),
        "ln_hyperlstm (fused)": hyper_layer("ln_hyperlstm"),
        TRANSPOSED: hyper_layer("ln_hyperlstm"),
    }
    if args.compiled:
        candidates["hyperlstm (compiled)"] = hyper_layer("hyperlstm", compile=True)
        candidates["ln_hyperlstm (compiled)"] = hyper_layer("ln_hyperlstm", compile=True)
    # interleave rounds so that load from other processes hits every candidate alike
    rounds = {name: [] for name in candidates}
    faults = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, module in candidates.items():
            run = fwd_bwd(module, transposed=name == TRANSPOSED)
            ms, round_faults = median_ms(run, x, args.repeats)
            rounds[name].append(ms)
            faults[name].append(round_faults)
    base = statistics.median(rounds["nn.LSTM"])
    print(
        f"{'layer':26s} {'fwd+bwd ms':>10s} {'x nn.LSTM':>9s} {'per round':>20s} "
        f"{'parameters':>11s} {'page faults':>11s}"
    )
    for name, module in candidates.items():
        ms = statistics.median(rounds[name])
        per_round = " ".join(
            f"{m / b:.2f}" for m, b in zip(rounds[name], rounds["nn.LSTM"], strict=True)
        )
        print(
            f"{name:26s} {ms:10.1f} {ms / base:9.2f} {per_round:>20s} "
            f"{parameter_count(module):11,d} {statistics.median(faults[name]):11,.0f}"
        )
    decoding_steps(args.rounds, args.step_count)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        run = fwd_bwd(candidates["ln_hyperlstm (fused)"])
        run(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
