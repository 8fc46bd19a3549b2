"""Statistics on constructed data with known answers (analysis/stats.py, changepoint.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.analysis import changepoint, stats

SEEDS = 200


def test_ten_percent_shift_is_detected_and_no_shift_is_not() -> None:
    """Over 200 seeds: a 10% slowdown is called "slower" with the right magnitude; equal
    distributions are called different at most at about the test's alpha."""
    false_positives = detected = 0
    magnitudes = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        base = rng.lognormal(math.log(1000), 0.03, 10)  # throughput, 3% noise
        same = rng.lognormal(math.log(1000), 0.03, 10)
        slower = rng.lognormal(math.log(1000 / 1.10), 0.03, 10)  # 10% slower
        if stats.compare(base, same, "higher", seed=seed).verdict != "same":
            false_positives += 1
        result = stats.compare(base, slower, "higher", seed=seed)
        if result.verdict == "slower":
            detected += 1
            magnitudes.append(result.slowdown)
    assert false_positives / SEEDS <= 0.06, false_positives
    assert detected / SEEDS >= 0.98, detected
    assert 0.08 <= float(np.median(magnitudes)) <= 0.12


def test_verdict_follows_the_metric_direction() -> None:
    rng = np.random.default_rng(1)
    low = rng.normal(100, 1, 12)
    high = rng.normal(120, 1, 12)
    assert stats.compare(low, high, "higher").verdict == "faster"  # more events/s
    assert stats.compare(low, high, "lower").verdict == "slower"  # more latency
    result = stats.compare(low, high, "lower")
    assert result.change == pytest.approx(0.2, abs=0.03)
    assert result.slowdown == pytest.approx(0.2, abs=0.03)
    assert stats.compare(high, low, "higher").slowdown == pytest.approx(0.2, abs=0.03)


def test_small_significant_changes_are_same_below_the_minimum_effect() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(1000, 1, 50)
    new = rng.normal(1005, 1, 50)  # 0.5%: significant, but below the 2% minimum effect
    result = stats.compare(base, new, "lower")
    assert result.p_value < 0.001
    assert result.verdict == "same" and "minimum effect" in result.note


def test_too_few_samples_never_call_a_difference() -> None:
    result = stats.compare([1.0, 1.1, 1.05], [2.0, 2.1, 2.05], "lower")
    assert result.verdict == "same" and "cannot reach" in result.note


@pytest.mark.parametrize("n", [20, 40])
def test_median_ci_covers_the_true_median_about_95_percent(n: int) -> None:
    rng = np.random.default_rng(n)
    trials = 600
    covered = 0
    for trial in range(trials):
        sample = rng.lognormal(math.log(50), 0.1, n)  # true median 50
        covered += stats.median_ci(sample, seed=trial).contains(50.0)
    assert 0.92 <= covered / trials <= 0.985, covered / trials


def test_ratio_ci_covers_the_true_ratio_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    trials = 400
    covered = 0
    for trial in range(trials):
        tier = rng.lognormal(math.log(110), 0.05, 20)
        host = rng.lognormal(math.log(100), 0.05, 20)
        covered += stats.ratio_ci(tier, host, seed=trial).contains(1.10)
    assert 0.92 <= covered / trials <= 0.99, covered / trials


def test_large_samples_use_the_fast_interval_with_the_same_coverage() -> None:
    rng = np.random.default_rng(3)
    trials = 300
    median_hits = ratio_hits = 0
    for _ in range(trials):
        a = rng.lognormal(math.log(200), 0.2, 2000)
        b = rng.lognormal(math.log(100), 0.2, 1500)
        median_hits += stats.median_ci(a).contains(200.0)
        ratio_hits += stats.ratio_ci(a, b).contains(2.0)
    assert 0.92 <= median_hits / trials <= 0.99
    assert 0.92 <= ratio_hits / trials <= 0.99


def test_overhead_is_a_cost_factor_whichever_way_the_metric_points() -> None:
    host_throughput, tier_throughput = [100.0] * 5, [80.0] * 5
    assert stats.overhead_ci(tier_throughput, host_throughput, "higher").median == 1.25
    host_latency, tier_latency = [10.0] * 5, [12.0] * 5
    assert stats.overhead_ci(tier_latency, host_latency, "lower").median == 1.2


