"""Cache and block-device counters: /sys/block/*/stat, `dmsetup status`, bcache's sysfs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

STAT_FIELDS = ("read_ios", "read_merges", "read_sectors", "read_ticks_ms", "write_ios",
               "write_merges", "write_sectors", "write_ticks_ms", "in_flight", "io_ticks_ms",
               "time_in_queue_ms")


def _read(path: str) -> str:
    return Path(path).read_text()


def block_stat(name: str, read: Callable[[str], str] = _read) -> dict[str, int]:
    """/sys/block/NAME/stat as named counters."""
    text = read(f"/sys/block/{name}/stat")
    return {k: int(v) for k, v in zip(STAT_FIELDS, text.split(), strict=False)}


def parse_dm_cache_status(text: str) -> dict[str, int]:
    """`dmsetup status` of a dm-cache device (docs: admin-guide/device-mapper/cache.rst)."""
    fields = text.split()
    # start len "cache" md_block_size used/total cache_block_size used/total read_hits ...
    i = fields.index("cache") + 1
    md_used, md_total = (int(x) for x in fields[i + 1].split("/"))
    c_used, c_total = (int(x) for x in fields[i + 3].split("/"))
    names = ("read_hits", "read_misses", "write_hits", "write_misses", "demotions",
             "promotions", "dirty")
    values = [int(x) for x in fields[i + 4:i + 4 + len(names)]]
    return {"metadata_used": md_used, "metadata_total": md_total, "cache_blocks_used": c_used,
            "cache_blocks_total": c_total, **dict(zip(names, values, strict=True))}


WRITECACHE_FIELDS = ("error", "blocks", "free_blocks", "writeback_blocks",
                     # event counters, Linux 5.15 and later
                     "reads", "read_hits", "writes", "write_hits_uncommitted",
                     "write_hits_committed", "writes_around", "writes_allocate",
                     "writes_blocked_on_freelist", "flushes", "discards")


def parse_dm_writecache_status(text: str) -> dict[str, int]:
    """`dmsetup status` of dm-writecache: error, blocks, free blocks, blocks under writeback,
    then (5.15+) reads, read hits, writes, ... (docs: admin-guide/device-mapper/writecache)."""
    fields = text.split()
    i = fields.index("writecache") + 1
    values = [int(x) for x in fields[i:i + len(WRITECACHE_FIELDS)] if x.isdigit()]
    return dict(zip(WRITECACHE_FIELDS, values, strict=False))


def bcache_counters(bcache_dir: Path, read: Callable[[str], str] = _read) -> dict[str, int]:
    """Hit and dirty counters of /sys/block/bcacheN/bcache. The kernel folds hits and misses
    into stats_total only every 300/22 s (13.6 s): over a shorter run they lag; the reads of the
    cache device (`fast.read_ios`) do not."""
    found = {}
    for name in ("cache_hits", "cache_misses", "cache_bypass_hits", "cache_bypass_misses"):
        with contextlib.suppress(OSError, ValueError):
            found[name] = int(read(str(bcache_dir / "stats_total" / name)))
    with contextlib.suppress(OSError):
        found["dirty_bytes"] = _human_bytes(read(str(bcache_dir / "dirty_data")))
    return found


def _human_bytes(text: str) -> int:
    """bcache prints sizes like '1.5M'."""
    found = re.fullmatch(r"\s*([\d.]+)([kKMGTP]?)\s*", text)
    if not found:
        raise ValueError(f"not a bcache size: {text!r}")
    scale = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
             "P": 1 << 50}[found.group(2)]
    return int(float(found.group(1)) * scale)

