"""mount(2)/umount2(2) through libc, and a look-up of the file system under a path."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from bench.kernel.libc import LIBC

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 4
SYS_OPEN_TREE = 428  # x86_64 (and every architecture since the calls came, 5.2)
SYS_MOVE_MOUNT = 429

_libc = LIBC
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def mount(source: str, target: str | Path, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    rc = _libc.mount(source.encode(), str(target).encode(),
                     fstype.encode() if fstype else None, flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def bind(source: str | Path, target: str | Path, readonly: bool = False) -> None:
    """A recursive bind that receives the source's mount events but sends none back: where /
    is a shared mount (systemd hosts), unmounting <target>/sys/fs/cgroup would otherwise
    unmount the host's /sys/fs/cgroup, and a tmpfs on <target>/tmp would appear in the source."""
    mount(str(source), target, None, MS_BIND | MS_REC)
    mount("none", target, None, MS_SLAVE | MS_REC)
    if readonly:
        mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def clone_tree(source: str | Path) -> int:
    """A detached copy of the mounts at `source` (open_tree OPEN_TREE_CLONE, recursive), as
    a descriptor `attach` can mount in another mount namespace. The caller closes it."""
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, str(source).encode(),
                       OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {source}: {os.strerror(err)}")
    return int(fd)


def attach(tree: int, target: str | Path) -> None:
    """Mount a `clone_tree` copy on `target` of the caller's mount namespace (move_mount)."""
    rc = _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, str(target).encode(),
                       MOVE_MOUNT_F_EMPTY_PATH)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount onto {target}: {os.strerror(err)}")


def umount(target: str | Path, lazy: bool = True) -> None:
    rc = _libc.umount2(str(target).encode(), MNT_DETACH if lazy else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounts() -> list[dict[str, str]]:
    """The current mount table from /proc/self/mountinfo."""
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        table.append({
            "mount_id": fields[0],
            "dev": fields[2],
            "mount_point": fields[4].replace("\\040", " "),
            "fstype": rest[0] if rest else "",
            "source": rest[1] if len(rest) > 1 else "",
        })
    return table


def mounts_under(prefix: str | Path) -> list[str]:
    """Mount points at or below `prefix`, deepest first (the order to unmount them)."""
    root = str(prefix).rstrip("/")
    found = [m["mount_point"] for m in mounts()
             if m["mount_point"] == root or m["mount_point"].startswith(root + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(prefix: str | Path) -> list[str]:
    removed = []
    for point in mounts_under(prefix):
        try:
            umount(point)
            removed.append(point)
        except OSError:
            pass
    return removed


def filesystem_of(path: str | Path) -> dict[str, Any]:
    """File system type, source device and mount point of the file system holding `path`."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best: dict[str, str] | None = None
    for entry in mounts():
        if entry["dev"] == dev and (
            best is None or len(entry["mount_point"]) > len(best["mount_point"])
        ) and str(Path(path).resolve()).startswith(entry["mount_point"]):
            best = entry
    if best is None:
        return {"fstype": "unknown", "device": dev, "mount_point": "?"}
    return {"fstype": best["fstype"], "device": best["source"], "dev": dev,
            "mount_point": best["mount_point"]}
