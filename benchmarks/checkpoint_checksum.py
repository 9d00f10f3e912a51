"""What the checkpoint checksum costs: sealing against ``torch.save``, verifying against
``torch.load(weights_only=True)``, for a translation model with its Adam state.

The model is built from a config (``TranslationConfig`` defaults, or ``--hidden-size`` etc.)
and given Adam moments by one optimizer step; the checkpoint has the layout training writes.

    python benchmarks/checkpoint_checksum.py --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nmt.checkpoints import checksum, load_checkpoint_file, seal
from nmt.models.translation import TranslationConfig
from nmt.modules.recurrent import RecurrentConfig, TranslationModel


def checkpoint(config: TranslationConfig) -> dict:
    model = TranslationModel(config)
    optimizer = torch.optim.Adam(model.parameters())
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "global_step": 1,
    }


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TranslationConfig(
        vocab_size=args.vocab_size,
        embedding_size=args.hidden_size,
        recurrent=RecurrentConfig(hidden_size=args.hidden_size),
    )
    data = checkpoint(config)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.ckpt"
        save = best_of(args.repeats, lambda: torch.save(data, path))
        digest = best_of(args.repeats, lambda: checksum(data))
        torch.save(seal(data), path)
        size = path.stat().st_size / 1e6

        def plain_load() -> None:
            torch.load(path, map_location="cpu", weights_only=True)

        load = best_of(args.repeats, plain_load)
        verified = best_of(args.repeats, lambda: load_checkpoint_file(path))
    parameters = sum(v.numel() for v in data["state_dict"].values())
    print(f"{parameters / 1e6:.1f}M parameters, checkpoint {size:.0f} MB")
    print(f"save {save:.3f} s, checksum {digest:.3f} s: sealing adds {digest / save:.2f}x")
    print(f"load {load:.3f} s, load + verify {verified:.3f} s: {verified / load:.2f}x the load")


if __name__ == "__main__":
    main()
