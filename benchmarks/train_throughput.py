"""Training throughput (target tokens per second) of the Multi30k HyperLSTM and LSTM configs.

Both configs train in this one process through the same Lightning Trainer the ``nmt fit`` command
builds, on the prepared corpus their YAML names, in alternating rounds so that a busy machine
slows both alike; the ratio is what to compare. Each round skips a few warm-up steps, then times
a run of steps end to end (data loading, forward, backward, clipping, Adam).

    nmt prep translation --corpus multi30k --src en --tgt de --out data/multi30k.en-de
    python benchmarks/train_throughput.py [--steps 30] [--warmup 3] [--rounds 2] [--threads 1]
        [--eager]   # also the HyperLSTM config on the eager step path (fused/eager ratio)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "hyperlstm": REPO / "configs" / "multi30k_hyperlstm.yaml",
    "lstm": REPO / "configs" / "multi30k_lstm.yaml",
}
# the HyperLSTM config again with the eager step path instead of the fused kernels (--eager)
EAGER = "hyper-eager"
EAGER_OVERRIDE = ["--model.architecture.recurrent.fused_kernels", "false"]


def _throughput_callback(warmup: int):
    import lightning.pytorch as pl

    from nmt.special_tokens import PAD_ID

    class TargetTokensPerSecond(pl.Callback):
        """Counts target tokens from the first step after ``warmup`` to the last."""

        def __init__(self) -> None:
            self.tokens = 0
            self.start: float | None = None
            self.end: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()
            if trainer.global_step >= warmup:
                self.tokens += int((batch["tgt_out"] != PAD_ID).sum())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.end = time.perf_counter()

        @property
        def value(self) -> float:
            assert self.start is not None and self.end is not None, "no step was timed"
            return self.tokens / (self.end - self.start)

    return TargetTokensPerSecond()


def measure(
    config: Path, steps: int, warmup: int, overrides: list[str] | None = None
) -> tuple[float, int]:
    """Target tokens/s of ``steps`` timed training steps, and the model's parameter count."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from nmt.training.cli import TrainingCLI

    with tempfile.TemporaryDirectory() as scratch:
        cli = TrainingCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            args=[
                "--config", str(config),
                "--trainer.max_steps", str(warmup + steps),
                "--trainer.max_time", "null",
                "--trainer.limit_val_batches", "0",
                "--trainer.logger", "false",
                "--trainer.default_root_dir", scratch,  # LightningCLI saves its config here
                "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false",
                "--checkpoint.dirpath", f"{scratch}/checkpoints",
                "--checkpoint.monitor", "train/loss",
                "--checkpoint.mode", "min",
                *(overrides or []),
            ],
        )  # fmt: skip
        callback = _throughput_callback(warmup)
        cli.trainer.callbacks.append(callback)
        cli.trainer.fit(cli.model, cli.datamodule)
    parameters = sum(p.numel() for p in cli.model.parameters())
    return callback.value, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (configs: 1)")
    parser.add_argument(
        "--eager", action="store_true", help="also the HyperLSTM config on the eager step path"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # LightningCLI is given its arguments here, not this script's command line.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")

    configs = dict(CONFIGS, **({EAGER: CONFIGS["hyperlstm"]} if args.eager else {}))
    rates: dict[str, list[float]] = {name: [] for name in configs}
    parameters: dict[str, int] = {}
    for round_index in range(args.rounds):
        order = list(configs) if round_index % 2 == 0 else list(reversed(configs))
        for name in order:
            overrides = EAGER_OVERRIDE if name == EAGER else None
            rate, parameters[name] = measure(configs[name], args.steps, args.warmup, overrides)
            rates[name].append(rate)
            print(f"round {round_index + 1} {name:>9}: {rate:8.1f} target tokens/s", flush=True)

    print(f"\n{args.steps} timed steps x {args.rounds} rounds, {args.threads} thread(s)")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, config in configs.items():
        print(
            f"{name:>9}: {median[name]:8.1f} target tokens/s (median), "
            f"{parameters[name] / 1e6:.2f}M parameters  [{config.relative_to(REPO)}]"
        )
    print(f"ratio hyperlstm/lstm throughput: {median['hyperlstm'] / median['lstm']:.2f}")
    if args.eager:
        print(f"ratio hyperlstm fused/eager throughput: {median['hyperlstm'] / median[EAGER]:.2f}")


if __name__ == "__main__":
    main()
