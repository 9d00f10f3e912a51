"""A bundle's default decoding options, held to the limits the server sets for requests.

A request may not ask for a beam above ``MAX_BEAM_SIZE``; a request that names no beam gets the
bundle's default, so without this a bundle whose ``decoding.json`` says 1000 would decode every
such request with a beam of 1000. The defaults are clamped once, where the bundle is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from serve.schemas import MAX_ALPHA, MAX_BEAM_SIZE, MAX_BETA, MAX_NBEST

logger = logging.getLogger(__name__)

LIMITS = {"beam_size": MAX_BEAM_SIZE, "nbest": MAX_NBEST, "alpha": MAX_ALPHA, "beta": MAX_BETA}


def clamp_decoding(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with every option above its request limit lowered to it (and logged)."""
    clamped = dict(values)
    for name, limit in LIMITS.items():
        if name in clamped and clamped[name] > limit:
            logger.warning("%s: %s %s lowered to the server's limit %s", where, name,
                           clamped[name], limit)  # fmt: skip
            clamped[name] = limit
    return clamped
