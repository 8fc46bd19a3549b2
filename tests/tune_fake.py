"""A fake procfs/sysfs tree for the tuning tests, and a target that behaves like the kernel where
it matters: the dirty_bytes/dirty_ratio pairs zero each other and refuse 0, read_ahead_kb is kept
in 4 KiB pages, a scheduler change resets nr_requests."""

from __future__ import annotations

import os
from pathlib import Path

from bench.tune.catalog import Tunable, TuneError
from bench.tune.sysfs import HostFs

VALUES = {
    "proc/sys/vm/dirty_ratio": "20",
    "proc/sys/vm/dirty_background_ratio": "10",
    "proc/sys/vm/dirty_bytes": "0",
    "proc/sys/vm/dirty_background_bytes": "0",
    "proc/sys/vm/dirty_expire_centisecs": "3000",
    "proc/sys/vm/dirty_writeback_centisecs": "500",
    "proc/sys/vm/swappiness": "60",
    "proc/sys/vm/vfs_cache_pressure": "100",
    "proc/sys/vm/watermark_scale_factor": "10",
    "proc/sys/vm/min_free_kbytes": "67584",
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never",
    "sys/devices/virtual/block/vda/queue/scheduler": "none [mq-deadline] kyber bfq",
    "sys/devices/virtual/block/vda/queue/read_ahead_kb": "128",
    "sys/devices/virtual/block/vda/queue/nr_requests": "256",
    "proc/sys/net/core/rmem_max": "212992",
    "proc/sys/net/core/wmem_max": "212992",
    "proc/sys/net/core/rmem_default": "212992",
    "proc/sys/net/core/wmem_default": "212992",
    "proc/sys/net/ipv4/tcp_rmem": "4096\t131072\t6291456",
    "proc/sys/net/ipv4/tcp_wmem": "4096\t16384\t4194304",
}
PAIRS = {"dirty_bytes": "dirty_ratio", "dirty_ratio": "dirty_bytes",
         "dirty_background_bytes": "dirty_background_ratio",
         "dirty_background_ratio": "dirty_background_bytes"}


def make_root(base: Path) -> Path:
    """A tree like the kernel's: /sys/block/vda is a symlink into /sys/devices."""
    root = base / "root"
    for rel, text in VALUES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (root / "sys/block").mkdir(parents=True)
    os.symlink("../devices/virtual/block/vda", root / "sys/block/vda")
    return root


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


class FakeKernel(HostFs):
    """HostFs over the fake tree, with the kernel's side effects; counts the writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[tuple[str, str]] = []

    def write(self, tunable: Tunable, device: str | None, text: str) -> None:
        path = self.resolve(tunable, device)
        leaf = path.name
        if leaf in PAIRS and leaf.endswith("bytes") and int(text) == 0:
            raise TuneError(f"The kernel refused {text!r} for {tunable.name}: Invalid argument.")
        self.writes.append((tunable.name, text))
        if tunable.type == "choice":
            offered = [w.strip("[]") for w in path.read_text().split()]
            path.write_text(" ".join(f"[{w}]" if w == text else w for w in offered) + "\n")
            if leaf == "scheduler":
                (path.parent / "nr_requests").write_text("64\n")
            return
        if leaf == "read_ahead_kb":
            text = str(int(text) // 4 * 4)
        path.write_text(text + "\n")
        if leaf in PAIRS:
            (path.parent / PAIRS[leaf]).write_text("0\n")
