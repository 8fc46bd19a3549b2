"""Statistics in one place: medians with bootstrap confidence intervals, ratios to a baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    median: float
    low: float
    high: float
    n: int

    @property
    def half_width_rel(self) -> float:
        return (self.high - self.low) / 2 / abs(self.median) if self.median else float("inf")


def median_ci(values: list[float] | np.ndarray, seed: int = 0) -> Estimate:
    """Median with a percentile-bootstrap 95% CI (NaN bounds when n < 2)."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    med = float(np.median(data))
    if n < 2 or np.all(data == data[0]):
        return Estimate(med, med if n > 1 else float("nan"), med if n > 1 else float("nan"), n)
    res = sps.bootstrap((data,), np.median, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                        method="percentile", random_state=np.random.default_rng(seed))
    return Estimate(med, float(res.confidence_interval.low), float(res.confidence_interval.high), n)


def ratio_ci(values: list[float] | np.ndarray, baseline: list[float] | np.ndarray,
             seed: int = 0) -> Estimate:
    """Ratio of medians (values / baseline) with a two-sample percentile-bootstrap 95% CI."""
    a = np.asarray(values, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if len(a) == 0 or len(b) == 0 or np.median(b) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(np.median(a) / np.median(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(point, float("nan"), float("nan"), min(len(a), len(b)))
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, (RESAMPLES, len(a))), axis=1)
    rb = np.median(rng.choice(b, (RESAMPLES, len(b))), axis=1)
    ratios = ra / np.where(rb == 0, np.nan, rb)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(ratios, [alpha, 1 - alpha])
    return Estimate(point, float(low), float(high), min(len(a), len(b)))
