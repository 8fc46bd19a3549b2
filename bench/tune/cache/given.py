"""Cache setups on devices someone else made: a kvm guest's slow and fast virtio disks.

The tier hands over a Shell into the instance and the two device paths. Each setup of the sweep
gets its own slice of both disks (dm-linear), so every setup keeps its files between runs as on
the host; the recipe (bcache, dm-cache, dm-writecache, or a plain slice) is built on its slices
inside the guest, its ext4 file system mounted under /run/bench-cache and bound over the
instance's scratch directory while its cells run. Nothing is written to the host's state file:
the devices live and die with the instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.tune.cache.devices import Built, stop_bcache
from bench.tune.cache.probe import MODULES
from bench.tune.cache.recipes import device_spec, setups
from bench.tune.cache.shell import Shell
from bench.tune.cache.state import CacheLab
from bench.tune.catalog import TuneError

MOUNTS = Path("/run/bench-cache")


class GivenDevicesLab(CacheLab):
    python = "python3"

    def __init__(self, run_id: str, shell: Shell, slow: str, fast: str, scratch: str,
                 slowed_by: str, names: list[str],
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.run_id = run_id
        self.shell = shell
        self.slow, self.fast, self.scratch, self.slowed_by = slow, fast, scratch, slowed_by
        self.names = [n for n in names if n != "none"]
        self.spec = device_spec()
        self.built: dict[str, Built] = {}
        self.log = log
        self.state: dict[str, Any] = {"run_id": run_id, "made": []}
        self.current = ""

    def _made(self, kind: str, **what: Any) -> None:
        self.state["made"].append({"kind": kind, **what})

    def _slice(self, dev: str, label: str, index: int) -> str:
        # whole MiBs: dm-writecache refuses a length that is not a multiple of its block size
        size = self._sectors(dev) // len(self.names) // 2048 * 2048
        return self._dm(label, f"0 {size} linear {dev} {index * size}")

    def build(self, name: str) -> Built:
        if name not in self.built:
            self._build(name)
        if self.current != name:
            self.unbind()
            self.shell.run(["mount", "--bind", str(self.built[name].mount), self.scratch],
                           timeout=60)
            self.current = name
        return self.built[name]

    def unbind(self) -> None:
        if self.current:
            self.shell.run(["umount", self.scratch], timeout=120)
            self.current = ""

    def _build(self, name: str) -> None:
        known = setups()
        if name not in known or name not in self.names:
            raise TuneError(f"no cache setup named {name!r} in this sweep", "see tuning/cache/.")
        recipe, variant = known[name]
        options = {**recipe.options, **recipe.variants[variant]}
        for feature in recipe.requires.kernel:
            if feature in MODULES:
                self.shell.run(["modprobe", MODULES[feature]], timeout=120)
        index = self.names.index(name)
        plain = recipe.kind == "plain"
        slow = self._slice(self.slow, f"{name}-slow", index) \
            if not plain or options.get("device") != "fast" else ""
        fast = self._slice(self.fast, f"{name}-fast", index) \
            if not plain or options.get("device") == "fast" else ""
        built = Built(setup=name, recipe=recipe, variant=variant, top="",
                      mount=MOUNTS / name, slow=slow, fast=fast)
        for dev in (slow, fast):
            if dev:
                self.shell.run(["wipefs", "-a", dev], timeout=60)
        self._stack(built, options)
        self.shell.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        "-L", f"bench-{name}"[:16], built.top], timeout=600)
        self.shell.run(["mkdir", "-p", str(built.mount)], timeout=30)
        self.shell.run(["mount", "-t", "ext4", built.top, str(built.mount)], timeout=60)
        self._made("mount", path=str(built.mount))
        built.details |= {"slow": slow or None, "fast": fast or None, "top": built.top,
                          "options": options, "slowed_by": self.slowed_by,
                          "fast_kind": "virtio disk over host memory (/dev/shm)",
                          "slice_of": {"slow": self.slow, "fast": self.fast}}
        self.built[name] = built
        self.log(f"cache setup {name}: {built.top} in the guest, bound over {self.scratch}")

    def destroy(self) -> list[str]:
        """Unmount and take every stack apart, newest first; keep going past errors."""
        removed = []
        with contextlib.suppress(BenchError, OSError):
            self.unbind()
        for item in reversed(self.state["made"]):
            kind = item["kind"]
            with contextlib.suppress(BenchError, OSError):
                if kind == "mount":
                    self.shell.run(["umount", item["path"]], timeout=120)
                elif kind == "bcache":
                    stop_bcache(self.shell, item)
                elif kind == "dm":
                    self.shell.run(["dmsetup", "remove", "--retry", item["name"]], timeout=120)
                removed.append(f"{kind} {item}")
        self.state["made"].clear()
        self.built.clear()
        return removed
