"""Methodology checks: what in a run's setup or data makes its numbers less trustworthy.

Each check reads the run's manifest (host facts as found) and samples, and returns warnings a
person can act on: what was seen, on which cells, and what to do. They are printed at the end of
`bench run` and shown in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.analysis import stats
from bench.workloads import HEADLINE, WORKLOADS

NOISY_CV = 0.10  # pyperf warns when the standard deviation exceeds 10% of the mean
MIN_REPETITIONS = 5  # below this a 95% bootstrap CI of a median is little more than min..max

Severity = Literal["info", "warning"]


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    fix: str
    cells: tuple[str, ...] = field(default_factory=tuple)

    def text(self, limit: int = 6) -> str:
        shown = ", ".join(self.cells[:limit])
        more = f" (+{len(self.cells) - limit} more)" if len(self.cells) > limit else ""
        where = f" [{shown}{more}]" if self.cells else ""
        return f"{self.message}{where} Fix: {self.fix}"


def family(workload: str) -> str:
    found = WORKLOADS.get(workload)
    return str(found.family) if found is not None else workload.split(".", 1)[0]


def headline(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the rows of each workload's headline metrics (all metrics for unknown workloads)."""
    if frame.empty:
        return frame
    workloads, workload_names = pd.factorize(frame["workload"])
    metrics, metric_names = pd.factorize(frame["metric"])
    pairs = workloads.astype(np.int64) * len(metric_names) + metrics  # one number per pair
    wanted = [pair for pair in pd.unique(pairs)
              if metric_names[pair % len(metric_names)] in HEADLINE.get(
                  str(workload_names[pair // len(metric_names)]),
                  (metric_names[pair % len(metric_names)],))]
    return frame[np.isin(pairs, wanted)]


def _host(manifest: dict[str, Any]) -> list[Finding]:
    host = manifest.get("host", {})
    found = []
    governor = host.get("governor")
    if governor is None:
        found.append(Finding(
            "governor", "info",
            "No CPU frequency governor is visible (a virtual machine, or cpufreq is off): "
            "frequency scaling could not be checked.",
            "on bare metal, load the cpufreq driver and set the governor to `performance`."))
    elif governor != "performance":
        found.append(Finding(
            "governor", "warning",
            f"The CPU frequency governor is {governor!r}, not 'performance': the clock follows "
            "the load, so short and idle-heavy workloads (start-up, latency) run slower and vary.",
            "`cpupower frequency-set -g performance` (or write `performance` to "
            "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor) before the run."))
    freq = host.get("frequency") or {}
    low, high = freq.get("min_khz"), freq.get("max_khz")
    if low and high and low != high:
        found.append(Finding(
            "frequency", "warning",
            f"Frequency scaling is on: the CPU clock may move between {int(low) / 1000:.0f} "
            f"and {int(high) / 1000:.0f} MHz during the run.",
            "pin the frequency (set scaling_min_freq = scaling_max_freq) for stable numbers."))
    if str(freq.get("boost")) == "1":
        found.append(Finding(
            "frequency", "warning",
            "Turbo/boost is on: the clock depends on temperature and on how many cores are busy.",
            "turn boost off (/sys/devices/system/cpu/cpufreq/boost = 0, or intel_pstate/no_turbo "
            "= 1) while benchmarking."))
    return found


def _cells(frame: pd.DataFrame, mask: pd.Series) -> tuple[str, ...]:
    # two columns, each pair once (in order of appearance), before any per-row Python
    picked = frame.loc[mask, ["tier", "label"]].drop_duplicates()
    return tuple(dict.fromkeys(f"{t}: {label}" for t, label in
                               zip(picked["tier"], picked["label"], strict=True)))


def _samples(frame: pd.DataFrame, manifest: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    # compared as they are: a string conversion of a million-row column costs seconds
    families = frame["workload"].map(lambda w: family(str(w)))
    network = (families == "network") & (frame["meta.network_path"] == "loopback")
    if network.any():
        found.append(Finding(
            "loopback", "warning",
            "Network results went over loopback: they measure the kernel's loopback path "
            "(no NIC, no wire), so absolute numbers say nothing about a real network.",
            "read them as the cost of the network stack per tier; for a real path run the "
            "peer on another interface or host.", _cells(frame, network)))
    rw = frame["param.rw"] if "param.rw" in frame else pd.Series("", index=frame.index)
    cached = (families == "disk") & (frame["meta.page_cache"] == "used") \
        & rw.isin(["read", "randread"])
    if cached.any():
        found.append(Finding(
            "page_cache", "warning",
            "Buffered disk reads (direct=false) are served largely from the page cache: they "
            "measure memory, not the disk.",
            "use direct=true for device numbers, or a file larger than RAM.",
            _cells(frame, cached)))
    accel = frame["meta.accelerator"] == "tcg"
    tier_meta = manifest.get("tier_metadata") or {}
    tcg_tiers = [t for t, m in tier_meta.items() if isinstance(m, dict)
                 and m.get("accelerator") == "tcg"]
    if accel.any() or tcg_tiers:
        tiers = sorted(set(frame.loc[accel, "tier"].astype(str)) | set(tcg_tiers))
        found.append(Finding(
            "tcg", "warning",
            f"Tier(s) {', '.join(tiers)} ran under TCG (QEMU's software emulation), not KVM: "
            "their overheads are emulation costs, many times a real VM's.",
            "run on a host where /dev/kvm works (vmx/svm in /proc/cpuinfo) for KVM numbers.",
            tuple(tiers)))
    return found


def _per_cell(frame: pd.DataFrame, cv_threshold: float,
              min_repetitions: int) -> list[Finding]:
    noisy, few, flagged = [], [], []
    outlier_count = 0
    main = headline(frame[["tier", "label", "workload", "metric", "value"]])
    for (tier, label, metric), group in main.groupby(["tier", "label", "metric"], observed=True,
                                                     sort=True):
        values = group["value"].to_numpy(dtype=float)
        where = f"{tier}: {label} {metric}"
        spread = stats.cv(values)
        if spread > cv_threshold:
            noisy.append(f"{where} (CV {spread:.0%})")
        if len(values) < min_repetitions:
            few.append(f"{where} (n={len(values)})")
        count = int(stats.outliers(values).sum())
        if count:
            outlier_count += count
            flagged.append(f"{where} ({count} of {len(values)})")
    found = []
    if noisy:
        found.append(Finding(
            "noisy", "warning",
            f"{len(noisy)} cell(s) are noisy: coefficient of variation above "
            f"{cv_threshold:.0%}.",
            "quiet the machine (no other load, performance governor), lengthen each run, or "
            "set `target_ci` in the scenario for adaptive repetitions.", tuple(noisy)))
    if few:
        found.append(Finding(
            "few_repetitions", "warning",
            f"{len(few)} cell(s) have fewer than {min_repetitions} repetitions: their 95% CIs "
            "are wide and a difference cannot be called significant.",
            f"raise `repetitions` to {min_repetitions} or more (or set `target_ci`).",
            tuple(few)))
    if flagged:
        found.append(Finding(
            "outliers", "info",
            f"{outlier_count} sample(s) are outliers by the median/MAD rule (|modified z| > "
            f"{stats.OUTLIER_Z}); medians are robust to them, but they hint at interference.",
            "look at the distributions in the report; rerun if they cluster in time.",
            tuple(flagged)))
    return found


def check(manifest: dict[str, Any], frame: pd.DataFrame, cv_threshold: float = NOISY_CV,
          min_repetitions: int = MIN_REPETITIONS) -> list[Finding]:
    """Every methodology finding for one run, host facts first."""
    found = _host(manifest)
    if not frame.empty:
        found += _samples(frame, manifest)
        found += _per_cell(frame, cv_threshold, min_repetitions)
    return found
