"""x @ W.T on an (out, in) weight against x @ W on an input-major (in, out) copy, same process.

Why the HyperLSTM keeps input-major copies of its per-step weights (``input_major`` in
``nmt/modules/hyperlstm.py``): a step multiplies a few rows by a large weight, and at few rows
BLAS runs the two layouts at different speeds. Prints, for the per-step products of the
benchmark layer (``hyperlstm_speed.py``) and of the Multi30k model's decoder, the median time
of each layout over interleaved rounds and their ratio.

    python benchmarks/weight_layout.py [--threads 1] [--rounds 5] [--repeats 200]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from nmt.models import translation
from nmt.modules import hyperlstm

# (rows, in, out, what): a training step at batch 64, decoding at beam 5 x 1 and x 8 sentences
SHAPES = (
    (64, 512, 2560, "benchmark layer: h @ [hyper W_h; W_h], batch 64"),
    (5, 512, 2560, "benchmark layer, beam 5"),
    (55, 256, 1280, "Multi30k ln_hyperlstm 256: recurrent product, a training batch"),
    (5, 256, 1280, "Multi30k ln_hyperlstm 256: recurrent product, beam 5"),
    (40, 256, 1280, "Multi30k ln_hyperlstm 256: recurrent product, beam 5 x 8"),
)


@contextlib.contextmanager
def transposed_products(on: bool = True):
    """While on: the decoder's linear layers and the HyperLSTM's step products multiply by their
    (out, in) weights (x @ W.T), as before the input-major copies; the baseline that
    ``beam_speed.py`` and ``hyperlstm_speed.py`` time those copies against."""
    if not on:
        yield
        return
    saved = translation.linear, hyperlstm.input_major
    translation.linear = lambda layer, x: layer(x)
    hyperlstm.input_major = lambda weight: weight.t()
    try:
        yield
    finally:
        translation.linear, hyperlstm.input_major = saved


def median_ms(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def layout_ms(rows: int, inputs: int, outputs: int, rounds: int, repeats: int):
    """Median ms of x @ W.T and of x @ W (input-major copy), interleaved over rounds."""
    x = torch.randn(rows, inputs)
    weight = torch.randn(outputs, inputs)  # as nn.Linear and the cells keep it
    weight_t = weight.t().contiguous()  # input-major
    torch.testing.assert_close(x @ weight.t(), x @ weight_t, rtol=1e-4, atol=1e-3)
    transposed, input_major = [], []
    for _ in range(rounds):
        transposed.append(median_ms(lambda: x @ weight.t(), repeats))
        input_major.append(median_ms(lambda: x @ weight_t, repeats))
    return statistics.median(transposed), statistics.median(input_major)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=200, help="products timed per round")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, median of {args.repeats} x {args.rounds} rounds")
    print(f"{'rows':>4} {'in':>4} {'out':>5} {'x @ W.T ms':>10} {'x @ W ms':>8} {'ratio':>5}  what")
    for rows, inputs, outputs, what in SHAPES:
        a, b = layout_ms(rows, inputs, outputs, args.rounds, args.repeats)
        print(f"{rows:>4} {inputs:>4} {outputs:>5} {a:10.3f} {b:8.3f} {a / b:5.2f}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
