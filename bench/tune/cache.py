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

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from bench.core import faults, procs
from bench.core.errors import BenchError
from bench.kernel import sysmount
from bench.tune import journal as journal_mod
from bench.tune.catalog import TuneError, tuning_dir

SECTOR = 512
BLKIO = "sys/fs/cgroup/blkio"
MODULES = {"device-mapper": "dm_mod", "dm-cache": "dm_cache", "dm-writecache": "dm_writecache",
           "dm-delay": "dm_delay", "bcache": "bcache"}


# -- recipes ---------------------------------------------------------------------------------
class Requires(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    kind: Literal["plain", "bcache", "dm-cache", "dm-writecache"]
    description: str
    requires: Requires = Field(default_factory=Requires)
    options: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)


class SlowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size_mb: int = Field(1024, ge=64)
    read_bps: int = Field(52428800, ge=1 << 20)
    write_bps: int = Field(52428800, ge=1 << 20)
    read_iops: int = Field(400, ge=10)
    write_iops: int = Field(400, ge=10)
    delay_ms: int = Field(4, ge=0, le=1000)
    slow_down: tuple[Literal["blkio-throttle", "dm-delay"], ...] = ("blkio-throttle", "dm-delay")


class FastSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size_mb: int = Field(512, ge=64)
    kinds: tuple[Literal["zram", "brd", "tmpfs-loop"], ...] = ("zram", "brd", "tmpfs-loop")


class DeviceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slow: SlowSpec = Field(default_factory=SlowSpec)
    fast: FastSpec = Field(default_factory=FastSpec)


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TuneError(f"Cannot read cache recipe {path}: {exc}", "fix the file.") from None


def recipes(directory: Path | None = None) -> dict[str, Recipe]:
    base = directory or tuning_dir() / "cache"
    found = {}
    for path in sorted(base.glob("*.yaml")):
        if path.name == "devices.yaml":
            continue
        try:
            recipe = Recipe.model_validate(_yaml(path))
        except ValueError as exc:
            raise TuneError(f"{path} is not a valid cache recipe: {exc}",
                            "compare it with tuning/cache/none.yaml.") from None
        found[recipe.name] = recipe
    return found


def setups(directory: Path | None = None) -> dict[str, tuple[Recipe, str]]:
    """Every setup name (`<recipe>-<variant>`) with its recipe and variant."""
    return {f"{r.name}-{v}": (r, v) for r in recipes(directory).values() for v in r.variants}


def device_spec(directory: Path | None = None) -> DeviceSpec:
    path = (directory or tuning_dir() / "cache") / "devices.yaml"
    return DeviceSpec.model_validate(_yaml(path) if path.exists() else {})


# -- what the kernel has ---------------------------------------------------------------------
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


# -- counters --------------------------------------------------------------------------------
STAT_FIELDS = ("read_ios", "read_merges", "read_sectors", "read_ticks_ms", "write_ios",
               "write_merges", "write_sectors", "write_ticks_ms", "in_flight", "io_ticks_ms",
               "time_in_queue_ms")


def block_stat(name: str, root: Path = Path("/")) -> dict[str, int]:
    """/sys/block/NAME/stat as named counters."""
    text = (root / "sys/block" / name / "stat").read_text()
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


def parse_dm_writecache_status(text: str) -> dict[str, int]:
    """`dmsetup status` of dm-writecache: error, blocks, free blocks, writeback blocks, ..."""
    fields = text.split()
    i = fields.index("writecache") + 1
    names = ("error", "blocks", "free_blocks", "writeback_blocks")
    return dict(zip(names, (int(x) for x in fields[i:i + 4]), strict=True))


def bcache_counters(bcache_dir: Path) -> dict[str, int]:
    """Hit and dirty counters of /sys/block/bcacheN/bcache."""
    found = {}
    for name in ("cache_hits", "cache_misses", "cache_bypass_hits", "cache_bypass_misses"):
        with contextlib.suppress(OSError, ValueError):
            found[name] = int((bcache_dir / "stats_total" / name).read_text())
    with contextlib.suppress(OSError):
        found["dirty_bytes"] = _human_bytes((bcache_dir / "dirty_data").read_text())
    return found


