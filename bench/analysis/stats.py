"""Statistics in one place: every number the summary, reports, comparisons and history print.

- `median_ci`: a cell's median with a 95% percentile-bootstrap confidence interval
  (RESAMPLES resamples with replacement; the 2.5% and 97.5% quantiles of their medians).
- `ratio_ci`: the ratio of two medians (a tier over the host) with a two-sample bootstrap CI;
  `overhead_ci` turns it into a cost factor that is > 1 when the tier is worse, whichever way
  the metric points.
- `compare_many` (and `compare` for one metric): are two cells different? A two-sided
  Mann-Whitney U test, its p-values corrected for testing many metrics at once (`adjust`: Holm
  by default, or Benjamini-Hochberg), *and* a minimum effect size (relative change of the
  medians) must all say so; otherwise the verdict is "same".
- `log_ratio_test`: a multiplicative effect (ratio of geometric means) with the CI and p of
  Welch's t on log values (what `bench tune recommend` judges settings by).
- `cost`: every ratio shown to a reader is a cost factor, > 1 = slower (worse), whichever
  way the metric points.
- `outliers`: median-based flagging with the modified z-score of Iglewicz and Hoaglin (1993),
  0.6745 * (x - median) / MAD, flagged above 3.5.
- `needs_more`: the adaptive-repetition test (is the CI still wider than the target?).

The bootstrap costs O(resamples * n) per cell, so above `BOOTSTRAP_MAX_N` samples the CIs are
computed without resampling: the distribution-free order-statistic interval for a median
(ranks from the binomial(n, 1/2) quantiles), and for a ratio the delta method on the log scale
with each median's standard error taken from that interval. Both are the large-sample limits
of the bootstrap intervals, so a report on a million samples stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from scipy import stats as sps

from bench.analysis.defaults import ALPHA as ALPHA
from bench.analysis.defaults import MIN_EFFECT as MIN_EFFECT

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_MAX_N = 100
OUTLIER_Z = 3.5
OUTLIER_MIN_N = 5  # with fewer values the MAD is too unstable to call anything an outlier

Direction = Literal["higher", "lower"]
Verdict = Literal["faster", "slower", "same"]
Correction = Literal["holm", "bh"]
CORRECTIONS: dict[str, str] = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
Values = list[float] | np.ndarray


@dataclass(frozen=True)
class Estimate:
    median: float
    low: float
    high: float
    n: int

    @property
    def half_width_rel(self) -> float:
        """Half the CI's width relative to the point estimate (inf when unknown)."""
        if not self.median or math.isnan(self.low) or math.isnan(self.high):
            return float("inf")
        return (self.high - self.low) / 2 / abs(self.median)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _nan(n: int = 0) -> Estimate:
    return Estimate(float("nan"), float("nan"), float("nan"), n)


@cache
def _ranks(n: int, confidence: float) -> tuple[int, int]:
    """The binomial ranks that bound the median's CI: they depend on n alone, and scipy's
    distribution calls cost a fraction of a millisecond each (a report makes hundreds)."""
    alpha = (1 - confidence) / 2
    return int(sps.binom.ppf(alpha, n, 0.5)), int(sps.binom.isf(alpha, n, 0.5))


@cache
def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2))


def _order_stat_ci(data: np.ndarray) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (binomial ranks)."""
    n = len(data)
    ordered = np.sort(data)
    lo, hi = _ranks(n, CONFIDENCE)
    return float(ordered[max(lo - 1, 0)]), float(ordered[min(hi, n - 1)])


def median_ci(values: Values, seed: int = 0) -> Estimate:
    """Median with a percentile-bootstrap 95% CI (NaN bounds when n < 2)."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return _nan()
    med = float(np.median(data))
    if n < 2 or np.all(data == data[0]):
        return Estimate(med, med if n > 1 else float("nan"), med if n > 1 else float("nan"), n)
    if n > BOOTSTRAP_MAX_N:
        low, high = _order_stat_ci(data)
        return Estimate(med, low, high, n)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(_resampled_medians(data, np.random.default_rng(seed)),
                            [alpha, 1 - alpha])
    return Estimate(med, float(low), float(high), n)


