"""``nmt export CHECKPOINT OUT_DIR``: a training checkpoint as a self-contained serving bundle.

    nmt export runs/multi30k_hyperlstm/checkpoints/best-step=2200.ckpt bundles/en-de
    nmt export runs/mnist_hyperconvnet/checkpoints/best.ckpt bundles/mnist --quantize int8
    nmt serve --translate bundles/en-de --classify bundles/mnist

The task (translation, classify, char_lm) comes from the checkpoint. A translation bundle keeps
default decoding options, which ``--beam-size``, ``--alpha`` and ``--beta`` set (a request
may still override them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmt.bundle import QUANTIZATIONS, export_checkpoint, read_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt export", description="Export a training checkpoint as a serving bundle."
    )
    parser.add_argument("checkpoint", type=Path, help="a HyperNMT training checkpoint (.ckpt)")
    parser.add_argument(
        "out_dir", type=Path, help="the bundle directory to create (must not exist)"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="store the linear layers as int8 (dynamic quantisation, for CPU serving)",
    )
    decoding = parser.add_argument_group("default decoding options (translation bundles)")
    decoding.add_argument("--beam-size", type=int, help="1 is greedy decoding (default 5)")
    decoding.add_argument("--alpha", type=float, help="length penalty exponent (default 0.6)")
    decoding.add_argument("--beta", type=float, help="coverage penalty weight (default 0.0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    decoding = None
    given = {"beam_size": args.beam_size, "alpha": args.alpha, "beta": args.beta}
    given = {name: value for name, value in given.items() if value is not None}
    if given:
        from nmt.decoding import DecodingOptions

        decoding = DecodingOptions(**given)
    out = export_checkpoint(args.checkpoint, args.out_dir, args.quantize, decoding)
    manifest = read_manifest(out)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    quantized = f", {manifest['quantize']}" if manifest["quantize"] else ""
    print(f"{out}: {manifest['task']} bundle, {size / 1e6:.2f} MB{quantized}")
    return 0
