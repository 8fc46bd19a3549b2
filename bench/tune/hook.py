"""What the runner calls to sweep tunables and cache setups: one object, five calls.

    hook = TuningHook(scenario, rundir, tiers, console)
    hook.start(workdir)                            # restore leftovers; snapshot; build nothing yet
    hook.before_run(cell, tier, instance, peer)    # put the cell's tunables/cache in place
    meta = hook.after_run(cell)                    # metadata for the cell's samples
    hook.finish()                                  # restore everything, remove cache devices

Without a `sweep:` section it only restores what a killed run left (journal recovery).

Where a value is set:
- kvm tier: every tunable a VM has its own copy of (`guest: true`) is set inside the guest;
- other tiers: per-netns tunables inside the instance's (and its peer's) network namespace;
  host-global and per-device ones on the host, where every tier of the run shares them (the
  samples' metadata and the manifest say so).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core import faults
from bench.core.errors import BenchError
from bench.core.rundir import RunDir
from bench.core.samples import Cell
from bench.core.settings import settings
from bench.run.scenario import Scenario
from bench.tiers.base import Instance, Tier
from bench.tiers.registry import TIERS
from bench.tune import catalog as catalog_mod
from bench.tune import journal as journal_mod
from bench.tune import sweep as sweep_mod
from bench.tune.cache import CacheLab
from bench.tune.cache.given import GivenDevicesLab
from bench.tune.catalog import Tunable, TuneError
from bench.tune.sysfs import HostFs, InstanceFs, block_device_of
from bench.tune.tuner import Change, Tuner, key_text, recover

_GUEST_DEVICE = (
    "import os,sys\n"
    "d=os.stat(sys.argv[1]).st_dev\n"
    "r=os.path.realpath('/sys/dev/block/%d:%d'%(os.major(d),os.minor(d)))\n"
    "print(os.path.basename(os.path.dirname(r)) if os.path.exists(r+'/partition')"
    " else os.path.basename(r))\n"
)


def _work_root() -> Path:
    return settings().work_dir


class TuningHook:
    def __init__(self, scenario: Scenario, rundir: RunDir, tiers: list[str],
                 say: Callable[[str], None]) -> None:
        self.spec: sweep_mod.SweepSpec | None = getattr(scenario, "sweep", None)
        self.rundir = rundir
        self.run_id = rundir.run_id
        self.tiers = tiers
        self.say = say
        self.catalog = catalog_mod.load()
        self.journal: journal_mod.Journal | None = None
        self.host: Tuner | None = None
        self.guests: dict[int, Tuner] = {}
        self.device = ""
        self.lab: CacheLab | None = None
        self.bound: dict[str, str] = {}  # tier -> cache setup mounted over its scratch
        self._bound_tiers: dict[str, Tier] = {}
        self.guest_lab: tuple[Instance, GivenDevicesLab] | None = None  # the current guest's lab
        self._lab_of: dict[str, CacheLab] = {}  # cell key -> the lab its setup is in
        self._counters: dict[str, dict[str, int]] = {}
        self._applied: dict[str, dict[str, Any]] = {}
        self.writes: dict[str, int] = {}  # tunable -> writes during the run (restores included)
        self.started = False

    # -- start / finish --------------------------------------------------------------------
    def start(self, workdir: Path) -> None:
        for line in recover(self.catalog, log=self.say):
            self.say(f"[tune] leftover from a killed run: {line}")
        if self.spec is None:
            return
        others = [s for s in journal_mod.live_sessions()
                  if s not in (self.run_id, journal_mod.MANUAL)]
        if others:
            raise TuneError(f"Another bench run ({', '.join(others)}) is sweeping tunables "
                            "right now; two sweeps would record each other's values as "
                            "originals.", "wait for it to finish, then start this run.")
        self.journal = journal_mod.Journal(self.run_id)
        self.host = Tuner(self.catalog, HostFs(), self.journal, self.spec.allow_unsafe)
        self.device = self.spec.device
        if self.device == "scratch":
            try:
                self.device = block_device_of(workdir)
            except TuneError as exc:
                self.device = ""
                self.say(f"[tune] per-device tunables are off: {exc.cause}")
        # cache devices live next to the journal, outside the run's work dir (which the
        # runner removes before the hook's finish)
        self.lab = CacheLab(self.run_id, journal_mod.state_dir(),
                            log=lambda m: self.say(f"[tune] {m}"))
        self.started = True
        notes = sweep_mod.notes(self.spec, self.tiers)
        for note in notes:
            self.say(f"[tune] {note}")
        if self._shared_note():
            self.say(f"[tune] {self._shared_note()}")
        manifest = self.rundir.manifest()
        tuning = manifest.get("tuning") or {}
        if "as_found" not in tuning:  # a resumed run keeps the first snapshot
            tuning["as_found"] = self.snapshot()
        tuning.update({
            "device": self.device or None,
            "sweep": self.spec.model_dump(mode="json"),
            "settings": self.spec.settings(),
            "left_out": notes,
            "shared": self._shared_note(),
        })
        self.rundir.update_manifest(tuning=tuning)

    def snapshot(self) -> dict[str, str]:
        tuner = self.host or Tuner(self.catalog, HostFs())
        return tuner.snapshot([self.device] if self.device else [])

    def finish(self) -> None:
        """Restore every tunable, unmount and remove the cache devices. Idempotent."""
        if not self.started:
            return
        problems = []
        for key in list(self.bound):
            self._unbind(key)
        restored: list[str] = []
        if self.host is not None:
            try:
                restored = [str(c) for c in self.host.restore_all()]
            except BenchError as exc:
                problems.append(exc.cause)
        removed: list[str] = []
        try:
            removed = self.lab.destroy() if self.lab is not None else []
        except BenchError as exc:  # a failed removal is a problem, never counted as removed
            problems.append(exc.cause)
        self.guest_lab = None
        self._lab_of.clear()
        if self.journal is not None:
            self.journal.close()
        after = self.snapshot()
        manifest = self.rundir.manifest()
        tuning = manifest.get("tuning") or {}
        before = tuning.get("as_found", {})
        changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
        tuning.update({"writes": self.writes, "restored": restored, "after": after,
                       "differs_after": changed,
                       "cache_removed": removed, "restore_problems": problems})
        self.rundir.update_manifest(tuning=tuning)
        self.started = False
        if restored:
            self.say(f"[tune] restored {len(restored)} tunable(s): " + "; ".join(restored))
        if problems or changed:
            self.say(f"[tune] NOT everything is back: {problems or changed}; run "
                     "`bench tune restore`.")

    # -- per run ---------------------------------------------------------------------------
    def before_run(self, cell: Cell, tier: Tier, instance: Instance | None,
                   peer: Instance | None) -> None:
        if not self.started or self.host is None:
            return
        self._cache_in_place(cell, tier, instance)
        host_wanted: dict[tuple[str, str | None], Any] = {}
        inside: dict[tuple[str, str | None], Any] = {}
        applied: dict[str, Any] = {}
        in_guest = TIERS[cell.tier].runs_own_kernel
        for name, value in cell.tunables.items():
            tunable = self.catalog.get(name)
            if in_guest and tunable.guest:
                device = self._guest_device(instance) if tunable.per_device else None
                inside[(name, device)] = value
                where = "inside the guest (guest-local)"
            elif tunable.scope == "per-netns" and TIERS[cell.tier].own_netns:
                inside[(name, None)] = value
                where = "inside the instance's network namespace"
            else:
                device = self._device_for(cell, tunable)
                host_wanted[(name, device)] = value
                where = "on the host, shared by every tier of this run that runs on the " \
                    "host's kernel (" + ", ".join(t for t in self.tiers
                                                  if not TIERS[t].runs_own_kernel) + ")"
            applied[name] = {"value": value, "scope": tunable.scope, "set": where}
            if tunable.per_device:
                applied[name]["device"] = next(
                    (d for (n, d) in {**host_wanted, **inside} if n == name), None)
        if any(device == "" for _, device in host_wanted):
            raise TuneError("A per-device tunable has no device to act on.",
                            "set `sweep.device` to a block device name.")
        self._count(self.host.set_state(host_wanted))
        for target in (instance, peer):
            if target is None:
                continue
            tuner = self.guests.get(id(target))
            if tuner is None and not inside:
                continue
            if tuner is None:
                label = f"{cell.tier} {target.spec.role}"
                tuner = Tuner(self.catalog, InstanceFs(target, label),
                              allow_unsafe=bool(self.spec and self.spec.allow_unsafe))
                self.guests[id(target)] = tuner
            self._count(tuner.set_state(inside), f" ({cell.tier} {target.spec.role})")
        self._applied[cell.key] = applied
        if applied:
            faults.point("tune.applied")
        lab = self._lab(cell)
        if cell.cache != "none" and lab is not None:
            self._counters[cell.key] = lab.counters(cell.cache)

    def after_run(self, cell: Cell) -> dict[str, Any]:
        """Metadata for the run's samples (merged over the instance's own)."""
        if not self.started:
            return {}
        meta: dict[str, Any] = {}
        applied = self._applied.pop(cell.key, {})
        if applied:
            meta["tuning"] = applied
        lab = self._lab(cell)
        if cell.cache != "none" and lab is not None:
            before = self._counters.pop(cell.key, {})
            try:
                left = lab.drain(cell.cache)
                now = lab.counters(cell.cache)
            except (BenchError, OSError) as exc:
                return {**meta, "cache_error": str(exc)}
            built = lab.built[cell.cache]
            meta.update({
                "scratch_device": built.top, "scratch_fs": "ext4", "scratch_mode": "cache setup",
                "cache": {**built.details, "setup": cell.cache, "state": self.spec.cache_state
                          if self.spec else "cold", "dirty_left_after_drain": left,
                          "counters": {k: v - before[k] for k, v in now.items() if k in before}},
            })
        return meta

    # -- internals -------------------------------------------------------------------------
    def _count(self, changes: list[Change], where: str = "") -> None:
        for change in changes:
            if change.written:
                key = key_text(change.name, change.device) + where
                self.writes[key] = self.writes.get(key, 0) + 1

    def _shared_note(self) -> str:
        assert self.spec is not None
        names = sorted({n for s in self.spec.settings() for n in s
                        if self.catalog.get(n).scope in ("host-global", "per-device")})
        if not names:
            return ""
        host_tiers = [t for t in self.tiers if not TIERS[t].runs_own_kernel]
        return (f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} host-wide: set on "
                f"the host and shared by every tier that runs on it ({', '.join(host_tiers)})"
                + ("; the kvm tier sets its own copy inside the guest" if
                   len(host_tiers) < len(self.tiers) else "") + ".")

    def _device_for(self, cell: Cell, tunable: Tunable) -> str | None:
        if not tunable.per_device:
            return None
        lab = self._lab(cell)
        if cell.cache != "none" and lab is not None and lab is self.lab:
            return Path(os.path.realpath(lab.built[cell.cache].top)).name
        return self.device

    def _guest_device(self, instance: Instance | None) -> str:
        if instance is None:
            raise TuneError("A per-device tunable needs the guest instance.",
                            "sweep per-device tunables with workloads that use an instance.")
        done = instance.exec(["python3", "-c", _GUEST_DEVICE, instance.scratch_dir()],
                             timeout=30)
        return done.stdout.strip()

    def _cache_in_place(self, cell: Cell, tier: Tier, instance: Instance | None) -> None:
        """Put the cell's cache setup under the instance's scratch (or take it away)."""
        where = getattr(tier, "cache_devices", "")
        if where == "guest":
            self._cache_in_guest(cell, tier, instance)
            return
        current = self.bound.get(cell.tier)
        if current == cell.cache or (current is None and cell.cache == "none"):
            if cell.cache != "none":
                self._state(cell.cache)
            return
        if current is not None:
            self._unbind(cell.tier)
        if cell.cache == "none":
            return
        if where != "host":
            raise TuneError(f"Cache setups cannot be mounted into the {cell.tier} tier.",
                            "measure cache setups on a tier that can (host, kvm).")
        assert self.lab is not None
        built = self.lab.build(cell.cache)
        tier.bind_scratch(built.mount)
        self.bound[cell.tier] = cell.cache
        self._bound_tiers[cell.tier] = tier
        self._state(cell.cache)

    def _cache_in_guest(self, cell: Cell, tier: Tier, instance: Instance | None) -> None:
        """Build the setup inside the instance, on the disks its tier hot-plugs into it."""
        self._lab_of.pop(cell.key, None)
        if cell.cache == "none":
            if self.guest_lab is not None and self.guest_lab[0] is instance:
                self.guest_lab[1].unbind()  # the cell runs on the instance's own scratch
            return
        if instance is None:
            raise TuneError(f"Cache setup {cell.cache} needs an instance of the {cell.tier} "
                            "tier to be built in.", "sweep cache setups with disk workloads.")
        if self.guest_lab is None or self.guest_lab[0] is not instance:
            # a new instance: the previous one (and the lab inside it) is gone
            names = list(self.spec.cache) if self.spec is not None else [cell.cache]
            self.guest_lab = (instance, tier.cache_lab(instance, names,
                                                       log=lambda m: self.say(f"[tune] {m}")))
        lab = self.guest_lab[1]
        lab.build(cell.cache)
        self._lab_of[cell.key] = lab
        self._state(cell.cache, lab)

    def _state(self, setup: str, lab: CacheLab | None = None) -> None:
        lab = lab or self.lab
        assert lab is not None
        if self.spec is not None and self.spec.cache_state == "warm":
            lab.make_warm(setup)
        else:
            lab.make_cold(setup)

    def _lab(self, cell: Cell) -> CacheLab | None:
        """The lab holding the cell's cache setup (a guest's own, or the host's)."""
        lab = self._lab_of.get(cell.key, self.lab)
        return lab if lab is not None and cell.cache in lab.built else None

    def _unbind(self, tier: str) -> None:
        bound = self._bound_tiers.pop(tier, None)
        self.bound.pop(tier, None)
        if bound is not None:
            with contextlib.suppress(OSError):
                bound.unbind_scratch()


def describe(applied: dict[str, Any]) -> str:
    """One line per tunable of a sample's `tuning` metadata."""
    return "; ".join(f"{key_text(k, None)}={v['value']} ({v['set']})" for k, v in applied.items())
