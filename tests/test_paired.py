"""The paired-ratio helper: interleaving cancels drift; retries are bounded and kept."""

from __future__ import annotations

import itertools

import pytest

from bench.analysis.paired import check_ratio, paired_ratio


def test_per_pair_ratios_cancel_a_drift_that_ratio_of_medians_would_not() -> None:
    # the machine slows down linearly; B is always twice as fast as A at the same moment
    clock = itertools.count()
    a_values, b_values = [], []

    def a() -> float:
        value = 100.0 / (1 + next(clock) * 0.2)
        a_values.append(value)
        return value

    def b() -> float:
        value = 200.0 / (1 + next(clock) * 0.2)
        b_values.append(value)
        return value

    result = paired_ratio(a, b, pairs=6)
    assert len(result.ratios) == 6
    assert result.median == pytest.approx(0.5, rel=0.15)
    assert result.error(0.5) < 0.15


def test_bounded_retry_is_reported() -> None:
    answers = iter([0.8, 0.8, 0.8, 0.5, 0.5, 0.5])
    check = check_ratio(lambda: paired_ratio(lambda: next(answers), lambda: 1.0), 0.5, 0.05,
                        retries=1)
    assert check.ok and check.retried == 1
    assert "after 2 attempt(s)" in check.describe()
    never = check_ratio(lambda: paired_ratio(lambda: 0.9, lambda: 1.0), 0.5, 0.05, retries=2)
    assert not never.ok and len(never.attempts) == 3 and "FAILED" in never.describe()


def test_a_zero_denominator_is_an_error_not_a_ratio() -> None:
    with pytest.raises(ValueError, match="denominator"):
        paired_ratio(lambda: 1.0, lambda: 0.0)
