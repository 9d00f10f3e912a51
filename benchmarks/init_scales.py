"""Activation and gradient scales of the Multi30k models at initialisation, per cell type.

A plain LSTM (no layer norm) fed embeddings of about unit norm (components ~ d**-0.5) starts
with states near 0.01; its attention scores are then near zero and the attention's gradient
falls below Adam's epsilon, so attention barely learns. This prints, for each cell with and
without ``scale_embeddings``, the mean |output| of every recurrent layer and the gradient norm
of each module group, as ratios to the layer-norm LSTM's, on one batch of random wordpieces.

    python benchmarks/init_scales.py [--batch 50] [--length 15]
"""

from __future__ import annotations

import argparse

import torch

from nmt.models.translation import TranslationConfig, TranslationModel, label_smoothed_loss
from nmt.modules.recurrent import RecurrentConfig

# The Multi30k configs' sizes (8.6M parameters each).
CELLS = {"lstm": 304, "ln_lstm": 304, "ln_hyperlstm": 256}
EMBEDDING, VOCAB, HYPER, N_Z = 256, 8000, 64, 16


def scales(cell: str, scale_embeddings: bool, batch: int, length: int) -> dict[str, float]:
    torch.manual_seed(0)
    config = TranslationConfig(
        vocab_size=VOCAB, embedding_size=EMBEDDING, scale_embeddings=scale_embeddings,
        recurrent=RecurrentConfig(cell=cell, hidden_size=CELLS[cell], hyper_size=HYPER, n_z=N_Z),
    )  # fmt: skip
    model = TranslationModel(config)
    src = torch.randint(4, VOCAB, (batch, length))
    tgt = torch.randint(4, VOCAB, (batch, length))
    found: dict[str, float] = {}
    layers = {f"|h| enc{i}": m for i, m in enumerate(model.encoder.layers)}
    layers |= {f"|h| dec{i}": m for i, m in enumerate(model.decoder_layers)}
    for name, layer in layers.items():
        layer.register_forward_hook(
            lambda module, inputs, output, name=name: found.__setitem__(
                name, output[0].detach().abs().mean().item()
            )
        )
    logits = model(src, torch.full((batch,), length), tgt)
    loss, _, tokens = label_smoothed_loss(logits, tgt, 0.1)
    (loss / tokens).backward()
    for group in ("encoder", "decoder_layers", "attention"):
        grads = [p.grad.norm() for n, p in model.named_parameters() if n.startswith(group)]
        found[f"grad {group}"] = torch.stack(grads).norm().item()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--length", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = scales("ln_lstm", False, args.batch, args.length)
    print("ratio to ln_lstm (unscaled embeddings): " + ", ".join(reference))
    for cell in CELLS:
        for scaled in (False, True):
            found = scales(cell, scaled, args.batch, args.length)
            ratios = " ".join(f"{found[k] / reference[k]:9.2e}" for k in reference)
            print(f"{cell:>13} scale_embeddings={scaled!s:<5} {ratios}")


if __name__ == "__main__":
    main()
