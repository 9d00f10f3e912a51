"""GNMT's length and coverage penalties (Wu et al. 2016, equation 14).

score(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y)
lp(Y)    = ((5 + |Y|) / 6) ** alpha
cp(X; Y) = beta * sum_i log(min(sum_j p_ij, 1))

|Y| counts every decoder step whose probability is in log P(Y|X), the final EOS included;
p_ij is the attention on source position i at target step j.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Attention mass is floored here before the log, so a source position that received no
# attention at all costs a large but finite penalty instead of -inf (which would tie every
# such hypothesis and hide the log-probability).
MIN_COVERAGE = 1e-10


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """lp = ((5 + |Y|) / 6) ** alpha, elementwise over ``lengths``; 1 when ``alpha`` is 0."""
    return ((5.0 + lengths.to(torch.float32)) / 6.0) ** alpha


def coverage_penalty(coverage: Tensor, source_mask: Tensor, beta: float) -> Tensor:
    """cp = beta * sum over real source positions of log(min(attention mass, 1)).

    coverage: (R, S) attention summed over the target steps so far; source_mask: (R, S) bool,
    True at real source positions (padding contributes nothing). Returns (R,).
    """
    if beta == 0.0:
        return coverage.new_zeros(coverage.shape[0])
    mass = coverage.clamp(min=MIN_COVERAGE, max=1.0)
    return beta * torch.where(source_mask, mass.log(), torch.zeros_like(mass)).sum(dim=-1)


def gnmt_score(
    log_probs: Tensor, lengths: Tensor, coverage_penalties: Tensor, alpha: float
) -> Tensor:
    """log P / lp + cp, elementwise."""
    return log_probs / length_penalty(lengths, alpha) + coverage_penalties
