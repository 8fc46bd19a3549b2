"""Constructed run directories with known answers, for tests, benchmarks and demos.

`write_run` writes a complete run directory (manifest.json, samples.jsonl, runs.jsonl) in the
real format, with samples drawn from log-normal distributions whose medians are set by the
caller, so a test knows what a report, a comparison or a change-point search should find.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.samples import FORMAT_VERSION, Cell

HOSTILE = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>"


@dataclass
class Spec:
    """What to write. `slowdown` multiplies a tier's cost (1.10 = 10% slower than host)."""

    run_id: str
    tiers: tuple[str, ...] = ("host", "ns", "docker")
    slowdown: dict[str, float] = field(default_factory=lambda: {"ns": 1.02, "docker": 1.06,
                                                                "kvm": 1.30})
    repetitions: int = 8
    noise: float = 0.01  # log-normal sigma (about the CV)
    seed: int = 0
    started_at: float = 1_790_000_000.0
    hostname: str = "testhost"
    shift: float = 1.0  # multiplies every cost (a whole-run regression, for history tests)
    hostile: bool = False  # put HOSTILE strings where results and hosts carry text
    sweep: bool = True  # disk cells over rw x direct and a tunable: heat maps
    density: bool = True
    extra_cells: int = 0  # more cpu cells (param `variant`), to scale a run up


def _cells(spec: Spec) -> Iterator[tuple[Cell, list[tuple[str, str, str, float]]]]:
    """(cell, [(metric, unit, direction, host median)])"""
    note = {"note": HOSTILE} if spec.hostile else {}
    for tier in spec.tiers:
        for threads in (1, 0):
            yield (Cell(tier=tier, workload="cpu.sysbench",
                        params={"seconds": 1, "threads": threads, **note}),
                   [("events_per_s", "events/s", "higher", 4000.0 * (2 if threads == 0 else 1)),
                    ("latency_p95_ms", "ms", "lower", 0.26)])
        for variant in range(spec.extra_cells):
            yield (Cell(tier=tier, workload="cpu.sysbench",
                        params={"seconds": 1, "threads": 1, "variant": variant}),
                   [("events_per_s", "events/s", "higher", 4000.0 + 10 * variant),
                    ("latency_p95_ms", "ms", "lower", 0.26)])
        if spec.sweep:
            tunable_key = HOSTILE if spec.hostile else "vm.dirty_ratio"
            for rw in ("read", "randwrite"):
                for direct in (True, False):
                    for ratio in (10, 40):
                        base = (1000.0 if rw == "read" else 120.0) * (3 if not direct else 1)
                        yield (Cell(tier=tier, workload="disk.fio",
                                    params={"rw": rw, "direct": direct, "size_mb": 64},
                                    tunables={tunable_key: ratio}),
                               [("bandwidth_MBps", "MB/s", "higher", base * (1 + ratio / 400)),
                                ("iops", "IO/s", "higher", base * 250),
                                ("clat_p99_us", "us", "lower", 4000.0 / base * 100)])
        yield (Cell(tier=tier, workload="network.iperf3", params={"seconds": 1}),
               [("throughput_Gbps", "Gbit/s", "higher", 18.0)])
        yield (Cell(tier=tier, workload="startup.noop"),
               [("first_instruction_ms", "ms", "lower", 2.0), ("total_ms", "ms", "lower", 3.0)])
        if spec.density:
            for instances in (1, 2, 4, 8, 16):
                yield (Cell(tier=tier, workload="density.idle",
                            params={"instances": instances}),
                       [("memory_per_instance_MB", "MB", "lower", 2.0 + 8 / instances)])


PHASES = {
    "host": ("create", "started", "first_instruction", "exit", "removed"),
    "ns": ("create", "clone", "namespaces_ready", "root_mounted", "cgroup_joined",
           "first_instruction", "exit", "removed"),
    "docker": ("create", "created", "started", "first_instruction", "exit", "removed"),
}