def _human_bytes(text: str) -> int:
    """bcache prints sizes like '1.5M'."""
    found = re.fullmatch(r"\s*([\d.]+)([kKMGTP]?)\s*", text)
    if not found:
        raise ValueError(f"not a bcache size: {text!r}")
    scale = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
             "P": 1 << 50}[found.group(2)]
    return int(float(found.group(1)) * scale)


def dm_cache_table(sectors: int, meta: str, data: str, origin: str, chunk_kb: int, mode: str,
                   policy: str) -> str:
    """The dm-cache table line (what lvmcache loads)."""
    return (f"0 {sectors} cache {meta} {data} {origin} {chunk_kb * 1024 // SECTOR} "
            f"1 {mode} {policy} 0")


def dm_writecache_table(sectors: int, mode: str, origin: str, cache: str, block_size: int,
                        high: int, low: int) -> str:
    return (f"0 {sectors} writecache {mode} {origin} {cache} {block_size} "
            f"4 high_watermark {high} low_watermark {low}")


def dm_delay_table(sectors: int, device: str, delay_ms: int) -> str:
    return f"0 {sectors} delay {device} 0 {delay_ms}"


# -- building --------------------------------------------------------------------------------
@dataclass
class Built:
    """One setup's devices: `top` carries the file system the workload runs on."""

    setup: str
    recipe: Recipe
    variant: str
    top: str  # /dev/...
    mount: Path
    slow: str = ""
    fast: str = ""
    dm_name: str = ""
    bcache_dir: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _dev_name(dev: str) -> str:
    """Kernel name (loop3, zram1, dm-2) of a /dev path."""
    return Path(os.path.realpath(dev)).name


