"""SSD-cache setups (tuning/cache/*.yaml) on devices the suite creates and tags with the run id.

A setup is `<recipe>-<variant>`: none-slow (the plain slow device), none-fast (the fast device
alone), bcache-{writeback,writethrough,writearound}, lvmcache-{writethrough,writeback} (the
dm-cache target with smq, as lvmcache builds it) and dm-writecache-ssd. Each setup gets its own
slow device (a loop device over a sparse file, O_DIRECT, slowed by cgroup v1 blkio throttling or
dm-delay) and fast device (zram, brd or a loop device over tmpfs), an ext4 file system, and a
mount point; the runner's hook binds that mount over the host tier's scratch directory.

What the kernel lacks is detected up front (device-mapper, its targets, bcache, blkio
throttling) and each setup that needs it is reported unavailable with the reason.
"""

from bench.tune.cache.counters import (
    STAT_FIELDS,
    _human_bytes,
    bcache_counters,
    block_stat,
    parse_dm_cache_status,
    parse_dm_writecache_status,
)
from bench.tune.cache.devices import (
    SECTOR,
    Built,
    dm_cache_table,
    dm_delay_table,
    dm_writecache_table,
)
from bench.tune.cache.probe import BLKIO, MODULES, Probe, unavailable_reason
from bench.tune.cache.recipes import (
    DeviceSpec,
    FastSpec,
    Recipe,
    Requires,
    SlowSpec,
    device_spec,
    recipes,
    setups,
)
from bench.tune.cache.state import CacheLab
from bench.tune.cache.teardown import cleanup

__all__ = ["BLKIO", "MODULES", "SECTOR", "STAT_FIELDS", "Built", "CacheLab", "DeviceSpec",
           "FastSpec", "Probe", "Recipe", "Requires", "SlowSpec", "_human_bytes",
           "bcache_counters", "block_stat", "cleanup", "device_spec", "dm_cache_table",
           "dm_delay_table", "dm_writecache_table", "parse_dm_cache_status",
           "parse_dm_writecache_status", "recipes", "setups", "unavailable_reason"]
