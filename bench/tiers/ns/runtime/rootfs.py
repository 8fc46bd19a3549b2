"""A container's root, made inside its new mount namespace: overlayfs over the bench image,
a fresh /proc, a read-only /sys, a minimal /dev, the scratch directory, then pivot_root.

Runs in the container's PID 1 before anything else is started in it; nothing here is visible
on the host (the namespace's mounts are private and vanish with its last process).
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

from bench.kernel import linuxns, sysmount
from bench.kernel.sysmount import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

MS_STRICTATIME = 1 << 24
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0)}
LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


@dataclass(frozen=True)
class RootPlan:
    lower: str  # the bench image's root file system (read-only lower layer)
    upper: str  # this container's writable layer on the host
    work: str  # overlayfs work directory (same file system as upper)
    merged: str  # where the overlay is mounted before pivot_root
    scratch_bind: str | None  # a host directory bind-mounted on /scratch, or None (overlay)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def overlay_options(self) -> str:
        return f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work}"


def _dev(dev: str) -> None:
    sysmount.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, (major, minor) in DEVICES.items():
            os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        for name, target in LINKS.items():
            os.symlink(target, f"{dev}/{name}")
        os.mkdir(f"{dev}/pts", 0o755)
        os.mkdir(f"{dev}/shm", 0o1777)
    finally:
        os.umask(old)
    sysmount.mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=620")
    sysmount.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "mode=1777,size=65536k")


# parts of /proc that reach the host's kernel: read-only, as Docker's readonlyPaths (the C init
# does the same); /proc/sys/net stays writable, its sysctls are the container's netns's own
READONLY_PROC = ("sys", "sysrq-trigger", "bus", "fs", "irq")
LOCKED = MS_NOSUID | MS_NODEV | MS_NOEXEC


def _protect_proc(proc: str) -> None:
    for name in READONLY_PROC:
        path = f"{proc}/{name}"
        if os.path.exists(path):
            sysmount.mount(path, path, None, MS_BIND | MS_REC)
            sysmount.mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | LOCKED)
    net = f"{proc}/sys/net"
    sysmount.mount(net, net, None, MS_BIND)
    sysmount.mount("none", net, None, MS_BIND | MS_REMOUNT | LOCKED)


def make_root(plan: RootPlan) -> None:
    """Build the container's root and switch to it. The caller is alone in a new mount ns."""
    sysmount.mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
    merged = plan.merged
    sysmount.mount("overlay", merged, "overlay", 0, plan.overlay_options)
    if plan.scratch_bind is not None:
        sysmount.mount(plan.scratch_bind, f"{merged}/scratch", None, MS_BIND | MS_REC)
    sysmount.mount("proc", f"{merged}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _protect_proc(f"{merged}/proc")
    sysmount.mount("sysfs", f"{merged}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _dev(f"{merged}/dev")
    # pivot_root(".", "."): the old root ends up stacked on the new one; detach it.
    os.chdir(merged)
    linuxns.pivot_root(".", ".")
    sysmount.umount(".", lazy=True)
    os.chdir("/")