def _resampled_medians(data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The medians of RESAMPLES bootstrap resamples of `data` (drawn with replacement)."""
    n = len(data)
    ordered = np.sort(data[rng.integers(0, n, (RESAMPLES, n))], axis=1)  # faster than median
    return np.asarray((ordered[:, (n - 1) // 2] + ordered[:, n // 2]) / 2)


def _log_se(data: np.ndarray) -> float:
    """Standard error of log(median) from the order-statistic interval."""
    low, high = _order_stat_ci(data)
    if low <= 0 or high <= 0:
        return float("nan")
    z = _z(CONFIDENCE)
    return (math.log(high) - math.log(low)) / (2 * z)


def ratio_ci(values: Values, baseline: Values, seed: int = 0) -> Estimate:
    """Ratio of medians (values / baseline) with a two-sample percentile-bootstrap 95% CI."""
    a = np.asarray(values, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if len(a) == 0 or len(b) == 0 or np.median(b) == 0:
        return _nan()
    point = float(np.median(a) / np.median(b))
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(point, float("nan"), float("nan"), n)
    if len(a) > BOOTSTRAP_MAX_N and len(b) > BOOTSTRAP_MAX_N and point > 0:
        se = math.hypot(_log_se(a), _log_se(b))
        z = _z(CONFIDENCE)
        return Estimate(point, point * math.exp(-z * se), point * math.exp(z * se), n)
    rng = np.random.default_rng(seed)
    ra = _resampled_medians(a, rng)
    rb = _resampled_medians(b, rng)
    ratios = ra / np.where(rb == 0, np.nan, rb)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(ratios, [alpha, 1 - alpha])
    return Estimate(point, float(low), float(high), n)


def overhead_ci(values: Values, baseline: Values, direction: Direction, seed: int = 0) -> Estimate:
    """How many times worse `values` are than `baseline` (1.25 = 25% overhead), with its CI.

    For a lower-is-better metric (latency, time) it is values / baseline; for a
    higher-is-better one (throughput) baseline / values. > 1 always means slower.
    """
    if direction == "lower":
        return ratio_ci(values, baseline, seed)
    return ratio_ci(baseline, values, seed)


def cost(ratio: Estimate, direction: Direction) -> Estimate:
    """A ratio of the metric (new / base) as a cost factor: > 1 = slower, for either
    direction (a throughput ratio is inverted, and its CI bounds swap)."""
    if direction == "lower":
        return ratio

    def inverse(x: float) -> float:
        return 1 / x if x and not math.isnan(x) else float("nan")

    return Estimate(inverse(ratio.median), inverse(ratio.high), inverse(ratio.low), ratio.n)


def cv(values: Values) -> float:
    """Coefficient of variation (sample standard deviation over |mean|); NaN when undefined."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.mean(data) == 0:
        return float("nan")
    return float(np.std(data, ddof=1)) / abs(float(np.mean(data)))


def outliers(values: Values, threshold: float = OUTLIER_Z) -> np.ndarray:
    """A boolean mask of outliers by the modified z-score 0.6745 (x - median) / MAD.

    When the MAD is zero (more than half the values equal), values that differ from the
    median are flagged only if they differ by more than 1% of it, so a run of identical
    timings with one tiny deviation is not called an outlier.
    """
    data = np.asarray(values, dtype=float)
    if len(data) < OUTLIER_MIN_N:
        return np.zeros(len(data), dtype=bool)
    med = np.median(data)
    mad = np.median(np.abs(data - med))
    if mad == 0:
        return np.asarray(np.abs(data - med) > 0.01 * abs(med), dtype=bool)
    return np.asarray(np.abs(0.6745 * (data - med) / mad) > threshold, dtype=bool)


def needs_more(values: Values, target: float) -> bool:
    """Adaptive repetitions: is the median's CI half-width still above `target` (relative)?"""
    return median_ci(values).half_width_rel > target


def mann_whitney_p(a: Values, b: Values) -> float:
    """Two-sided Mann-Whitney U p-value (1.0 when either side has fewer than 2 values)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return 1.0
    if np.all(x == x[0]) and np.all(y == y[0]):
        return 1.0 if x[0] == y[0] else 0.0
    return float(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Comparison:
    """NEW against BASE for one metric of one cell."""

    base: Estimate
    new: Estimate
    ratio: Estimate  # new median / base median, with its bootstrap CI
    p_value: float
    direction: Direction
    verdict: Verdict
    note: str = ""
    p_adjusted: float = float("nan")  # corrected for every metric compared with it

    @property
    def change(self) -> float:
        """Relative change of the median, new vs base (+0.10 = 10% larger)."""
        return self.ratio.median - 1

    @property
    def cost(self) -> Estimate:
        """NEW's cost factor against BASE with its CI: > 1 = slower."""
        return cost(self.ratio, self.direction)

    @property
    def slowdown(self) -> float:
        """Relative change in the bad direction (+0.10 = 10% slower, whichever way it points)."""
        if math.isnan(self.ratio.median) or self.ratio.median <= 0:
            return float("nan")
        return self.cost.median - 1


def compare(base: Values, new: Values, direction: Direction, alpha: float = ALPHA,
            min_effect: float = MIN_EFFECT, seed: int = 0) -> Comparison:
    """Verdict on NEW vs BASE for a single metric (see `compare_many`)."""
    return compare_many([(base, new, direction)], alpha, min_effect, seed=seed)[0]


def compare_many(pairs: list[tuple[Values, Values, Direction]], alpha: float = ALPHA,
                 min_effect: float = MIN_EFFECT, correction: Correction = "holm",
                 seed: int = 0) -> list[Comparison]:
    """Verdicts on (BASE, NEW, direction) pairs tested together: "faster"/"slower" only if the
    Mann-Whitney U p-value, corrected over all pairs (`correction`), is below `alpha` AND the
    medians differ by at least `min_effect` (relative); else "same"."""
    measured = [(median_ci(b, seed), median_ci(n, seed), ratio_ci(n, b, seed),
                 mann_whitney_p(b, n), d) for b, n, d in pairs]
    adjusted = adjust([m[3] for m in measured], correction)
    return [_judge(*m, p_adj, alpha, min_effect) for m, p_adj in zip(measured, adjusted,
                                                                      strict=True)]


def _judge(b_est: Estimate, n_est: Estimate, ratio: Estimate, p: float, direction: Direction,
           p_adj: float, alpha: float, min_effect: float) -> Comparison:
    note = ""
    verdict: Verdict = "same"
    if min(b_est.n, n_est.n) < 2:
        note = "too few samples to test"
    elif math.isnan(ratio.median):
        note = "base median is zero"
    elif p_adj < alpha and abs(ratio.median - 1) >= min_effect:
        better = ratio.median > 1 if direction == "higher" else ratio.median < 1
        verdict = "faster" if better else "slower"
    elif p_adj < alpha:
        note = f"significant but below the {min_effect:.0%} minimum effect"
    elif p < alpha:
        note = "significant alone, not after the correction for many metrics"
    else:
        smallest = _smallest_p(b_est.n, n_est.n)
        if smallest >= alpha:
            note = f"n={b_est.n}/{n_est.n} cannot reach p<{alpha:g}"
    return Comparison(b_est, n_est, ratio, p, direction, verdict, note, p_adj)


def _smallest_p(n: int, m: int) -> float:
    """The smallest two-sided exact Mann-Whitney p-value that sample sizes n and m allow."""
    return 2 / math.comb(n + m, n) if n + m < 60 else 0.0


def adjust(pvalues: list[float], method: Correction) -> list[float]:
    """p-values corrected for testing them together: Holm's step-down (controls the chance of
    any false alarm) or Benjamini-Hochberg (the expected share of false alarms). NaN stays
    NaN and does not count as a test."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    ps = np.asarray([pvalues[i] for i in idx], dtype=float)
    out = [float("nan")] * len(pvalues)
    if not len(ps):
        return out
    if method == "bh":
        adjusted = sps.false_discovery_control(ps, method="bh")
    else:
        order = np.argsort(ps)
        m = len(ps)
        running = 0.0
        adjusted = np.empty(m)
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            adjusted[i] = running
    for i, value in zip(idx, adjusted, strict=True):
        out[i] = float(value)
    return out


@dataclass(frozen=True)
class LogRatio:
    """`new` against `base` as a multiplicative effect: change = ratio of geometric means - 1
    (+0.10 = the metric is 10% higher), its 95% CI, and the two-sided p."""

    change: float
    low: float
    high: float
    p: float


def log_ratio_test(base: Values, new: Values) -> LogRatio:
    """Welch's t on log values (robust to the metric's scale); for a metric that can be 0, the
    ratio of medians and Mann-Whitney U, without a CI."""
    a = np.asarray(new, dtype=float)
    b = np.asarray(base, dtype=float)
    nan = float("nan")
    if len(a) < 2 or len(b) < 2:
        return LogRatio(nan, nan, nan, nan)
    if np.all(a > 0) and np.all(b > 0):
        la, lb = np.log(a), np.log(b)
        if np.ptp(la) == 0 and np.ptp(lb) == 0:
            diff = math.expm1(float(la[0] - lb[0]))
            return LogRatio(diff, diff, diff, 1.0 if diff == 0 else 0.0)
        res = sps.ttest_ind(la, lb, equal_var=False)
        ci = res.confidence_interval(CONFIDENCE)
        diff = float(np.mean(la) - np.mean(lb))
        return LogRatio(math.expm1(diff), math.expm1(float(ci.low)), math.expm1(float(ci.high)),
                        float(res.pvalue))
    med_b = float(np.median(b))
    change = float(np.median(a)) / med_b - 1 if med_b else nan
    return LogRatio(change, nan, nan, mann_whitney_p(b, a))
