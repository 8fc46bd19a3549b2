"""Building the devices of a cache setup: slow and fast devices, then bcache, dm-cache or
dm-writecache over them, an ext4 file system and a mount. Everything made is recorded in a
state file before the next step, so teardown (and `bench cleanup` after a crash) removes it."""

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
from typing import Any

from bench.core import faults, procs
from bench.kernel import sysmount
from bench.tune import journal as journal_mod
from bench.tune.cache.probe import BLKIO, MODULES, Probe, unavailable_reason
from bench.tune.cache.recipes import Recipe, device_spec, setups
from bench.tune.cache.shell import LocalShell, Shell
from bench.tune.catalog import TuneError

SECTOR = 512


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



class DeviceBuilder:
    """Builds and mounts the cache setups of one run.

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
        self.shell: Shell = LocalShell()

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
        self._stack(built, options)
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

    def _stack(self, built: Built, options: dict[str, Any]) -> None:
        """The recipe's layer over the slow and fast devices; sets `built.top`."""
        kind = built.recipe.kind
        if kind == "plain":
            built.top = built.fast if options.get("device") == "fast" else built.slow
        elif kind == "bcache":
            self._bcache(built, options)
        elif kind == "dm-cache":
            self._dm_cache(built, options)
        else:
            self._dm_writecache(built, options)

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
        self.shell.run(["dmsetup", "create", name, "--table", table], timeout=60)
        self._made("dm", name=name)
        return f"/dev/mapper/{name}"

    def _sectors(self, dev: str) -> int:
        return int(self.shell.run(["blockdev", "--getsz", dev], timeout=30).strip())

    def _dm_cache(self, built: Built, options: dict[str, Any]) -> None:
        meta_sectors = int(options.get("metadata_mb", 16)) * (1 << 20) // SECTOR
        fast_sectors = self._sectors(built.fast)
        meta = self._dm(f"{built.setup}-cmeta", f"0 {meta_sectors} linear {built.fast} 0")
        data = self._dm(f"{built.setup}-cdata",
                        f"0 {fast_sectors - meta_sectors} linear {built.fast} {meta_sectors}")
        self.shell.run(["dd", "if=/dev/zero", f"of={meta}", "bs=1M", "count=1", "oflag=direct"],
                       timeout=60)
        built.details["cache_meta"] = meta
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
        sh = self.shell
        for dev in (built.slow, built.fast):
            sh.run(["wipefs", "-a", dev], timeout=60)
        # small buckets: the kernel wants at least 1024 of them on the cache device
        sh.run(["make-bcache", "--bucket", f"{int(options.get('bucket_kb', 64))}k",
                "-C", built.fast, "-B", built.slow], timeout=120)
        for dev in (built.slow, built.fast):  # udev (bcache-tools' rule) may have done it
            with contextlib.suppress(OSError):
                sh.write("/sys/fs/bcache/register", dev)
        slow_name = Path(sh.realpath(built.slow)).name
        link = f"/sys/block/{slow_name}/bcache/dev"
        deadline = time.monotonic() + 120
        while not sh.exists(link) and time.monotonic() < deadline:
            time.sleep(0.2)
        top_name = Path(sh.realpath(link)).name
        built.top = f"/dev/{top_name}"
        built.bcache_dir = Path("/sys/block") / top_name / "bcache"
        state = str(built.bcache_dir / "state")
        while sh.read(state).strip() == "no cache":
            if time.monotonic() > deadline:
                raise TuneError(f"bcache {top_name} has no cache device attached ({built.fast} "
                                "did not register).", "see the kernel log (dmesg).")
            time.sleep(0.2)
        super_block = sh.run(["bcache-super-show", built.fast], timeout=60)
        uuid = re.search(r"^cset\.uuid\s+([0-9a-f-]+)", super_block, re.M)
        cset = f"/sys/fs/bcache/{uuid.group(1)}" if uuid else ""
        built.details["cache_set"] = cset
        if cset:  # a slow cache (emulated, or busy) counts as congested and is bypassed
            for knob in ("congested_read_threshold_us", "congested_write_threshold_us"):
                sh.write(f"{cset}/{knob}", str(options.get(knob, 0)))
        self._made("bcache", dev=top_name, backing=slow_name, cset=cset)
        for knob, value in (("cache_mode", options["cache_mode"]),
                            ("sequential_cutoff", int(options.get("sequential_cutoff_kb", 4096))
                             * 1024),
                            ("writeback_percent", options.get("writeback_percent", 10))):
            sh.write(str(built.bcache_dir / knob), str(value))


def stop_bcache(sh: Shell, item: dict[str, str], timeout: float = 30.0) -> None:
    """Stop a bcache device, then its cache set (which holds the fast device), and wait until
    both are gone; OSError if one stays."""
    dev, backing, cset = item["dev"], item["backing"], item.get("cset", "")
    if sh.exists(f"/sys/block/{dev}/bcache/stop"):
        sh.write(f"/sys/block/{dev}/bcache/stop", "1")
    if cset.startswith("/sys/fs/bcache/") and sh.exists(f"{cset}/stop"):
        sh.write(f"{cset}/stop", "1")
    deadline = time.monotonic() + timeout
    while (sh.exists(f"/sys/block/{dev}") or sh.exists(f"/sys/block/{backing}/bcache")
           or (cset.startswith("/sys/fs/bcache/") and sh.exists(cset))):
        if time.monotonic() > deadline:
            raise OSError(f"bcache {dev} (backing {backing}, set {cset}) does not go away")
        time.sleep(0.1)


def _in_use(dev: str) -> bool:
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
    except OSError:
        return True
    os.close(fd)
    return False

