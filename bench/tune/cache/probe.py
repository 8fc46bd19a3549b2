"""What the kernel has for the cache setups: device-mapper and its targets, bcache, throttling,
RAM disks; each check returns '' or the reason it is missing (naming what is missing)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.core import procs
from bench.tune.cache.recipes import FastSpec, SlowSpec, device_spec, setups
from bench.tune.catalog import TuneError

BLKIO = "sys/fs/cgroup/blkio"
MODULES = {"device-mapper": "dm_mod", "dm-cache": "dm_cache", "dm-writecache": "dm_writecache",
           "dm-delay": "dm_delay", "bcache": "bcache"}


class Probe:
    """Kernel features, read from procfs/sysfs under `root` (tests give a fake tree)."""

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)

    def _text(self, rel: str) -> str:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return ""

    def _exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def _modprobe(self, module: str) -> str:
        """'' if `modprobe -n` says the module could be loaded, else what it said."""
        if shutil.which("modprobe") is None:
            release = os.uname().release
            found = [p for p in (self.root / "lib/modules" / release).rglob(
                f"{module.replace('_', '[-_]')}.ko*")] if (self.root / "lib/modules").exists() \
                else []
            where = f"/lib/modules/{release} has {found[0].name}" if found else \
                f"/lib/modules/{release} has no {module} module"
            return f"modprobe (kmod) is not installed to load it, and {where}"
        done = procs.run(["modprobe", "-n", "-v", module], check=False, timeout=30)
        if done.returncode == 0:
            return ""
        return f"`modprobe -n {module}`: {(done.stderr or done.stdout).strip() or 'failed'}"

    def device_mapper(self) -> str:
        if ("device-mapper" in self._text("proc/devices")
                or "device-mapper" in self._text("proc/misc")
                or self._exists("dev/mapper/control") or self._exists("sys/module/dm_mod")):
            return ""
        loadable = self._modprobe("dm_mod")
        if not loadable:
            return ""
        return ("the kernel has no device-mapper (no device-mapper in /proc/devices or "
                "/proc/misc, no /dev/mapper/control, no /sys/module/dm_mod; " + loadable + ")")

    def dm_target(self, target: str) -> str:
        missing_dm = self.device_mapper()
        if missing_dm:
            return missing_dm
        if shutil.which("dmsetup") is not None and self.root == Path("/"):
            done = procs.run(["dmsetup", "targets"], check=False, timeout=30)
            if re.search(rf"^{re.escape(target)}\s", done.stdout, re.M):
                return ""
        if self._exists(f"sys/module/dm_{target}"):
            return ""
        loadable = self._modprobe(f"dm-{target}")
        return "" if not loadable else f"device-mapper has no `{target}` target ({loadable})"

    def bcache(self) -> str:
        if self._exists("sys/fs/bcache/register") or self._exists("sys/module/bcache"):
            return ""
        loadable = self._modprobe("bcache")
        if not loadable:
            return ""
        return ("the kernel has no bcache (no /sys/fs/bcache, no /sys/module/bcache; "
                + loadable + ")")

    def blkio_throttle(self) -> str:
        if self._exists(f"{BLKIO}/blkio.throttle.read_bps_device"):
            return ""
        return ("no cgroup v1 blkio throttling (/sys/fs/cgroup/blkio/"
                "blkio.throttle.read_bps_device is missing; cgroup v2 cannot throttle the root)")

    def zram(self) -> str:
        return "" if self._exists("sys/class/zram-control/hot_add") else \
            "no zram (no /sys/class/zram-control/hot_add)"

    def brd(self) -> str:
        return "" if self._exists("sys/module/brd") and self._exists("dev/ram0") else \
            "no brd RAM disks (/sys/module/brd, /dev/ram0)"

    def ext4(self) -> str:
        text = self._text("proc/filesystems")
        return "" if re.search(r"\bext4\b", text) else "the kernel cannot mount ext4"

    def feature(self, name: str) -> str:
        """'' if the feature named in a recipe's `requires.kernel` is there, else why not."""
        if name == "device-mapper":
            return self.device_mapper()
        if name.startswith("dm-"):
            return self.dm_target(name[3:])
        if name == "bcache":
            return self.bcache()
        raise TuneError(f"unknown kernel feature {name!r} in a cache recipe",
                        "use device-mapper, dm-<target> or bcache.")

    def slow_down(self, spec: SlowSpec) -> tuple[str, str]:
        """The way to slow the slow device (or '') and why none works."""
        reasons = []
        for way in spec.slow_down:
            why = self.blkio_throttle() if way == "blkio-throttle" else self.dm_target("delay")
            if not why:
                return way, ""
            reasons.append(f"{way}: {why}")
        return "", "; ".join(reasons)

    def fast_kind(self, spec: FastSpec) -> tuple[str, str]:
        reasons = []
        for kind in spec.kinds:
            checks: dict[str, Callable[[], str]] = {"zram": self.zram, "brd": self.brd,
                                                    "tmpfs-loop": lambda: ""}
            why = checks[kind]()
            if not why:
                return kind, ""
            reasons.append(f"{kind}: {why}")
        return "", "; ".join(reasons)


def unavailable_reason(name: str, probe: Probe | None = None) -> str:
    """'' if the cache setup can be built here, else why not (naming what is missing)."""
    probe = probe or Probe()
    known = setups()
    if name not in known:
        return f"no cache setup named {name!r}"
    recipe, _ = known[name]
    reasons = []
    if os.geteuid() != 0 and probe.root == Path("/"):
        reasons.append("building block devices needs root")
    for feature in recipe.requires.kernel:
        why = probe.feature(feature)
        if why and why not in reasons:
            reasons.append(why)
    for tool in recipe.requires.tools:
        if shutil.which(tool) is None:
            reasons.append(f"`{tool}` is not installed (Debian: "
                           f"{', '.join(recipe.requires.packages) or tool})")
    spec = device_spec()
    way, why = probe.slow_down(spec.slow)
    if not way:
        reasons.append(f"the slow device cannot be slowed down ({why})")
    kind, why = probe.fast_kind(spec.fast)
    if not kind:
        reasons.append(f"no fast device ({why})")
    ext4 = probe.ext4()
    if ext4:
        reasons.append(ext4)
    return "; ".join(reasons)

