"""Read-only visibility probe: what this instance sees of the machine and may do to it.

Prints one JSON object. It only reads: module loading is judged from the capability sets and
/proc/sys/kernel/modules_disabled (nothing is loaded), writable /sys and /proc/sys from their
mount flags (nothing is written), the kernel log from syslog(READ_ALL) into a small buffer
(which leaves the log as it is).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
from typing import Any

CAP_SYS_MODULE = 16
CAP_SYS_ADMIN = 21
SYSLOG_ACTION_READ_ALL = 3


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _status() -> dict[str, str]:
    found = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        found[key] = value.strip()
    return found


def _meminfo_kib(name: str) -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def _mount_readonly(target: str) -> bool | None:
    """Whether the mount that holds `target` is read-only (per-mount or super options)."""
    best: tuple[int, bool] | None = None
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        point = fields[4]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            opts = fields[5].split(",") + (rest[2].split(",") if len(rest) > 2 else [])
            best = (len(point), "ro" in opts)
    return None if best is None else best[1]


def _klog_readable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)
        return int(libc.klogctl(SYSLOG_ACTION_READ_ALL, buf, 256)) >= 0
    except (OSError, AttributeError):
        return False


def _keyctl_errno() -> int | None:
    """keyctl(KEYCTL_GET_KEYRING_ID, session keyring, no create): reads an ID. No capability
    guards it; Docker's default seccomp profile refuses it (EPERM). 0: it ran."""
    number = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
    if number is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.syscall(number, 0, -3, 0) >= 0 else ctypes.get_errno()


def _lsm() -> str:
    for path in ("/proc/self/attr/apparmor/current", "/proc/self/attr/current"):
        text = _read(path)
        if text is not None and text.strip("\x00\n "):
            return text.strip("\x00\n ")
    return "none"


def _processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cpu_quota() -> float | None:
    """The CPU quota of this process's cgroup as it sees it (v2 cpu.max or v1 cfs files)."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if text:
        quota, _, period = text.split()[0], None, text.split()[1]
        return None if quota == "max" else int(quota) / int(period)
    quota_s = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or _read(
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us")
    period_s = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") or _read(
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us")
    if quota_s and period_s and int(quota_s) > 0:
        return int(quota_s) / int(period_s)
    return None


def probe() -> dict[str, Any]:
    status = _status()
    cap_eff = int(status.get("CapEff", "0"), 16)
    cap_bnd = int(status.get("CapBnd", "0"), 16)
    modules = _read("/proc/modules")
    uptime = _read("/proc/uptime")
    loadavg = _read("/proc/loadavg")
    pid1 = (_read("/proc/1/comm") or "?").strip()
    dev = sorted(os.listdir("/dev")) if os.path.isdir("/dev") else []
    namespaces: dict[str, str | None] = {}
    for name in ("user", "time", "pid", "net", "mnt", "uts", "ipc", "cgroup"):
        try:
            namespaces[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            namespaces[name] = None
    return {
        "boot_id": (_read("/proc/sys/kernel/random/boot_id") or "").strip(),
        "memtotal_kib": _meminfo_kib("MemTotal"),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "cpu_quota": _cpu_quota(),
        "uptime_s": float(uptime.split()[0]) if uptime else None,
        "loadavg_1": float(loadavg.split()[0]) if loadavg else None,
        "processes": len(_processes()),
        "hostname": socket.gethostname(),
        "pid1": pid1,
        "dev_nodes": len(dev),
        "dev_sample": dev[:40],
        "proc_modules_readable": modules is not None,
        "proc_modules_lines": len(modules.splitlines()) if modules else 0,
        "modules_disabled": (_read("/proc/sys/kernel/modules_disabled") or "").strip() or None,
        "cap_sys_module": bool(cap_eff >> CAP_SYS_MODULE & 1),
        "cap_sys_admin": bool(cap_eff >> CAP_SYS_ADMIN & 1),
        "euid": os.geteuid(),
        "cap_eff": f"{cap_eff:016x}",
        "cap_bnd": f"{cap_bnd:016x}",
        "cap_bnd_count": bin(cap_bnd).count("1"),
        "sys_readonly": _mount_readonly("/sys"),
        "proc_sys_readonly": _mount_readonly("/proc/sys"),
        "seccomp": int(status.get("Seccomp", "-1")),
        "no_new_privs": int(status.get("NoNewPrivs", "-1")),
        "keyctl_errno": _keyctl_errno(),
        "lsm": _lsm(),
        "uid_map": " ".join((_read("/proc/self/uid_map") or "").split()),
        "namespaces": namespaces,
        "klog_readable": _klog_readable(),
        "pid_max": int((_read("/proc/sys/kernel/pid_max") or "0").strip() or 0),
    }


if __name__ == "__main__":
    print(json.dumps(probe()))
