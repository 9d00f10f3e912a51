"""Learning-rate schedules: factors of the peak rate by optimizer step, for ``LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def inverse_sqrt_schedule(warmup_steps: int) -> Schedule:
    """Linear warm-up to 1 over ``warmup_steps``, then decay as 1/sqrt(step).

    With ``warmup_steps`` 0 the learning rate stays constant.
    """

    def factor(step: int) -> float:
        if warmup_steps <= 0:
            return 1.0
        step += 1
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))

    return factor


def cosine_schedule(total_steps: int, final_factor: float = 0.0) -> Schedule:
    """Half a cosine from 1 down to ``final_factor`` over ``total_steps``, then flat.

    For a fixed budget of updates: the rate stays high while the model learns fast and anneals
    towards the end, which a constant rate never does.
    """
    if total_steps <= 0:
        raise ValueError(f"a cosine schedule needs a positive number of steps, not {total_steps}")

    def factor(step: int) -> float:
        progress = min(step / total_steps, 1.0)
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
