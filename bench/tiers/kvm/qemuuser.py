"""Who QEMU runs as for bench's domains: libvirt's unprivileged QEMU user (Debian:
libvirt-qemu), with the run's own disks owned by it, whenever that user can reach every file
the guest needs; else root, with the reason in the tier's metadata.

The label is static (`<seclabel model='dac' relabel='no'>`): libvirt does not chown anything
back and forth. bench gives the run's files (qcow2 overlay, scratch disk, console log, cache
disks) to the QEMU user itself; the shared guest files (base disk, kernel, initramfs) stay
root's and only need to be readable by others, which they are.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from bench.tiers.kvm import libvirtd


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    reason: str = ""  # why root is used instead ("" when the QEMU user is)

    @property
    def label(self) -> str:
        return f"+{self.uid}:+{self.gid}"

    def give(self, path: Path) -> None:
        """Hand one of the run's files to QEMU's user (no-op when QEMU runs as root)."""
        if self.uid:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


ROOT = Identity("root", 0, 0)


def _blocked(path: Path, uid: int, groups: set[int], need: int) -> str | None:
    """Why `uid` cannot reach `path` (search every directory above it, then `need` on it)."""
    for current in [*reversed(path.parents), path]:
        info = current.stat()
        mode = stat.S_IMODE(info.st_mode)
        wanted = need if current == path else 1  # x on the directories on the way
        if info.st_uid == uid:
            ok = (mode >> 6) & wanted == wanted
        elif info.st_gid in groups:
            ok = (mode >> 3) & wanted == wanted
        else:
            ok = mode & wanted == wanted
        if not ok:
            return f"{current} (mode {mode:o}, owner {info.st_uid}) is closed to it"
    return None


def choose(shared: list[Path], own: list[Path]) -> Identity:
    """The QEMU user when it can read `shared` and reach the directories of `own` (which bench
    then gives it), else root with the reason."""
    name = libvirtd.qemu_user()
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return Identity("root", 0, 0, f"libvirt's QEMU user {name!r} does not exist here")
    if account.pw_uid == 0:
        return Identity("root", 0, 0, "qemu.conf runs QEMU as root")
    groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {account.pw_gid}
    for path, need in [*((p, 4) for p in shared), *((p.parent, 1) for p in own)]:
        problem = _blocked(path, account.pw_uid, groups, need)
        if problem:
            return Identity("root", 0, 0, f"{name} cannot reach {path}: {problem}")
    return Identity(name, account.pw_uid, account.pw_gid)
