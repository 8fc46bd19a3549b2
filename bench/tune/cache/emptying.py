"""Emptying a cache layer without losing the data above it: the `cold` cache state.

Dirty data is written back first; then bcache detaches its cache set and attaches it again
(detaching drops what the set held for the device), and device-mapper caches are swapped for a
plain linear mapping of the slow device while their cache metadata (dm-cache) or the cache
device's superblock (dm-writecache) is zeroed, then loaded again: both start with an empty
cache. The file system on top stays mounted throughout (suspend/reload/resume).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.tune.cache.devices import Built
from bench.tune.cache.shell import Shell
from bench.tune.catalog import TuneError


def empty_cache(sh: Shell, built: Built, timeout: float = 120.0) -> None:
    kind = built.recipe.kind
    if kind == "plain":
        return
    if kind == "bcache":
        _reattach_bcache(sh, built, timeout)
        return
    zero = built.details["cache_meta"] if kind == "dm-cache" else built.fast
    table = sh.run(["dmsetup", "table", built.dm_name], timeout=30).strip()
    sectors = int(table.split()[1])
    _reload(sh, built.dm_name, f"0 {sectors} linear {built.slow} 0")
    sh.run(["dd", "if=/dev/zero", f"of={zero}", "bs=1M", "count=1", "oflag=direct"],
           timeout=60)
    _reload(sh, built.dm_name, table)


def _reload(sh: Shell, name: str, table: str) -> None:
    sh.run(["dmsetup", "suspend", name], timeout=120)
    try:
        sh.run(["dmsetup", "reload", name, "--table", table], timeout=60)
    finally:
        sh.run(["dmsetup", "resume", name], timeout=60)


def _reattach_bcache(sh: Shell, built: Built, timeout: float) -> None:
    """Detach (dirty data is written back first), then attach again.

    The superblock says "no cache" a moment before the kernel lets go of the cache set, and an
    `attach` in between fails with EINVAL ("already attached"): it is tried again for 30 s."""
    assert built.bcache_dir is not None
    state = str(built.bcache_dir / "state")
    cset = Path(built.details["cache_set"]).name
    sh.write(str(built.bcache_dir / "detach"), "1")
    _wait(sh, state, lambda s: s == "no cache", timeout)
    deadline = time.monotonic() + 30
    while True:
        try:
            sh.write(str(built.bcache_dir / "attach"), cset)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TuneError(f"bcache {built.top} cannot attach its cache set {cset} again "
                                f"({exc}).", "look at the kernel log (dmesg).") from exc
            time.sleep(0.5)
    _wait(sh, state, lambda s: s != "no cache", timeout)


def _wait(sh: Shell, path: str, done: Callable[[str], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = sh.read(path).strip()
        if done(value):
            return
        if time.monotonic() > deadline:
            raise TuneError(f"{path} stays {value!r}", "look at the kernel log (dmesg).")
        time.sleep(0.2)
