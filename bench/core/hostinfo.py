"""Facts about the host that go into every run's manifest: what could explain a number."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import bench

SYSCTLS = (
    "vm.dirty_ratio", "vm.dirty_background_ratio", "vm.dirty_bytes", "vm.dirty_background_bytes",
    "vm.dirty_expire_centisecs", "vm.dirty_writeback_centisecs", "vm.swappiness",
    "vm.vfs_cache_pressure", "vm.min_free_kbytes", "vm.watermark_scale_factor",
    "kernel.sched_autogroup_enabled", "net.core.rmem_max", "net.core.wmem_max",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_congestion_control",
)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def sysctl(name: str) -> str | None:
    return _read("/proc/sys/" + name.replace(".", "/"))


def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def governor() -> str | None:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def frequency() -> dict[str, Any]:
    """What can change the CPU clock during a run: the cpufreq range and turbo/boost."""
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    no_turbo = _read("/sys/devices/system/cpu/intel_pstate/no_turbo")
    return {
        "min_khz": _read(base + "scaling_min_freq"),
        "max_khz": _read(base + "scaling_max_freq"),
        "driver": _read(base + "scaling_driver"),
        "boost": _read("/sys/devices/system/cpu/cpufreq/boost")
        or (None if no_turbo is None else str(1 - int(no_turbo))),
    }


def cgroup_layout() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2"
    if Path("/sys/fs/cgroup/cpu").exists() or Path("/sys/fs/cgroup/memory").exists():
        return "v1" + ("+v2(unified)" if Path("/sys/fs/cgroup/unified").exists() else "")
    return "none"


def collect() -> dict[str, Any]:
    mem_total = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "os": (_read("/etc/debian_version") or "unknown"),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem_total,
        "governor": governor(),
        "cpufreq": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "frequency": frequency(),
        "thp": thp,
        "cgroups": cgroup_layout(),
        "sysctls": {name: sysctl(name) for name in SYSCTLS},
        "python": sys.version.split()[0],
        "bench_version": bench.__version__,
    }
