"""Load a translation model from a training checkpoint with plain PyTorch (no Lightning).

The training task writes ``checkpoint["hypernmt"] = {"task": "translation", "model_config":
dict, "wordpieces": bytes}`` into every Lightning checkpoint and keeps the model's weights under
state_dict keys prefixed ``model.``; that is all decoding, evaluation and export need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.errors import UserError
from nmt.models.translation import TranslationConfig, TranslationModel
from nmt.wordpieces import Wordpieces

CHECKPOINT_KEY = "hypernmt"
MODEL_PREFIX = "model."


def hypernmt_metadata(task: str, model_config: dict, wordpieces: Wordpieces) -> dict:
    """The entry the training task stores as ``checkpoint["hypernmt"]``."""
    return {"task": task, "model_config": model_config, "wordpieces": wordpieces.model_bytes}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary, with a clear error when the file is not a HyperNMT checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        # Lightning checkpoints also hold loop and callback state (plain containers); the
        # checkpoint is the user's own training output, so full unpickling is acceptable.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{path}: no {CHECKPOINT_KEY!r} entry; not written by HyperNMT training")
    return checkpoint


def model_state_dict(checkpoint: dict) -> dict:
    """The model's own weights: state_dict entries under ``model.``, prefix removed."""
    return {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }


def load_translation(path: str | Path) -> tuple[TranslationModel, Wordpieces]:
    """The trained model (eval mode, CPU) and its wordpieces from a training checkpoint."""
    checkpoint = read_checkpoint(path)
    metadata = checkpoint[CHECKPOINT_KEY]
    if metadata.get("task") != "translation":
        raise UserError(f"{path}: a {metadata.get('task')!r} checkpoint, not a translation one")
    model = TranslationModel(TranslationConfig.from_dict(metadata["model_config"]))
    model.load_state_dict(model_state_dict(checkpoint))
    model.eval()
    return model, Wordpieces.from_bytes(metadata["wordpieces"])
