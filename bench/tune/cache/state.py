"""The cache setups of one run in use: counters, cache state (cold, warm, drained), teardown."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from bench.core.errors import BenchError
from bench.tune.cache.counters import (
    bcache_counters,
    block_stat,
    parse_dm_cache_status,
    parse_dm_writecache_status,
)
from bench.tune.cache.devices import DeviceBuilder
from bench.tune.cache.emptying import empty_cache
from bench.tune.cache.teardown import CLEANUP_FIX, _undo, failed_text

WARM_PASSES = 8
WARM_MISS_RATIO = 0.02  # a pass with at most this share of misses: warm
# reads served from the cache and from the slow device: dm-cache counts them as they happen;
# bcache folds its own counters in only every 13.6 s, so for it the devices' reads count
HIT_MISS = {"bcache": ("fast.read_ios", "slow.read_ios"),
            "dm-cache": ("cache.read_hits", "cache.read_misses")}


class CacheLab(DeviceBuilder):
    """Builds, mounts, samples and removes the cache setups of one run."""

    def counters(self, name: str) -> dict[str, int]:
        built = self.built[name]
        found: dict[str, int] = {}
        for role, dev in (("top", built.top), ("slow", built.slow), ("fast", built.fast)):
            if dev and (role == "top" or dev != built.top):
                with contextlib.suppress(OSError):
                    found.update({f"{role}.{k}": v
                                  for k, v in block_stat(
                                      Path(self.shell.realpath(dev)).name,
                                      self.shell.read).items()
                                  if k != "in_flight"})
        with contextlib.suppress(BenchError, OSError, ValueError):
            if built.recipe.kind == "bcache" and built.bcache_dir is not None:
                found.update({f"cache.{k}": v
                              for k, v in bcache_counters(built.bcache_dir,
                                                             self.shell.read).items()})
            elif built.recipe.kind == "dm-cache":
                status = self.shell.run(["dmsetup", "status", built.dm_name], timeout=30)
                found.update({f"cache.{k}": v for k, v in parse_dm_cache_status(status).items()})
            elif built.recipe.kind == "dm-writecache":
                status = self.shell.run(["dmsetup", "status", built.dm_name], timeout=30)
                found.update({f"cache.{k}": v
                              for k, v in parse_dm_writecache_status(status).items()})
        return found

    python = sys.executable  # the interpreter that runs the state scripts where the lab is

    def make_cold(self, name: str) -> None:
        """Write dirty data back, empty the cache layer (emptying.py) and drop what the page
        cache and the buffer cache hold: the next reads come from the slow device."""
        built = self.built[name]
        self.drain(name)
        empty_cache(self.shell, built)
        self.shell.run([self.python, "-c", COLD, str(built.mount)], timeout=300)
        self.shell.run(["blockdev", "--flushbufs", built.top], check=False, timeout=60)

    def make_warm(self, name: str, passes: int = WARM_PASSES, budget_s: float = 180.0) -> None:
        """From cold, read every file with O_DIRECT in 1 MiB pieces in random order (a cache
        skips readahead and reads it sees as one long sequential stream), pass after pass,
        until a pass is served from the cache (at most `passes` and `budget_s`): dm-cache's
        smq promotes only blocks hot over several of its periods. A write cache
        (dm-writecache) holds what was written, so its files are written again instead.
        How many passes it took, and the last one's miss ratio, go to the run's metadata."""
        built = self.built[name]
        self.make_cold(name)
        kind = built.recipe.kind
        if kind == "dm-writecache":
            self.shell.run([self.python, "-c", WARM, str(built.mount), "rewrite"], timeout=600)
            return
        keys = HIT_MISS.get(kind)
        deadline = time.monotonic() + budget_s
        for done in range(1, (passes if keys else 1) + 1):
            before = self.counters(name) if keys else {}
            self.shell.run([self.python, "-c", WARM, str(built.mount), "read"], timeout=600)
            if keys is None:
                return
            time.sleep(1.0)  # smq's hotspot period (1 s) ends: its blocks rise one level
            now = self.counters(name)
            hits, misses = (now.get(k, 0) - before.get(k, 0) for k in keys)
            ratio = misses / (hits + misses) if hits + misses else 1.0
            built.details["warm"] = {"passes": done, "last_pass_miss_ratio": round(ratio, 4)}
            if ratio <= WARM_MISS_RATIO or time.monotonic() > deadline:
                return

    def drain(self, name: str, timeout: float = 120.0) -> int:
        """Write back dirty data (sync; a writeback cache is flushed until its dirty counter
        is 0) so the next run starts clean. Returns the dirty amount left."""
        built = self.built[name]
        self.shell.run(["sync", "--file-system", str(built.mount)], timeout=timeout)
        kind = built.recipe.kind
        if kind == "plain":
            return 0
        if kind == "dm-writecache":
            self.shell.run(["dmsetup", "message", built.dm_name, "0", "flush"], timeout=timeout)
        deadline = time.monotonic() + timeout
        dirty_key = {"bcache": "cache.dirty_bytes", "dm-cache": "cache.dirty",
                     "dm-writecache": "cache.writeback_blocks"}[kind]
        if kind == "bcache" and built.bcache_dir is not None:
            self.shell.write(str(built.bcache_dir / "writeback_percent"), "0")
        try:
            while True:
                dirty = self.counters(name).get(dirty_key)
                if dirty is None:  # unknown is not clean
                    raise BenchError(
                        f"Cannot read the dirty counter ({dirty_key}) of cache setup {name}, "
                        "so whether its writeback finished is unknown.",
                        f"check {built.bcache_dir or built.dm_name} (dmsetup status / "
                        "sysfs) and the kernel log.")
                if dirty == 0 or time.monotonic() > deadline:
                    return dirty
                time.sleep(0.2)
        finally:
            if kind == "bcache" and built.bcache_dir is not None:
                self.shell.write(str(built.bcache_dir / "writeback_percent"),
                                 str(built.details["options"].get("writeback_percent", 10)))

    def destroy(self) -> list[str]:
        """Remove everything made; raises BenchError naming what could not be removed (the
        state file stays, so `bench cleanup` tries again)."""
        removed, failed = _undo(self.state)
        self.built.clear()
        if failed:
            raise BenchError(failed_text(failed, removed), CLEANUP_FIX)
        self.state_path.unlink(missing_ok=True)
        return removed


COLD = """
import os, sys
for base, _, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(base, name)
        if os.path.islink(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
"""
WARM = """
import mmap, os, random, sys
# one pass; O_DIRECT: page-cache readahead is flagged as such, and bcache does not cache it
paths = [os.path.join(b, n) for b, _, fs in os.walk(sys.argv[1]) for n in fs]
rewrite = sys.argv[2] == "rewrite"
buf = mmap.mmap(-1, 1 << 20)
for path in sorted(paths):
    if os.path.islink(path):
        continue
    fd = os.open(path, (os.O_RDWR if rewrite else os.O_RDONLY) | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size
        pieces = list(range(0, size - size % (1 << 20), 1 << 20))
        random.Random(path).shuffle(pieces)
        for offset in pieces:
            os.preadv(fd, [buf], offset)
            if rewrite:
                os.pwritev(fd, [buf], offset)
        if rewrite:
            os.fsync(fd)
    finally:
        os.close(fd)
"""
