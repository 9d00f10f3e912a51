"""``nmt plot``: training curves from CSV logs, and the paper's pictures, as PNG files.

    nmt plot curves runs/multi30k_hyperlstm/logs runs/multi30k_lstm/logs --out curves.png
    nmt plot kernels runs/mnist_convnet/checkpoints/best.ckpt ... --out kernels.png
    nmt plot scalings runs/ptb_char_hyperlstm/checkpoints/best.ckpt --text "..." --out dz.png

``curves`` reads every ``version_*/metrics.csv`` a run's CSVLogger wrote (one per start or
resume), joins them by step, and draws one panel per metric with one line per run.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from nmt.errors import UserError

DEFAULT_METRICS = ("train/loss", "val/loss", "val/bleu", "lr")
METRICS_FILE = "metrics.csv"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def read_metrics(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] over all of a run's CSV logs; a resumed step keeps the last."""
    files = sorted(
        log_dir.glob(f"**/{METRICS_FILE}"), key=lambda p: (len(p.parts), _version(p.parent), p)
    )
    if not files:
        raise UserError(f"{log_dir}: no {METRICS_FILE} below it (a CSVLogger's save_dir/name)")
    series: dict[str, dict[int, float]] = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as file:
            for line, row in enumerate(csv.DictReader(file), start=2):
                try:
                    step = int(row["step"])
                except (KeyError, TypeError, ValueError):
                    raise UserError(f"{path}, line {line}: no integer 'step' column") from None
                for name, text in row.items():
                    if name in ("step", "epoch") or text in ("", None):
                        continue
                    try:
                        series.setdefault(name, {})[step] = float(text)
                    except ValueError:
                        message = f"{path}, line {line}: {name}={text!r} is not a number"
                        raise UserError(message) from None
    return {name: sorted(points.items()) for name, points in series.items()}


def _version(directory: Path) -> int:
    _, _, number = directory.name.partition("version_")
    return int(number) if number.isdigit() else -1


def plot_curves(log_dirs: list[Path], out: Path, metrics: list[str]) -> Path:
    """One panel per metric, one line per run (named by the run's directory)."""
    from matplotlib.figure import Figure

    from nmt.plots.small_tasks import save_png

    runs = {_run_name(d): read_metrics(d) for d in log_dirs}
    present = [m for m in metrics if any(m in series for series in runs.values())]
    if not present:
        found = sorted({m for series in runs.values() for m in series})
        raise UserError(f"none of the metrics {', '.join(metrics)} in the logs; found {found}")
    columns = min(2, len(present))
    rows = math.ceil(len(present) / columns)
    figure = Figure(figsize=(6 * columns, 3.5 * rows))
    for index, metric in enumerate(present, start=1):
        axes = figure.add_subplot(rows, columns, index)
        for color, (name, series) in enumerate(runs.items()):
            if metric in series:
                steps, values = zip(*series[metric], strict=True)
                marker = "." if len(steps) < 30 else None
                axes.plot(steps, values, label=name, color=f"C{color}", marker=marker)
        axes.set_title(metric)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    return save_png(figure, out)


def _run_name(log_dir: Path) -> str:
    """runs/<name>/logs -> <name>."""
    return log_dir.parent.name if log_dir.name == "logs" else log_dir.name


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="nmt plot", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="picture", required=True, parser_class=_ArgumentParser)
    curves = commands.add_parser("curves", help="training curves from CSVLogger directories")
    curves.add_argument("log_dirs", nargs="+", type=Path, help="e.g. runs/<name>/logs")
    curves.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    curves.add_argument("--out", type=Path, required=True, help="PNG file to write")
    kernels = commands.add_parser("kernels", help="MNIST ConvNet second-layer kernels")
    kernels.add_argument("checkpoints", nargs="+", type=Path)
    kernels.add_argument("--out", type=Path, required=True)
    scalings = commands.add_parser("scalings", help="a character HyperLSTM's d_h(z), d_x(z)")
    scalings.add_argument("checkpoint", type=Path)
    scalings.add_argument("--text", required=True, help="text to run the model over")
    scalings.add_argument("--units", type=int, default=48, help="hidden units to show")
    scalings.add_argument("--layer", type=int, default=0)
    scalings.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.picture == "curves":
        written = plot_curves(args.log_dirs, args.out, args.metrics)
    elif args.picture == "kernels":
        from nmt.plots.small_tasks import plot_kernels

        written = plot_kernels(args.checkpoints, args.out)
    else:
        from nmt.plots.small_tasks import plot_scalings

        written = plot_scalings(args.checkpoint, args.text, args.out, args.units, args.layer)
    print(written)
    return 0
