"""Ratios that survive a loaded machine: limited and unlimited measured interleaved, in pairs.

A ratio of two medians taken minutes apart carries every drift of the machine in between; a
ratio per pair, with the order alternating (ABBA), cancels slow drift, and the median of the
per-pair ratios ignores the odd pair a neighbour disturbed. A check that misses its tolerance may
be measured again a bounded number of times; every attempt is kept, so a retry is reported,
never hidden.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PairedRatio:
    """Per-pair ratios numerator/denominator and their median."""

    ratios: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def error(self, expected: float) -> float:
        """Relative error of the median ratio against the expected one."""
        return abs(self.median - expected) / expected


def paired_ratio(numerator: Callable[[], float], denominator: Callable[[], float],
                 pairs: int = 3) -> PairedRatio:
    """Measure `pairs` pairs, alternating which side goes first, and keep one ratio per pair."""
    if pairs < 1:
        raise ValueError("pairs must be >= 1")
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            num, den = numerator(), denominator()
        else:
            den, num = denominator(), numerator()
        if den <= 0:
            raise ValueError(f"the denominator measured {den}; a ratio needs a positive value")
        ratios.append(num / den)
    return PairedRatio(tuple(ratios))


@dataclass
class Check:
    """The outcome of a paired check with its bounded retries (every attempt kept)."""

    expected: float
    tolerance: float
    attempts: list[PairedRatio] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].error(self.expected) <= self.tolerance

    @property
    def retried(self) -> int:
        return max(0, len(self.attempts) - 1)

    def describe(self) -> str:
        tried = ", ".join(f"{a.median:.3f}" for a in self.attempts)
        verdict = "ok" if self.ok else "FAILED"
        return (f"ratio {tried} (expected {self.expected:.3f} within {self.tolerance:.0%}); "
                f"{verdict} after {len(self.attempts)} attempt(s)")


def check_ratio(measure: Callable[[], PairedRatio], expected: float, tolerance: float,
                retries: int = 1) -> Check:
    """Measure until the median ratio is within `tolerance` of `expected`, at most 1 + retries."""
    check = Check(expected, tolerance)
    for _ in range(1 + retries):
        check.attempts.append(measure())
        if check.ok:
            break
    return check