def test_outliers_by_median_and_mad() -> None:
    rng = np.random.default_rng(4)
    values = [*rng.normal(100, 1, 30), 130.0, 60.0]
    flags = stats.outliers(values)
    assert flags[-2] and flags[-1]
    assert flags[:30].sum() == 0
    assert not stats.outliers([1.0, 1.0, 50.0]).any()  # too few to call anything


def test_needs_more_until_the_ci_is_narrow() -> None:
    rng = np.random.default_rng(5)
    assert stats.needs_more(rng.normal(100, 10, 5), 0.02)
    assert not stats.needs_more(rng.normal(100, 1, 60), 0.02)


def test_cv() -> None:
    assert stats.cv([10.0, 10.0, 10.0]) == 0
    assert stats.cv([9.0, 11.0]) == pytest.approx(math.sqrt(2) / 10)
    assert math.isnan(stats.cv([1.0]))


# -- many metrics at once, multiplicative effects, cost factors --------------------------------

def test_holm_and_bh_corrections() -> None:
    ps = [0.01, 0.04, 0.03, 0.005, float("nan")]
    holm = stats.adjust(ps, "holm")
    assert holm[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    bh = stats.adjust(ps, "bh")
    assert bh[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert str(holm[4]) == "nan"


def test_log_ratio_test_recovers_a_known_multiplicative_effect() -> None:
    rng = np.random.default_rng(5)
    base = rng.lognormal(math.log(100), 0.02, 12)
    new = rng.lognormal(math.log(110), 0.02, 12)
    found = stats.log_ratio_test(base, new)
    assert found.low < 0.10 < found.high and found.change == pytest.approx(0.10, abs=0.02)
    assert found.p < 1e-6
    assert math.isnan(stats.log_ratio_test([1.0], [2.0, 3.0]).p)
    assert stats.log_ratio_test([0.0, 2.0, 4.0], [0.0, 4.0, 8.0]).change == pytest.approx(1.0)


def test_cost_factor_is_above_one_when_slower_either_way() -> None:
    ratio = stats.Estimate(0.5, 0.4, 0.625, 8)  # throughput halved
    assert stats.cost(ratio, "higher") == stats.Estimate(2.0, 1.6, 2.5, 8)
    assert stats.cost(ratio, "lower") == ratio  # latency halved: faster


def test_compare_many_corrects_for_the_number_of_metrics() -> None:
    """One metric of twenty with p = 0.015 alone is "slower" on its own; tested together with
    nineteen unchanged ones (Holm or BH), it is not."""
    base = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    new = [13.5, 14.5, 15.5, 16.5, 17.5, 18.5]
    alone = stats.compare(base, new, "lower")
    assert alone.p_value < 0.05 and alone.verdict == "slower"
    unchanged = [(base, [10.5, 11.5, 12.5, 13.5, 14.5, 15.5], "lower")] * 19
    for correction in ("holm", "bh"):
        first, *rest = stats.compare_many([(base, new, "lower"), *unchanged],
                                          correction=correction)
        assert first.verdict == "same" and first.p_adjusted == pytest.approx(20 * first.p_value)
        assert "not after the correction" in first.note
        assert {c.verdict for c in rest} == {"same"}


# -- change points -----------------------------------------------------------------------------

def test_change_point_found_at_the_right_index() -> None:
    rng = np.random.default_rng(10)
    series = np.concatenate([rng.lognormal(math.log(1000), 0.02, 30),
                             rng.lognormal(math.log(1100), 0.02, 30)])
    (found,) = changepoint.detect(series)
    assert found.index == 30
    assert found.change == pytest.approx(0.10, abs=0.02)


def test_several_change_points_and_their_indexes() -> None:
    rng = np.random.default_rng(11)
    levels = [(100, 20), (90, 15), (120, 25)]
    series = np.concatenate([rng.normal(level, 1.0, size) for level, size in levels])
    found = changepoint.detect(series)
    assert [c.index for c in found] == [20, 35]


def test_a_change_point_is_attributed_to_its_run_when_values_are_missing() -> None:
    import pandas as pd

    from bench.analysis import history

    rng = np.random.default_rng(12)
    series = np.concatenate([rng.lognormal(math.log(100), 0.01, 10),
                             rng.lognormal(math.log(120), 0.01, 10)])
    series[[2, 5, 7]] = np.nan  # three runs before the shift did not report the metric
    (found,) = changepoint.detect(series)
    assert found.index == 10
    runs = [f"night-{i:02d}" for i in range(len(series))]
    points = pd.DataFrame({"host": "h", "cell": "c", "tier": "host", "label": "l",
                           "workload": "w", "metric": "m", "unit": "ms", "direction": "lower",
                           "run_id": runs, "started": range(len(series)), "median": series,
                           "n": 5})
    (alarm,) = history.check(history.series(points), window=len(series))
    assert alarm.run_id == "night-10"


def test_no_change_point_on_noise_over_many_seeds() -> None:
    alarms = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(1000 + seed)
        alarms += bool(changepoint.detect(rng.lognormal(math.log(50), 0.03, 40)))
    assert alarms / SEEDS <= 0.05, alarms


def test_a_ten_percent_shift_is_found_near_its_index_over_many_seeds() -> None:
    hits = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(2000 + seed)
        series = np.concatenate([rng.lognormal(0, 0.03, 25),
                                 rng.lognormal(math.log(1.1), 0.03, 15)])
        found = changepoint.detect(series)
        hits += len(found) == 1 and abs(found[0].index - 25) <= 1
    assert hits / SEEDS >= 0.95, hits


def _optimal_partitioning(x: np.ndarray, penalty: float, min_size: int) -> list[int]:
    """O(n^2) dynamic programme (Jackson et al., 2005): what PELT must reproduce exactly."""
    n = len(x)
    best = [math.inf] * (n + 1)
    best[0] = -penalty
    last = [0] * (n + 1)
    for end in range(min_size, n + 1):
        for start in range(0, end - min_size + 1):
            if best[start] == math.inf:
                continue
            segment = x[start:end]
            value = best[start] + float(((segment - segment.mean()) ** 2).sum()) + penalty
            if value < best[end]:
                best[end], last[end] = value, start
    points, position = [], n
    while position > 0:
        position = last[position]
        if position:
            points.append(position)
    return sorted(points)


def test_pelt_is_exact() -> None:
    rng = np.random.default_rng(12)
    for _ in range(150):
        n = int(rng.integers(4, 50))
        x = rng.normal(0, 1, n)
        x[int(rng.integers(1, n)):] += float(rng.choice([0, 1, 3]))
        min_size = int(rng.integers(1, 4))
        penalty = float(rng.choice([0.5, 2.0, 3 * math.log(n)]))
        assert changepoint.pelt(x, penalty, 1.0, min_size) == \
            _optimal_partitioning(x, penalty, min_size)


def test_detect_all_gives_each_series_what_detect_gives_it() -> None:
    rng = np.random.default_rng(7)
    series: list[np.ndarray] = []
    for i in range(150):  # mixed lengths, repeats of each, shifts, gaps, short and flat ones
        n = int(rng.choice([3, 12, 30, 60, 61, 320])) if i % 50 else 2
        x = rng.lognormal(math.log(50), 0.03, n)
        if n > 4:
            x[int(rng.integers(2, n - 2)):] *= float(rng.choice([1.0, 1.05, 1.2, 0.8]))
        if i % 7 == 0 and n > 3:
            x[int(rng.integers(0, n))] = np.nan
        series.append(np.full(n, 5.0) if i % 41 == 0 else x)
    for min_size, min_effect in ((2, 0.02), (1, 0.0), (3, 0.1)):
        expected = [changepoint.detect(x, min_size=min_size, min_effect=min_effect)
                    for x in series]
        assert changepoint.detect_all(series, min_size=min_size,
                                      min_effect=min_effect) == expected
        assert sum(map(bool, expected)) > 15  # the shifts were found, not only "none"