def _majmin(dev: str) -> str:
    st = os.stat(dev)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _write(path: Path | str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class CacheLab:
    """Builds, mounts, samples and removes the cache setups of one run.

    Everything made is written to a state file first, so `bench cleanup` removes it after a crash.
    """

    def __init__(self, run_id: str, base_dir: Path, state_dir: Path | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.run_id = run_id
        self.dir = base_dir / f"tune-cache-{run_id}"
        self.state_path = (state_dir or journal_mod.state_dir()) / f"cache-{run_id}.json"
        self.spec = device_spec()
        self.probe = Probe()
        self.built: dict[str, Built] = {}
        self.log = log
        self.state: dict[str, Any] = {"run_id": run_id, "dir": str(self.dir), "made": []}

    # the state file: a list of things made, removed in reverse order
    def _made(self, kind: str, **what: Any) -> None:
        self.state["made"].append({"kind": kind, **what})
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def build(self, name: str) -> Built:
        if name in self.built:
            return self.built[name]
        why = unavailable_reason(name, self.probe)
        if why:
            raise TuneError(f"Cache setup {name} is unavailable here: {why}.",
                            "leave it out of `sweep.cache`, or run on a kernel that has it.")
        recipe, variant = setups()[name]
        options = {**recipe.options, **recipe.variants[variant]}
        self.dir.mkdir(parents=True, exist_ok=True)
        for feature in recipe.requires.kernel:
            module = MODULES.get(feature)
            if module and not Path(f"/sys/module/{module}").exists() and shutil.which("modprobe"):
                procs.run(["modprobe", module], check=False, timeout=60)
        wants_slow = recipe.kind != "plain" or options.get("device") != "fast"
        wants_fast = recipe.kind != "plain" or options.get("device") == "fast"
        way, _ = self.probe.slow_down(self.spec.slow)
        slow = loop = self._loop_file(f"{name}-slow", self.spec.slow.size_mb, direct=True) \
            if wants_slow else ""
        if wants_slow and way == "dm-delay":
            slow = self._dm(f"{name}-delay",
                            dm_delay_table(self._sectors(loop), loop, self.spec.slow.delay_ms))
        fast = self._fast(name) if wants_fast else ""
        faults.point("cache.built")
        built = Built(setup=name, recipe=recipe, variant=variant, top="", mount=Path(),
                      slow=slow, fast=fast)
        if recipe.kind == "plain":
            built.top = fast if options.get("device") == "fast" else slow
        elif recipe.kind == "bcache":
            self._bcache(built, options)
        elif recipe.kind == "dm-cache":
            self._dm_cache(built, options)
        else:
            self._dm_writecache(built, options)
        built.mount = self.dir / f"mnt-{name}"
        built.mount.mkdir(exist_ok=True)
        procs.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                   "-L", f"bench-{name}"[:16], built.top], timeout=300)
        self._made("mount", path=str(built.mount))
        sysmount.mount(built.top, built.mount, "ext4")
        if wants_slow:
            self._slow_down(built, loop, way)  # after mkfs: the throttle is for measuring
        built.details |= {"slow": slow, "fast": fast or None, "top": built.top,
                         "options": options, "slow_spec": self.spec.slow.model_dump(),
                         "fast_kind": self.state.get("fast_kind")}
        self.built[name] = built
        self.log(f"cache setup {name}: {built.top} mounted at {built.mount}")
        return built

    def _loop_file(self, label: str, size_mb: int, direct: bool,
                   directory: Path | None = None) -> str:
        path = (directory or self.dir) / f"bench-{self.run_id}-{label}.img"
        with open(path, "wb") as fh:
            fh.truncate(size_mb << 20)
        self._made("file", path=str(path))
        argv = ["losetup", "--find", "--show", *(["--direct-io=on"] if direct else []),
                str(path)]
        dev = procs.run(argv, timeout=60).stdout.strip()
        self._made("loop", dev=dev, file=str(path))
        return dev

    def _fast(self, name: str) -> str:
        kind, _ = self.probe.fast_kind(self.spec.fast)
        self.state["fast_kind"] = kind
        size = self.spec.fast.size_mb << 20
        if kind == "zram":
            number = int(Path("/sys/class/zram-control/hot_add").read_text())
            self._made("zram", id=number)
            _write(f"/sys/block/zram{number}/disksize", str(size))
            return f"/dev/zram{number}"
        if kind == "brd":
            used = {m.get("dev") for m in self.state["made"] if m["kind"] == "brd"}
            for number in range(64):
                dev = f"/dev/ram{number}"
                if Path(dev).exists() and dev not in used and not _in_use(dev):
                    self._made("brd", dev=dev)
                    return dev
            raise TuneError("Every brd RAM disk is in use.", "load brd with more devices.")
        tmp = self.dir / f"tmpfs-{name}"
        tmp.mkdir(exist_ok=True)
        self._made("mount", path=str(tmp))
        sysmount.mount("tmpfs", tmp, "tmpfs", sysmount.MS_NOSUID | sysmount.MS_NODEV,
                       f"size={size + (8 << 20)}")
        return self._loop_file(f"{name}-fast", self.spec.fast.size_mb, direct=False,
                               directory=tmp)

    def _slow_down(self, built: Built, loop: str, way: str) -> None:
        spec = self.spec.slow
        if way == "blkio-throttle":
            majmin = _majmin(loop)
            base = Path("/") / BLKIO
            self._made("throttle", majmin=majmin)
            for name, value in (("read_bps_device", spec.read_bps),
                                ("write_bps_device", spec.write_bps),
                                ("read_iops_device", spec.read_iops),
                                ("write_iops_device", spec.write_iops)):
                _write(base / f"blkio.throttle.{name}", f"{majmin} {value}")
            built.details["slowed_by"] = "cgroup v1 blkio throttle (root cgroup)"
        elif way == "dm-delay":
            # dm-delay sits between the slow loop and everything above; built before the cache
            built.details["slowed_by"] = f"dm-delay {spec.delay_ms} ms"
        else:
            raise TuneError("The slow device cannot be slowed down here.",
                            "use a host with cgroup v1 blkio or device-mapper's delay target.")

    def _dm(self, label: str, table: str) -> str:
        name = f"bench-{self.run_id}-{label}"
        procs.run(["dmsetup", "create", name, "--table", table], timeout=60)
        self._made("dm", name=name)
        return f"/dev/mapper/{name}"

    def _sectors(self, dev: str) -> int:
        return int(procs.run(["blockdev", "--getsz", dev], timeout=30).stdout.strip())

    def _dm_cache(self, built: Built, options: dict[str, Any]) -> None:
        meta_sectors = int(options.get("metadata_mb", 16)) * (1 << 20) // SECTOR
        fast_sectors = self._sectors(built.fast)
        meta = self._dm(f"{built.setup}-cmeta", f"0 {meta_sectors} linear {built.fast} 0")
        data = self._dm(f"{built.setup}-cdata",
                        f"0 {fast_sectors - meta_sectors} linear {built.fast} {meta_sectors}")
        procs.run(["dd", "if=/dev/zero", f"of={meta}", "bs=1M", "count=1", "oflag=direct"],
                  timeout=60)
        table = dm_cache_table(self._sectors(built.slow), meta, data, built.slow,
                               int(options.get("chunk_kb", 64)), str(options["cache_mode"]),
                               str(options.get("policy", "smq")))
        built.top = self._dm(built.setup, table)
        built.dm_name = Path(built.top).name

    def _dm_writecache(self, built: Built, options: dict[str, Any]) -> None:
        table = dm_writecache_table(self._sectors(built.slow), str(options.get("mode", "s")),
                                    built.slow, built.fast, int(options.get("block_size", 4096)),
                                    int(options.get("high_watermark", 50)),
                                    int(options.get("low_watermark", 45)))
        built.top = self._dm(built.setup, table)
        built.dm_name = Path(built.top).name

    def _bcache(self, built: Built, options: dict[str, Any]) -> None:
        for dev in (built.slow, built.fast):
            procs.run(["wipefs", "-a", dev], timeout=60)
        procs.run(["make-bcache", "-C", built.fast, "-B", built.slow], timeout=120)
        for dev in (built.slow, built.fast):
            with contextlib.suppress(OSError):
                _write("/sys/fs/bcache/register", dev)
        slow_name = _dev_name(built.slow)
        bcache_dir = Path("/sys/block") / slow_name / "bcache"
        deadline = time.monotonic() + 10
        while not (bcache_dir / "dev").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        top_name = Path(os.path.realpath(bcache_dir / "dev")).name
        built.top = f"/dev/{top_name}"
        built.bcache_dir = Path("/sys/block") / top_name / "bcache"
        self._made("bcache", dev=top_name, backing=slow_name)
        _write(built.bcache_dir / "cache_mode", str(options["cache_mode"]))
        _write(built.bcache_dir / "sequential_cutoff",
               str(int(options.get("sequential_cutoff_kb", 4096)) * 1024))
        _write(built.bcache_dir / "writeback_percent", str(options.get("writeback_percent", 10)))

    # -- per run ----------------------------------------------------------------------------
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
                _write(built.bcache_dir / "writeback_percent",
                       str(built.details["options"].get("writeback_percent", 10)))

    def destroy(self) -> list[str]:
        """Remove everything made; raises BenchError naming what could not be removed (the
        state file stays, so `bench cleanup` tries again)."""
        removed, failed = _undo(self.state)
        self.built.clear()
        if failed:
            raise BenchError(_failed_text(failed, removed), CLEANUP_FIX)
        self.state_path.unlink(missing_ok=True)
        return removed


