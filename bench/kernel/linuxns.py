"""Namespace, root-switching and capability system calls through libc (Python 3.11 has none).

Only the calls the `ns` tier needs: unshare(2), setns(2), pivot_root(2), prctl(2) and
capset(2), plus the names of the capabilities.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from bench.kernel.libc import LIBC

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# /proc/PID/ns/<name> -> the flag setns(2) checks it against, in the order to enter them:
# mnt last, because entering it changes what /proc and every later path mean.
NAMESPACE_FILES: dict[str, int] = {
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "net": CLONE_NEWNET,
    "cgroup": CLONE_NEWCGROUP,
    "pid": CLONE_NEWPID,
    "mnt": CLONE_NEWNS,
}

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SYS_PIVOT_ROOT = 155  # x86_64
LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

# The set Docker (moby's oci/caps/defaults.go) leaves a container with.
DOCKER_DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})

_libc = LIBC
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    rc = _libc.syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode())
    _check(int(rc), f"pivot_root({new_root}, {put_old})")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        return len(CAPABILITIES) - 1


def cap_numbers(names: frozenset[str]) -> set[int]:
    unknown = sorted(n for n in names if n.upper().removeprefix("CAP_") not in CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities: {', '.join(unknown)}; "
                         f"known: {', '.join(CAPABILITIES)}")
    return {CAPABILITIES.index(n.upper().removeprefix("CAP_")) for n in names}


def drop_bounding(keep: set[int]) -> None:
    """Cut the bounding set to `keep`: no later exec can gain more. Needs CAP_SETPCAP."""
    for cap in range(last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def set_capabilities(keep: set[int]) -> None:
    """Effective, permitted and inheritable sets to exactly `keep`; the ambient set emptied."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in keep)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def drop_capabilities(keep: set[int]) -> None:
    """Leave this process (and what it execs, as root) with exactly `keep`."""
    drop_bounding(keep)
    set_capabilities(keep)


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(signal_number: int) -> None:
    prctl(PR_SET_PDEATHSIG, signal_number)
