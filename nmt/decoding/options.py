"""What a user can ask of the decoder, and what it gives back."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor

from nmt.errors import UserError


@dataclass
class DecodingOptions:
    """Beam search settings (GNMT scoring; Wu et al. 2016, section 7).

    A hypothesis Y of source X scores ``log P(Y|X) / lp(Y) + cp(X; Y)`` with
    ``lp = ((5 + |Y|) / 6) ** alpha`` and ``cp = beta * sum_i log(min(sum_j p_ij, 1))``;
    ``alpha = 0`` and ``beta = 0`` turn the penalties off. ``beam_size = 1`` is greedy decoding.

    Output length (wordpieces, EOS not counted) is at least ``min_length`` and at most
    ``min(max_length, int(max_length_ratio * source_length + max_length_offset))``, where the
    source length is the encoder's input length (wordpieces + EOS). A hypothesis that reaches
    its maximum length is ended with a forced EOS, whose log-probability it keeps.
    """

    beam_size: int = 5
    alpha: float = 0.6
    beta: float = 0.0
    nbest: int = 1
    min_length: int = 1
    max_length_ratio: float = 2.0
    max_length_offset: int = 10
    max_length: int = 256
    return_attention: bool = False

    def __post_init__(self) -> None:
        checks = {
            "beam_size": self.beam_size >= 1,
            "nbest": 1 <= self.nbest <= self.beam_size,
            "alpha": math.isfinite(self.alpha) and self.alpha >= 0,
            "beta": math.isfinite(self.beta) and self.beta >= 0,
            "max_length": self.max_length >= 1,  # before min_length, which is checked against it
            "min_length": 0 <= self.min_length <= self.max_length,
            "max_length_ratio": math.isfinite(self.max_length_ratio) and self.max_length_ratio >= 0,
        }
        for field_name, ok in checks.items():
            if not ok:
                raise UserError(
                    f"decoding option {field_name}={getattr(self, field_name)!r} is invalid "
                    "(need beam_size >= 1, 1 <= nbest <= beam_size, alpha >= 0, beta >= 0, "
                    "0 <= min_length <= max_length, max_length_ratio >= 0, max_length >= 1)"
                )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Hypothesis:
    """One finished translation of one sentence.

    ``tokens`` are wordpiece ids without BOS/EOS. ``log_prob`` is the model's log P(Y|X) of
    ``tokens`` followed by EOS; ``score`` is the GNMT score the beam ranked it by.
    ``attention`` (only when asked for) has one row per decoder step, EOS step included, and
    one column per source position (encoder input, EOS included, no padding).
    """

    tokens: list[int]
    score: float
    log_prob: float
    attention: Tensor | None = None