def _in_use(dev: str) -> bool:
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
    except OSError:
        return True
    os.close(fd)
    return False


def _drop_page_cache(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


CLEANUP_FIX = "see the error of each, fix its cause, then run `bench cleanup` again."


def _failed_text(failed: list[str], removed: list[str]) -> str:
    done = f" (removed: {', '.join(removed)})" if removed else ""
    return f"Could not remove {len(failed)} cache device part(s): {'; '.join(failed)}{done}."


def _undo(state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Remove what a state file lists, newest first; keep going past errors. Returns (what was
    removed, what could not be removed and why)."""
    removed: list[str] = []
    failed: list[str] = []
    for item in reversed(state.get("made", [])):
        kind = item["kind"]
        try:
            if kind == "mount":
                for point in sysmount.mounts_under(item["path"]):
                    try:
                        sysmount.umount(point, lazy=False)
                    except OSError:
                        sysmount.umount(point)  # busy: detach now, freed when released
                    removed.append(f"mount {point}")
            elif kind == "throttle":
                base = Path("/") / BLKIO
                for name in ("read_bps_device", "write_bps_device", "read_iops_device",
                             "write_iops_device"):
                    with contextlib.suppress(OSError):
                        _write(base / f"blkio.throttle.{name}", f"{item['majmin']} 0")
                removed.append(f"blkio throttle {item['majmin']}")
            elif kind == "bcache":
                if Path(f"/sys/block/{item['dev']}/bcache").exists():
                    _write(f"/sys/block/{item['dev']}/bcache/stop", "1")
                    removed.append(f"bcache {item['dev']}")
            elif kind == "dm":
                if _dm_exists(item["name"]):
                    procs.run(["dmsetup", "remove", "--retry", item["name"]], timeout=60)
                    removed.append(f"device-mapper {item['name']}")
            elif kind == "loop":
                if _loop_backs(item["dev"], item["file"]):
                    procs.run(["losetup", "-d", item["dev"]], timeout=60)
                    removed.append(f"loop {item['dev']} ({item['file']})")
            elif kind == "zram":
                if _remove_zram(int(item["id"])):
                    removed.append(f"zram{item['id']}")
            elif kind == "file":
                Path(item["path"]).unlink(missing_ok=True)
        except (BenchError, OSError) as exc:
            failed.append(f"{kind} {item}: {exc}")
    directory = state.get("dir")
    if directory and Path(directory).exists() and not sysmount.mounts_under(directory):
        shutil.rmtree(directory, ignore_errors=True)
    return removed, failed


def _remove_zram(number: int, timeout: float = 60.0) -> bool:
    """Reset and remove zramN; a lazily unmounted file system may hold it for a moment."""
    if not Path(f"/sys/block/zram{number}").exists():
        return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            _write(f"/sys/block/zram{number}/reset", "1")
            _write("/sys/class/zram-control/hot_remove", str(number))
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                raise OSError(exc.errno, f"zram{number} stays busy: {exc.strerror}") from None
            time.sleep(0.1)


def _dm_exists(name: str) -> bool:
    """Is there a device-mapper device of this name (sysfs: works without udev)?"""
    for path in Path("/sys/block").glob("dm-*/dm/name"):
        with contextlib.suppress(OSError):
            if path.read_text().strip() == name:
                return True
    return False


def _loop_backs(dev: str, file: str) -> bool:
    """Is `dev` still the loop device over `file` (and not reused by someone else)?"""
    name = Path(dev).name
    try:
        backing = (Path("/sys/block") / name / "loop/backing_file").read_text().strip()
    except OSError:
        return False
    return backing.removesuffix(" (deleted)") == file


def cleanup(run_id: str | None, state_dir: Path | None = None) -> list[str]:
    """Remove cache devices that runs no longer alive left behind (`bench cleanup`)."""
    base = state_dir or journal_mod.state_dir()
    removed: list[str] = []
    failed: list[str] = []
    if not base.is_dir():
        return removed
    for path in sorted(base.glob(f"cache-{run_id or '*'}.json")):
        session = path.name[len("cache-"):-len(".json")]
        if journal_mod.is_live(session, base):
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            failed.append(f"{session}: unreadable state file {path}: {exc}")
            continue
        done, not_done = _undo(state)
        removed += [f"{session}: {what}" for what in done]
        failed += [f"{session}: {what}" for what in not_done]
        if not not_done:  # keep the list of what is left for the next `bench cleanup`
            path.unlink(missing_ok=True)
    if failed:
        raise BenchError(_failed_text(failed, removed), CLEANUP_FIX)
    return removed
