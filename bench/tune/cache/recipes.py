"""Cache recipes (tuning/cache/*.yaml) and the device spec (tuning/cache/devices.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from bench.tune.catalog import TuneError, tuning_dir


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
    """The slow device; its values live in tuning/cache/devices.yaml only (no defaults here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size_mb: int = Field(ge=64)
    read_bps: int = Field(ge=1 << 20)
    write_bps: int = Field(ge=1 << 20)
    read_iops: int = Field(ge=10)
    write_iops: int = Field(ge=10)
    delay_ms: int = Field(ge=0, le=1000)
    slow_down: tuple[Literal["blkio-throttle", "dm-delay"], ...] = Field(min_length=1)


class FastSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size_mb: int = Field(ge=64)
    kinds: tuple[Literal["zram", "brd", "tmpfs-loop"], ...] = Field(min_length=1)


class DeviceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slow: SlowSpec
    fast: FastSpec


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
    """The slow and fast devices of every cache setup: tuning/cache/devices.yaml, the one
    source of their sizes and speeds."""
    path = (directory or tuning_dir() / "cache") / "devices.yaml"
    try:
        return DeviceSpec.model_validate(_yaml(path))
    except ValueError as exc:
        raise TuneError(f"{path} is not a valid device spec: {exc}",
                        "restore tuning/cache/devices.yaml from bench's checkout.") from None

