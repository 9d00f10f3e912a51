"""Bounds that every config dataclass checks in ``__post_init__``.

Configs arrive from YAML, checkpoints and bundles, and whoever edits a bundle can recompute its
hashes; so a config checks its own values before a model is built from them (a ``hidden_size``
of 1e6 would otherwise ask torch for terabytes). The limits are far above any model this project
trains and low enough that one model fits in memory. A violation is a ``ValueError`` naming the
field, which the loaders turn into a one-line error naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_VOCAB = 1 << 18  # wordpieces or characters
MAX_WIDTH = 8192  # embedding and hidden units
MAX_HYPER_WIDTH = 4096  # units of the hyper cell
MAX_HYPER_EMBEDDING = 1024  # N_z
MAX_LAYERS = 32
MAX_FORGET_BIAS = 100.0
MAX_IMAGE_SIZE = 1024  # pixels a side
MAX_CHANNELS = 1024  # convolution filters
MAX_CLASSES = 1 << 16


def check_int(config: Any, name: str, low: int, high: int) -> None:
    """``config.name`` is an int (not a bool) in [low, high]."""
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is invalid: need an integer from {low} to {high}")


def check_fraction(config: Any, name: str) -> None:
    """``config.name`` is a number in [0, 1) (a dropout or smoothing rate)."""
    value = getattr(config, name)
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: need a number in [0, 1)")


def check_float(config: Any, name: str, low: float, high: float) -> None:
    """``config.name`` is a finite number in [low, high]."""
    value = getattr(config, name)
    if not _is_number(value) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is invalid: need a number from {low} to {high}")


def check_bool(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: need true or false")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rename_keys(values: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``values`` with legacy keys under their current names, for configs saved before a rename
    (checkpoints and bundles keep their config as a dict); a key given both ways is an error."""
    out = dict(values)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ValueError(f"{old} and {new} are the same setting; give only {new}")
            out[new] = out.pop(old)
    return out
