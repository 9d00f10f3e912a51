"""Read and write training checkpoints with plain PyTorch (no Lightning), safely.

Every training task writes ``checkpoint["hypernmt"]`` (``hypernmt_metadata``: for translation
``{"task": "translation", "model_config": dict, "wordpieces": bytes}``) into every Lightning
checkpoint and keeps the model's weights under state_dict keys prefixed ``model.``; that is all
decoding, evaluation and export need.

Checkpoints travel between people and machines, so reading one must not run code from it: they
are loaded with ``torch.load(weights_only=True)``, whose unpickler builds only tensors, plain
containers and the allow-listed config dataclasses the tasks store as hyperparameters. Every
checkpoint the project writes also carries ``checkpoint["hypernmt_checksum"]``, a sha256 over its
whole content (tensor bytes included), so one flipped byte in a weight or in the optimizer state
is refused instead of loading silently. Checkpoints written before the checksum existed still
load (there is nothing to verify).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError
from nmt.io import atomic_file
from nmt.wordpieces import Wordpieces

CHECKPOINT_KEY = "hypernmt"
CHECKSUM_KEY = "hypernmt_checksum"
CHECKSUM_ALGORITHM = "sha256"
MODEL_PREFIX = "model."


def hypernmt_metadata(task: str, model_config: dict, **extras: Any) -> dict:
    """The entry every training task stores as ``checkpoint["hypernmt"]``: the task's name, its
    model config as a plain dict, and what else loading needs (``wordpieces`` bytes for
    translation, the character ``vocabulary`` for the char LM)."""
    return {"task": task, "model_config": model_config, **extras}


def safe_globals() -> list[type]:
    """The classes a checkpoint may contain besides tensors and plain containers: the config
    dataclasses that the tasks' ``save_hyperparameters`` records (nothing that runs code)."""
    from nmt.models.char_lm import CharLMConfig
    from nmt.models.convnet import ConvNetConfig
    from nmt.models.translation import TranslationConfig
    from nmt.modules.recurrent import RecurrentConfig

    return [CharLMConfig, ConvNetConfig, TranslationConfig, RecurrentConfig]


def checksum(checkpoint: Mapping[str, Any]) -> str:
    """sha256 over every entry except the checksum itself, in a canonical order."""
    digest = hashlib.sha256()
    _digest(digest, {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY})
    return digest.hexdigest()


def seal(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with its checksum entry set (in place); call last before saving."""
    checkpoint[CHECKSUM_KEY] = {"algorithm": CHECKSUM_ALGORITHM, "digest": checksum(checkpoint)}
    return checkpoint


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Seal ``checkpoint`` and write it to ``path`` atomically (never a partial file there)."""
    with atomic_file(path) as file:
        torch.save(seal(checkpoint), file)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` without running code, then the checksum verified (and removed, so a dict
    derived from it never carries a stale one). A refusal is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickled code, a truncated or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{path}: not a readable checkpoint; refused as damaged or not plain data ({reason})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    record = checkpoint.pop(CHECKSUM_KEY, None)
    if record is not None:
        if not isinstance(record, dict) or record.get("algorithm") != CHECKSUM_ALGORITHM:
            raise UserError(f"{path}: unreadable {CHECKSUM_KEY!r} entry")
        if checksum(checkpoint) != record.get("digest"):
            raise UserError(
                f"{path}: checksum does not match its content; the checkpoint is damaged"
            )
    return checkpoint


def read_checkpoint(path: str | Path) -> dict:
    """A HyperNMT checkpoint dictionary, verified, with a clear error for any other file."""
    checkpoint = load_checkpoint_file(path)
    if CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{path}: no {CHECKPOINT_KEY!r} entry; not written by HyperNMT training")
    if not isinstance(checkpoint[CHECKPOINT_KEY], dict):
        raise UserError(f"{path}: field {CHECKPOINT_KEY!r} must be a dict")
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        raise UserError(f"{path}: no 'state_dict' entry; the checkpoint holds no weights")
    return checkpoint


def model_state_dict(checkpoint: dict) -> dict:
    """The model's own weights: state_dict entries under ``model.``, prefix removed."""
    return {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }


def load_model_weights(model: torch.nn.Module, checkpoint: dict, path: str | Path) -> None:
    """Load the checkpoint's weights into ``model``; missing, extra or misshapen ones are one
    line naming the file and the first few keys."""
    weights = model_state_dict(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshapen = sorted(
        key
        for key in set(expected) & set(weights)
        if not torch.is_tensor(weights[key]) or weights[key].shape != expected[key].shape
    )
    if missing or unexpected or misshapen:
        problems = [
            f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", misshapen),
            )
            if keys
        ]
        raise UserError(
            f"{path}: weights do not fit the model config ({'; '.join(problems)} weights)"
        )
    model.load_state_dict(weights)


def load_translation(path: str | Path) -> tuple[torch.nn.Module, Wordpieces]:
    """The trained model (eval mode, CPU) and its wordpieces from a training checkpoint."""
    from nmt.bundle import build_model

    checkpoint = read_checkpoint(path)
    metadata = checkpoint[CHECKPOINT_KEY]
    if metadata.get("task") != "translation":
        raise UserError(f"{path}: a {metadata.get('task')!r} checkpoint, not a translation one")
    where = f"{path}: {CHECKPOINT_KEY}.model_config"
    model, _ = build_model("translation", metadata.get("model_config"), where=where)
    load_model_weights(model, checkpoint, path)
    model.eval()
    wordpieces = metadata.get("wordpieces")
    if not isinstance(wordpieces, bytes):
        raise UserError(f"{path}: field {CHECKPOINT_KEY}.wordpieces must hold the model's bytes")
    return model, Wordpieces(wordpieces, name=f"{path}: {CHECKPOINT_KEY}.wordpieces")


def _digest(digest: Any, value: Any) -> None:
    """Feed ``value`` to ``digest`` with its type, so that e.g. 1, 1.0 and "1" differ."""
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    elif isinstance(value, Mapping):
        digest.update(f"M{len(value)}".encode())
        for key in sorted(value, key=repr):
            _digest(digest, key)
            _digest(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _digest(digest, item)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(b"B%d" % len(value))
        digest.update(value)
    elif isinstance(value, float) and math.isnan(value):
        digest.update(b"Fnan")
    elif value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.Size)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    elif hasattr(value, "__dataclass_fields__"):  # an allow-listed config dataclass
        digest.update(f"D{type(value).__qualname__}".encode())
        _digest(digest, dict(vars(value)))
    else:
        digest.update(f"O{type(value).__qualname__}:{value!r}".encode())
