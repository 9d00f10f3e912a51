"""Learning-rate schedules against values worked out by hand."""

from __future__ import annotations

import pytest

from nmt.training.schedules import cosine_schedule, inverse_sqrt_schedule


def test_inverse_sqrt_warms_up_linearly_then_decays_as_one_over_sqrt_step() -> None:
    factor = inverse_sqrt_schedule(warmup_steps=4)
    # optimizer step s (0-based) is update s + 1: (s + 1) / 4 up to the peak at update 4,
    # then sqrt(4 / (s + 1))
    assert [factor(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(15) == pytest.approx(0.5)
    assert factor(399) == pytest.approx(0.1)


def test_inverse_sqrt_without_warm_up_is_constant() -> None:
    factor = inverse_sqrt_schedule(warmup_steps=0)
    assert {factor(step) for step in (0, 1, 10, 10_000)} == {1.0}


def test_cosine_anneals_to_the_final_factor_and_stays() -> None:
    factor = cosine_schedule(total_steps=10, final_factor=0.1)
    assert factor(0) == 1.0
    assert factor(5) == pytest.approx(0.55)  # half-way: the mean of 1 and 0.1
    assert factor(10) == pytest.approx(0.1) and factor(25) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="positive number of steps"):
        cosine_schedule(0)