def _phases(tier: str, total: float, rng: np.random.Generator) -> dict[str, float]:
    names = PHASES.get(tier, PHASES["docker"])
    weights = np.arange(1, len(names), dtype=float) * np.exp(rng.normal(0, 0.01, len(names) - 1))
    steps = weights / weights.sum() * total
    stamps = np.concatenate(([0.0], np.cumsum(steps)))
    return {name: round(float(at), 4) for name, at in zip(names, stamps, strict=True)}


def manifest(spec: Spec) -> dict[str, Any]:
    hostname = spec.hostname + (HOSTILE if spec.hostile else "")
    text = "name: synthetic\n# " + (HOSTILE + "</script>" if spec.hostile else "constructed")
    return {
        "format": 1, "run_id": spec.run_id, "status": "complete",
        "started_at": spec.started_at, "finished_at": spec.started_at + 600,
        "host": {"hostname": hostname, "kernel": "6.1.0-synthetic", "cpu_model": "Synthetic CPU",
                 "cpus": 2, "governor": "schedutil",
                 "frequency": {"min_khz": "800000", "max_khz": "3000000", "boost": "1",
                               "driver": "acpi-cpufreq"},
                 "thp": "always [madvise] never", "sysctls": {"vm.dirty_ratio": "20"}},
        "image": {"hash": "synthetic", "tools": {"fio": "fio-3.33"},
                  "packages": {"fio": "3.33-1", "sysbench": "1.0.20+ds-6"}},
        "scenario": {"name": "synthetic", "text": text, "seed": spec.seed},
        "tiers": list(spec.tiers), "skipped_tiers": {},
        "plan": {"cells": 0, "runs": 0, "estimate_s": 0},
        "tier_metadata": {tier: {"accelerator": "tcg"} if tier == "kvm" else {}
                          for tier in spec.tiers},
    }


def write_run(results: Path, spec: Spec) -> Path:
    """Write the run directory results/<run_id>/ and return its path."""
    rng = np.random.default_rng(spec.seed)
    path = results / spec.run_id
    (path / "raw").mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest(spec), indent=1, sort_keys=True))
    stamp = spec.started_at
    with open(path / "samples.jsonl", "w", encoding="utf-8") as samples, \
            open(path / "runs.jsonl", "w", encoding="utf-8") as journal:
        for cell, metrics in _cells(spec):
            cell_json = cell.model_dump()
            key = cell.key
            factor = spec.slowdown.get(cell.tier, 1.0) if cell.tier != "host" else 1.0
            factor *= spec.shift
            for repetition in range(spec.repetitions):
                stamp += 1
                metadata: dict[str, Any] = {}
                if cell.workload == "network.iperf3":
                    metadata["network_path"] = "loopback" if cell.tier == "host" else "bridge"
                if cell.workload == "disk.fio":
                    metadata["page_cache"] = "bypassed" if cell.params["direct"] else "used"
                if cell.tier == "kvm":
                    metadata["accelerator"] = "tcg"
                noise = float(rng.normal(0, spec.noise))
                if cell.workload == "startup.noop":
                    total = metrics[1][3] * factor * math.exp(noise)
                    metadata["phases_ms"] = _phases(cell.tier, total, rng)
                for metric, unit, direction, median in metrics:
                    cost = factor if direction == "lower" else 1 / factor
                    value = median * cost * math.exp(noise + float(rng.normal(0, spec.noise / 4)))
                    if cell.workload == "startup.noop":
                        phases = metadata["phases_ms"]
                        value = phases["first_instruction" if metric.startswith("first")
                                       else "removed"]
                    samples.write(json.dumps({
                        "v": FORMAT_VERSION, "run_id": spec.run_id, "cell": cell_json,
                        "repetition": repetition, "metric": metric, "value": value,
                        "unit": unit, "direction": direction, "timestamp": stamp,
                        "metadata": metadata}, sort_keys=True) + "\n")
                journal.write(json.dumps({"key": f"{key}#{repetition}", "cell": key,
                                          "repetition": repetition, "status": "ok",
                                          "seconds": 1.0}) + "\n")
        if spec.hostile:
            journal.write(json.dumps({"key": "0#0", "cell": "0", "repetition": 0,
                                      "status": "failed", "seconds": 1.0, "error": HOSTILE,
                                      "stderr": HOSTILE}) + "\n")
    return path
