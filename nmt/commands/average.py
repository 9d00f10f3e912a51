"""``nmt average``: average the parameters of the last N checkpoints into a new checkpoint.

    nmt average runs/x/checkpoints --last 5 --out runs/x/checkpoints/averaged.ckpt

Averaging the weights of the last few checkpoints of a run is a standard, free gain in NMT
(Vaswani et al. 2017; Junczys-Dowmunt et al. 2016). "Last" means the highest training step;
checkpoints of the same step (``last.ckpt`` beside its twin) count once, and earlier averages
are skipped. Floating-point
tensors of ``state_dict`` are averaged (in float64, stored in their own dtype); everything
else (other tensors, optimizer and loop state, HyperNMT's metadata) comes from the newest
checkpoint, so the result loads wherever that one does. The file is written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nmt.checkpoints import CHECKPOINT_KEY, read_checkpoint, save_checkpoint_file
from nmt.errors import UserError

CHECKPOINT_SUFFIX = ".ckpt"
DEFAULT_LAST = 5


def checkpoint_files(paths: list[Path]) -> list[Path]:
    """The given checkpoint files, and every ``*.ckpt`` file directly inside given directories."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and path.suffix != CHECKPOINT_SUFFIX:
            files.extend(sorted(p for p in path.glob(f"*{CHECKPOINT_SUFFIX}") if p.is_file()))
        elif path.is_dir():
            raise UserError(
                f"{path}: a checkpoint directory (DeepSpeed); average single-file .ckpt "
                "checkpoints, e.g. after Lightning's convert_zero_checkpoint_to_fp32_state_dict"
            )
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such checkpoint file or directory")
    return files


def training_step(checkpoint: dict, path: Path) -> int:
    step = checkpoint.get("global_step")
    if not isinstance(step, int):
        raise UserError(f"{path}: no integer 'global_step'; not a Lightning checkpoint")
    return step


def average_state_dicts(state_dicts: list[dict], names: list[str]) -> dict:
    """Floating-point entries averaged; the rest taken from the last state dict."""
    newest = state_dicts[-1]
    for state_dict, name in zip(state_dicts, names, strict=True):
        if state_dict.keys() != newest.keys():
            difference = sorted(state_dict.keys() ^ newest.keys())[:3]
            raise UserError(f"{name}: parameters differ from {names[-1]} (e.g. {difference})")
        for key, value in state_dict.items():
            if torch.is_tensor(value) and value.shape != newest[key].shape:
                raise UserError(
                    f"{name}: {key} has shape {tuple(value.shape)}, "
                    f"{names[-1]} has {tuple(newest[key].shape)}"
                )
    averaged = dict(newest)
    shared: dict[tuple, torch.Tensor] = {}  # tied weights (one tensor, two names) stay tied
    for key, value in newest.items():
        if torch.is_tensor(value) and value.is_floating_point():
            identity = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape)
            if identity not in shared:
                total = sum(state_dict[key].to(torch.float64) for state_dict in state_dicts)
                shared[identity] = (total / len(state_dicts)).to(value.dtype)
            averaged[key] = shared[identity]
    return averaged


def average_checkpoints(paths: list[Path], last: int) -> dict:
    """The newest checkpoint among ``paths`` with its weights averaged over the ``last`` newest."""
    if last < 1:
        raise UserError(f"--last {last}: must be at least 1")
    by_step: dict[int, tuple[Path, dict]] = {}  # step -> (file, its state_dict)
    for path in checkpoint_files(paths):
        checkpoint = read_checkpoint(path)
        if "averaged_from" in checkpoint[CHECKPOINT_KEY]:
            continue  # an earlier average, not a point of the training run
        by_step.setdefault(training_step(checkpoint, path), (path, checkpoint["state_dict"]))
        del checkpoint  # keep the weights only, not the optimizer state
    if not by_step:
        raise UserError(f"no {CHECKPOINT_SUFFIX} checkpoints in {', '.join(map(str, paths))}")
    steps = sorted(by_step)[-last:]
    if len(steps) < last:
        raise UserError(f"--last {last}: only {len(steps)} checkpoint(s) of distinct steps found")
    names = [str(by_step[step][0]) for step in steps]
    result = read_checkpoint(by_step[steps[-1]][0])
    result["state_dict"] = average_state_dicts([by_step[step][1] for step in steps], names)
    result[CHECKPOINT_KEY] = {
        **result[CHECKPOINT_KEY],
        "averaged_from": [
            {"path": name, "global_step": step} for name, step in zip(names, steps, strict=True)
        ],
    }
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt average",
        description="Average the parameters of the last N checkpoints (highest training step).",
    )
    parser.add_argument(
        "checkpoints", nargs="+", type=Path, help=".ckpt files, or directories holding them"
    )
    parser.add_argument(
        "--last", type=int, default=DEFAULT_LAST, help=f"how many (default {DEFAULT_LAST})"
    )
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    averaged = average_checkpoints(args.checkpoints, args.last)
    save_checkpoint_file(averaged, args.out)
    sources = averaged[CHECKPOINT_KEY]["averaged_from"]
    steps = ", ".join(str(entry["global_step"]) for entry in sources)
    print(f"averaged {len(sources)} checkpoints (steps {steps}) into {args.out}")
    return 0
