"""Cache setups on devices someone else made: a kvm guest's slow and fast virtio disks.

The tier hands over a Shell into the instance and the two device paths; the recipe (bcache,
dm-cache, dm-writecache, or a plain device) is built on them there, one setup at a time, with
its ext4 file system mounted over the instance's scratch directory. Nothing is written to the
host's state file: the devices live and die with the instance.
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


class GivenDevicesLab(CacheLab):
    python = "python3"

    def __init__(self, run_id: str, shell: Shell, slow: str, fast: str, mount: str,
                 slowed_by: str, log: Callable[[str], None] = lambda _: None) -> None:
        self.run_id = run_id
        self.shell = shell
        self.slow, self.fast, self.mount, self.slowed_by = slow, fast, Path(mount), slowed_by
        self.spec = device_spec()
        self.built: dict[str, Built] = {}
        self.log = log
        self.state: dict[str, Any] = {"run_id": run_id, "made": []}

    def _made(self, kind: str, **what: Any) -> None:
        self.state["made"].append({"kind": kind, **what})

    def build(self, name: str) -> Built:
        if name in self.built:
            return self.built[name]
        self.destroy()  # one setup at a time on the same two disks
        known = setups()
        if name not in known:
            raise TuneError(f"no cache setup named {name!r}", "see tuning/cache/.")
        recipe, variant = known[name]
        options = {**recipe.options, **recipe.variants[variant]}
        for feature in recipe.requires.kernel:
            if feature in MODULES:
                self.shell.run(["modprobe", MODULES[feature]], timeout=120)
        built = Built(setup=name, recipe=recipe, variant=variant, top="", mount=self.mount,
                      slow=self.slow if recipe.kind != "plain" or options.get("device") != "fast"
                      else "",
                      fast=self.fast if recipe.kind != "plain" or options.get("device") == "fast"
                      else "")
        for dev in (built.slow, built.fast):
            if dev:
                self.shell.run(["wipefs", "-a", dev], timeout=60)
        if recipe.kind == "plain":
            built.top = built.fast or built.slow
        elif recipe.kind == "bcache":
            self._bcache(built, options)
        elif recipe.kind == "dm-cache":
            self._dm_cache(built, options)
        else:
            self._dm_writecache(built, options)
        self.shell.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        "-L", f"bench-{name}"[:16], built.top], timeout=600)
        self.shell.run(["mkdir", "-p", str(self.mount)], timeout=30)
        self.shell.run(["mount", "-t", "ext4", built.top, str(self.mount)], timeout=60)
        self._made("mount", path=str(self.mount))
        built.details |= {"slow": built.slow or None, "fast": built.fast or None,
                          "top": built.top, "options": options, "slowed_by": self.slowed_by,
                          "fast_kind": "virtio disk over host memory"}
        self.built[name] = built
        self.log(f"cache setup {name}: {built.top} mounted at {self.mount}")
        return built

    def destroy(self) -> list[str]:
        """Unmount and take the stack apart, newest first; keep going past errors."""
        removed = []
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
