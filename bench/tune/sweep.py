"""The scenario's optional `sweep:` section and its expansion into cells.

    sweep:
      tunables:                      # each takes each value in turn (others stay as found)
        vm.dirty_background_ratio: [1, 5, 20]
        block.read_ahead_kb: null    # null: the catalog's default sweep values
      profiles:                      # a named set of tunables is one setting
        writeback-early: null        # null: the catalog's profile of that name
        mine: {vm.dirty_ratio: 10, vm.dirty_background_ratio: 2}
      combine: one-at-a-time         # or product (every combination of the tunables' values)
      baseline: true                 # also measure the host's settings as found
      device: scratch                # per-device tunables act on this device ('scratch' =
                                     # the one under the scratch directory) or a name
      cache: [none-slow, none-fast, bcache-writeback]   # cache setups (tuning/cache/*.yaml)
      cache_state: cold              # cold | warm: page/device caches before each run

Every cell of the scenario is taken once per setting (and cache setup). A cell's `tunables`
holds only what differs from the host as found; `{}` is the baseline.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bench.tune import catalog as catalog_mod
from bench.tune.catalog import TuneError, Value


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tunables: dict[str, list[Any] | None] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    combine: Literal["one-at-a-time", "product"] = "one-at-a-time"
    baseline: bool = True
    device: str = Field("scratch", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    allow_unsafe: bool = False
    cache: list[str] = Field(default_factory=list)
    cache_state: Literal["cold", "warm"] = "cold"

    @field_validator("tunables")
    @classmethod
    def known_tunables(cls, tunables: dict[str, list[Any] | None]) -> dict[str, list[Any] | None]:
        catalog = catalog_mod.load()
        for name in tunables:
            if name not in catalog.tunables:
                raise ValueError(f"unknown tunable {name!r}; allowed: "
                                 + ", ".join(catalog.tunables))
        return tunables

    @field_validator("profiles")
    @classmethod
    def known_profiles(cls, profiles: dict[str, dict[str, Any] | None]
                       ) -> dict[str, dict[str, Any] | None]:
        catalog = catalog_mod.load()
        for name, values in profiles.items():
            if values is None and name not in catalog.profiles:
                raise ValueError(f"unknown profile {name!r}; give its values or one of: "
                                 + ", ".join(catalog.profiles))
            for key in (values or {}):
                if key not in catalog.tunables:
                    raise ValueError(f"profile {name!r}: unknown tunable {key!r}")
        return profiles

    @field_validator("cache")
    @classmethod
    def known_caches(cls, names: list[str]) -> list[str]:
        from bench.tune.cache import setups

        known = setups()
        for name in names:
            if name not in known:
                raise ValueError(f"unknown cache setup {name!r}; allowed: "
                                 + ", ".join(sorted(known)))
        if len(set(names)) != len(names):
            raise ValueError("a cache setup is listed twice")
        return names

    @model_validator(mode="after")
    def values_allowed(self) -> SweepSpec:
        problems = []
        for setting in self.settings():
            for name, value in setting.items():
                problem = catalog_mod.load().get(name).check(value, self.allow_unsafe)
                if problem:
                    problems.append(f"{name}={value!r}: {problem}")
        if problems:
            hint = "" if self.allow_unsafe else \
                " (set allow_unsafe: true to write outside the safe range)"
            raise ValueError("; ".join(dict.fromkeys(problems)) + hint)
        if not self.settings():
            raise ValueError("the sweep has no setting to measure: give tunables or profiles, "
                             "or keep baseline: true")
        return self

    def values_of(self, name: str) -> list[Value]:
        tunable = catalog_mod.load().get(name)
        raw = self.tunables.get(name) or list(tunable.sweep)
        try:
            return [tunable.coerce(v) for v in raw]
        except ValueError as exc:
            raise ValueError(f"tunables.{name}: {exc}") from None

    def profile_values(self, name: str) -> dict[str, Value]:
        catalog = catalog_mod.load()
        raw = self.profiles[name]
        values = raw if raw is not None else catalog.profiles[name].values
        return {k: catalog.get(k).coerce(v) for k, v in values.items()}

    def settings(self) -> list[dict[str, Value]]:
        """Every tunable setting a cell is measured under, baseline ({}) first."""
        found: list[dict[str, Value]] = [{}] if self.baseline else []
        if self.combine == "product" and self.tunables:
            names = list(self.tunables)
            for combo in itertools.product(*(self.values_of(n) for n in names)):
                found.append(dict(zip(names, combo, strict=True)))
        else:
            for name in self.tunables:
                found += [{name: value} for value in self.values_of(name)]
        found += [self.profile_values(name) for name in self.profiles]
        unique: list[dict[str, Value]] = []
        for setting in found:
            if setting not in unique:
                unique.append(setting)
        return unique


def axes(spec: SweepSpec | None, tier: str) -> tuple[list[tuple[dict[str, Value], str]],
                                                      list[str]]:
    """(tunables, cache) pairs a cell on `tier` is measured under, and why any were left out."""
    if spec is None:
        return [({}, "none")], []
    from bench.tiers.registry import TIERS
    from bench.tune.cache import setups as cache_setups
    from bench.tune.cache import unavailable_reason
    from bench.tune.sysfs import HostFs
    from bench.tune.tuner import Tuner

    catalog = catalog_mod.load()
    host = Tuner(catalog, HostFs())
    notes: list[str] = []
    settings = []
    for setting in spec.settings():
        why = ""
        for name in setting:
            tunable = catalog.get(name)
            if tier not in tunable.tiers:
                why = (f"{name} cannot be set from the {tier} tier"
                       + (f": {tunable.tiers_note}" if tunable.tiers_note else ""))
            elif tunable.probe and not (TIERS[tier].runs_own_kernel and tunable.guest):
                why = host.available(name)
            if why:
                break
        if why:
            notes.append(f"{tier}: setting {setting} left out: {why}")
        else:
            settings.append(setting)
    caches = []
    for name in spec.cache or ["none"]:
        if name == "none":
            caches.append(name)
            continue
        where = cache_devices(tier)
        if where == "host":
            why = unavailable_reason(name)
        elif where == "guest":  # built inside the tier's own kernel: only the name is checked
            why = "" if name in cache_setups() else f"no cache setup named {name!r}"
        else:
            why = (f"the {tier} tier cannot mount a cache device as an instance's scratch "
                   f"(tiers that can: {', '.join(cache_tiers())})")
        if why:
            notes.append(f"{tier}: cache setup {name} unavailable: {why}")
        else:
            caches.append(name)
    return [(s, c) for c in caches for s in settings], notes


def cache_devices(tier: str) -> str:
    """Where the tier can mount a cache setup as an instance's scratch (Tier.cache_devices)."""
    from bench.tiers.registry import TIERS

    return TIERS[tier].cache_devices if tier in TIERS else ""


def cache_tiers() -> list[str]:
    from bench.tiers.registry import TIERS

    return [name for name, cls in TIERS.items() if cls.cache_devices]


def notes(spec: SweepSpec | None, tiers: list[str]) -> list[str]:
    """Why settings or cache setups were left out, per tier (for the console and manifest)."""
    if spec is None:
        return []
    found: list[str] = []
    for tier in tiers:
        found += axes(spec, tier)[1]
    return found


__all__ = ["SweepSpec", "TuneError", "axes", "cache_devices", "cache_tiers", "notes"]
