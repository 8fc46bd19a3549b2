"""Memory accounting truth: what the tier reports an instance uses vs what it costs the host.

In the instance, one after another: anonymous memory (held by a process), clean page cache (a
file written and fsynced), dirty page cache (a file written, not synced) and slab (many empty
files and socket pairs, held). Around each step bench reads the host's /proc/meminfo (the
median of a few reads: AnonPages, Cached, Dirty, Slab), the instance's processes' PSS, and what
the tier reports (`Instance.memory_report`: cgroup usage and memory.stat, docker stats, libvirt
memory stats). The error of a reading is (reported - true) / true in %, the true cost being the
step's own /proc/meminfo counter (`Instance.host_memory_counter`; for a VM, whose guest memory
of every kind is QEMU's anonymous memory, the QEMU process's PSS). The host's counters carry
every other process's churn: read them with their CI over repetitions.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from bench.core.samples import Measurement
from bench.tiers.base import Background, Instance
from bench.workloads.base import Params, RunContext, Workload
from bench.workloads.isolation.common import inside, source

MiB = 1 << 20
HOLD_S = 300  # holders end by themselves if bench dies; bench stops them first
# step -> the host counter that is its true cost, and the tier's own stat keys for it
# (cgroup v1 memory.stat, cgroup v2 memory.stat, docker stats' v1 names)
STEPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "anon": ("AnonPages", ("rss", "anon", "total_rss")),
    "clean_cache": ("Cached", ("cache", "file", "total_cache")),
    "dirty_cache": ("Cached", ("cache", "file", "total_cache")),
    "slab": ("Slab", ("kmem_usage", "slab", "kernel")),
}


Kind = Literal["anon", "clean_cache", "dirty_cache", "slab"]
KINDS: tuple[Kind, ...] = ("anon", "clean_cache", "dirty_cache", "slab")


class AccountingParams(Params):
    anon_mb: int = Field(100, ge=1, le=1024)
    clean_mb: int = Field(100, ge=1, le=1024)
    dirty_mb: int = Field(100, ge=1, le=1024)
    slab_files: int = Field(20000, ge=0, le=200_000)
    sockets: int = Field(400, ge=0, le=4000, description="socket pairs")
    settle_s: float = Field(0.3, ge=0, le=10)
    cycles: int = Field(3, ge=1, le=20, description="make/unmake cycles per kind (median)")
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), min_length=1)


def meminfo() -> dict[str, int]:
    """Median of a few reads of /proc/meminfo, in bytes (Slab = SReclaimable + SUnreclaim)."""
    reads = []
    for index in range(5):
        if index:
            time.sleep(0.02)
        found = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            found[name] = int(rest.split()[0]) * 1024
        reads.append(found)
    return {k: int(statistics.median(r[k] for r in reads))
            for k in ("AnonPages", "Cached", "Dirty", "Slab", "Shmem")}


def pss(pids: set[int] | None) -> int | None:
    if pids is None:
        return None
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def dirty_settings() -> dict[str, str]:
    found = {}
    for name in ("dirty_bytes", "dirty_background_bytes", "dirty_ratio",
                 "dirty_background_ratio", "dirty_expire_centisecs"):
        with contextlib.suppress(OSError):
            found[name] = Path(f"/proc/sys/vm/{name}").read_text().strip()
    return found


def _delta(cycles: list[dict[str, Any]], source: str, key: str | None,
           rise_only: bool = False) -> float | None:
    """Median over cycles of a reading's rise on make and fall on unmake (their mean cancels
    a steady drift of other processes); None if a view lacks the reading."""
    per_cycle = []
    for view in cycles:
        values = []
        for moment in ("before", "made", "after"):
            reading = view[moment][source]
            value = reading if key is None else (reading or {}).get(key)
            if value is None:
                return None
            values.append(value)
        before, peak, after = values
        per_cycle.append(peak - before if rise_only else (2 * peak - before - after) / 2)
    return float(statistics.median(per_cycle)) if per_cycle else None


def error_pct(reported: float, true: float) -> float | None:
    return (reported - true) / true * 100 if true > 0 else None


class Accounting(Workload[AccountingParams]):
    name = "isolation.accounting"
    family = "isolation"
    headline = ("anon_usage_error_pct", "dirty_cache_usage_error_pct", "slab_usage_error_pct")
    description = "known anon / clean / dirty page cache / slab inside vs tier's and host's view"
    params_model = AccountingParams
    tools = ("python3",)

    def estimate_seconds(self, params: AccountingParams) -> float:
        return 6.0 + (params.anon_mb + params.clean_mb + params.dirty_mb) / 200

    def run(self, ctx: RunContext, params: AccountingParams) -> list[Measurement]:
        instance = ctx.main()
        scratch = instance.scratch_dir()
        tag = f"{time.monotonic_ns() % 10**9}"
        paths = {"anon": f"/tmp/bench-anon-{tag}", "clean_cache": f"{scratch}/bench-clean-{tag}",
                 "dirty_cache": f"{scratch}/bench-dirty-{tag}",
                 "slab": f"{scratch}/bench-slab-{tag}"}
        held: list[Background] = []

        def make(step: str) -> None:
            if step == "anon":
                held.append(self._hold(ctx, instance, ["anon", str(params.anon_mb)],
                                       paths[step] + ".ready"))
            elif step == "slab":
                held.append(self._hold(ctx, instance, ["slab", paths[step],
                                                       str(params.slab_files),
                                                       str(params.sockets)],
                                       paths[step] + ".ready"))
            else:
                size = params.clean_mb if step == "clean_cache" else params.dirty_mb
                inside(instance, "acct", ["write", paths[step], str(size),
                                          "1" if step == "clean_cache" else "0"],
                       ctx.remaining())

        def unmake(step: str) -> None:
            while held:
                held.pop().stop()
            instance.exec(["rm", "-rf", paths[step], paths[step] + ".ready"], ctx.remaining())

        views: dict[str, list[dict[str, Any]]] = {step: [] for step in params.kinds}
        try:
            for _ in range(params.cycles):
                for step in params.kinds:
                    before = self._view(instance)
                    make(step)
                    time.sleep(params.settle_s)
                    made = self._view(instance)
                    unmake(step)
                    time.sleep(params.settle_s)
                    views[step].append({"before": before, "made": made,
                                        "after": self._view(instance)})
        finally:
            for background in held:
                with contextlib.suppress(Exception):
                    background.stop()
            with contextlib.suppress(Exception):
                instance.exec(["rm", "-rf", *paths.values()], 60)
        ctx.save_raw("accounting.json", json.dumps(views, indent=1))
        counters = {step: instance.host_memory_counter(STEPS[step][0]) for step in views}
        return self._measurements(views, params, counters)

    def _hold(self, ctx: RunContext, instance: Instance, args: list[str],
              marker: str) -> Background:
        """Start an acct.py holder and wait until it says it holds its memory."""
        background = instance.spawn(["python3", "-c", source("acct"), args[0], *args[1:],
                                     marker, str(HOLD_S)])
        while True:
            ctx.remaining()
            try:
                instance.exec(["test", "-e", marker], timeout=10)
                return background
            except Exception:  # not there yet
                time.sleep(0.05)

    def _view(self, instance: Instance) -> dict[str, Any]:
        return {"meminfo": meminfo(), "pss": pss(instance.host_pids()),
                "tier": instance.memory_report()}

    def _measurements(self, views: dict[str, list[dict[str, Any]]], params: AccountingParams,
                      counters: dict[str, str | None]) -> list[Measurement]:
        made = {"anon": params.anon_mb * MiB, "clean_cache": params.clean_mb * MiB,
                "dirty_cache": params.dirty_mb * MiB, "slab": None}
        found = []
        for step, cycles in views.items():
            _, stat_keys = STEPS[step]
            counter = counters[step]

            # slab is freed lazily after the files go: its rise alone is its cost
            rise_only = step == "slab"
            true = (_delta(cycles, "meminfo", counter, rise_only) if counter
                    else _delta(cycles, "pss", None, rise_only))
            meta = {"made_bytes": made[step], "cycles": len(cycles), "vm_dirty": dirty_settings(),
                    "host_counter": counter or "PSS of the instance's processes on the host"}
            assert true is not None
            found.append(Measurement(metric=f"{step}_true_MiB", value=true / MiB, unit="MiB",
                                     direction="lower", metadata=meta))
            reported = _delta(cycles, "tier", "usage", rise_only)
            if reported is not None:
                found.append(Measurement(metric=f"{step}_reported_MiB", value=reported / MiB,
                                         unit="MiB", direction="lower", metadata=meta))
                err = error_pct(reported, true)
                if err is not None:
                    found.append(Measurement(metric=f"{step}_usage_error_pct", value=err,
                                             unit="%", direction="lower", metadata=meta))
            tier_keys = cycles[0]["made"]["tier"]
            key = next((k for k in stat_keys if k in tier_keys), None)
            if key is not None:
                stat = _delta(cycles, "tier", key, rise_only)
                err = error_pct(stat, true) if stat is not None else None
                if err is not None:
                    found.append(Measurement(metric=f"{step}_stat_error_pct", value=err,
                                             unit="%", direction="lower",
                                             metadata=meta | {"stat": key}))
            if "docker_stats" in tier_keys:
                shown = _delta(cycles, "tier", "docker_stats", rise_only)
                err = error_pct(shown, true) if shown is not None else None
                if err is not None:
                    found.append(Measurement(metric=f"{step}_docker_stats_error_pct", value=err,
                                             unit="%", direction="lower", metadata=meta))
            if step == "anon":
                pss_delta = _delta(cycles, "pss", None)
                if pss_delta is not None:
                    found.append(Measurement(metric="anon_pss_MiB", value=pss_delta / MiB,
                                             unit="MiB", direction="lower", metadata=meta))
            if step == "dirty_cache":  # the rise alone: the fall is the file's removal
                dirty = _delta(cycles, "meminfo", "Dirty", rise_only=True)
                assert dirty is not None
                found.append(Measurement(metric="dirty_host_Dirty_MiB", value=dirty / MiB,
                                         unit="MiB", direction="higher", metadata=meta))
                stat_key = next((k for k in ("dirty", "file_dirty") if k in tier_keys), None)
                if stat_key is not None:
                    shown = _delta(cycles, "tier", stat_key, rise_only=True)
                    if shown is not None:
                        found.append(Measurement(metric="dirty_stat_MiB", value=shown / MiB,
                                                 unit="MiB", direction="higher",
                                                 metadata=meta | {"stat": stat_key}))
        return found
