"""The cache setups of one run in use: counters, cache state (cold, warm, drained), teardown."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from bench.core import procs
from bench.core.errors import BenchError
from bench.tune.cache.counters import (
    bcache_counters,
    block_stat,
    parse_dm_cache_status,
    parse_dm_writecache_status,
)
from bench.tune.cache.devices import DeviceBuilder, _dev_name, _write
from bench.tune.cache.teardown import _undo


class CacheLab(DeviceBuilder):
    """Builds, mounts, samples and removes the cache setups of one run."""

    def counters(self, name: str) -> dict[str, int]:
        built = self.built[name]
        found: dict[str, int] = {}
        for role, dev in (("top", built.top), ("slow", built.slow), ("fast", built.fast)):
            if dev and (role == "top" or dev != built.top):
                with contextlib.suppress(OSError):
                    found.update({f"{role}.{k}": v
                                  for k, v in block_stat(_dev_name(dev)).items()
                                  if k != "in_flight"})
        with contextlib.suppress(BenchError, OSError, ValueError):
            if built.recipe.kind == "bcache" and built.bcache_dir is not None:
                found.update({f"cache.{k}": v
                              for k, v in bcache_counters(built.bcache_dir).items()})
            elif built.recipe.kind == "dm-cache":
                status = procs.run(["dmsetup", "status", built.dm_name], timeout=30).stdout
                found.update({f"cache.{k}": v for k, v in parse_dm_cache_status(status).items()})
            elif built.recipe.kind == "dm-writecache":
                status = procs.run(["dmsetup", "status", built.dm_name], timeout=30).stdout
                found.update({f"cache.{k}": v
                              for k, v in parse_dm_writecache_status(status).items()})
        return found

    def make_cold(self, name: str) -> None:
        """Drop what the page cache and the device's buffer cache hold of this setup."""
        built = self.built[name]
        _drop_page_cache(built.mount)
        procs.run(["blockdev", "--flushbufs", built.top], check=False, timeout=60)

    def make_warm(self, name: str) -> None:
        """Read every file once, so the cache (and the page cache) holds them."""
        for path in sorted(self.built[name].mount.rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    while fh.read(1 << 20):
                        pass

    def drain(self, name: str, timeout: float = 120.0) -> int:
        """Write back dirty data (sync; a writeback cache is flushed until its dirty counter
        is 0) so the next run starts clean. Returns the dirty amount left."""
        built = self.built[name]
        fd = os.open(built.mount, os.O_RDONLY)
        try:
            os.syncfs(fd) if hasattr(os, "syncfs") else os.sync()
        finally:
            os.close(fd)
        kind = built.recipe.kind
        if kind == "plain":
            return 0
        if kind == "dm-writecache":
            procs.run(["dmsetup", "message", built.dm_name, "0", "flush"], timeout=timeout)
        deadline = time.monotonic() + timeout
        dirty_key = {"bcache": "cache.dirty_bytes", "dm-cache": "cache.dirty",
                     "dm-writecache": "cache.writeback_blocks"}[kind]
        if kind == "bcache" and built.bcache_dir is not None:
            _write(built.bcache_dir / "writeback_percent", "0")
        try:
            while True:
                dirty = self.counters(name).get(dirty_key, 0)
                if dirty == 0 or time.monotonic() > deadline:
                    return dirty
                time.sleep(0.2)
        finally:
            if kind == "bcache" and built.bcache_dir is not None:
                _write(built.bcache_dir / "writeback_percent",
                       str(built.details["options"].get("writeback_percent", 10)))

    def destroy(self) -> list[str]:
        removed = _undo(self.state)
        self.built.clear()
        self.state_path.unlink(missing_ok=True)
        return removed


def _drop_page_cache(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

