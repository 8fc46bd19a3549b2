"""The resource limits of a scenario and how instances are wired: data types every floor shares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NetworkMode = Literal["bridge", "host"]
ScratchMode = Literal["overlay", "bind"]
LimitName = Literal["cpus", "cpuset", "memory_mb", "pids", "io_read_bps", "io_write_bps",
                    "io_read_iops", "io_write_iops", "net_mbit"]
IO_LIMITS = ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops")


class Limits(BaseModel):
    """Resource limits applied identically on every tier that isolates (the host tier has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float | None = Field(None, gt=0, le=1024, description="CPU quota in CPUs (CFS quota)")
    cpuset: str | None = Field(None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    memory_mb: int | None = Field(None, ge=16, le=1 << 22)
    pids: int | None = Field(None, ge=8, le=1 << 22)
    io_read_bps: int | None = Field(None, ge=1 << 16)
    io_write_bps: int | None = Field(None, ge=1 << 16)
    io_read_iops: int | None = Field(None, ge=10, le=1 << 24)
    io_write_iops: int | None = Field(None, ge=10, le=1 << 24)
    net_mbit: float | None = Field(None, gt=0, le=100_000,
                                   description="egress rate of the instance's network link "
                                   "(tbf, counted in whole frames)")

    @property
    def has_io(self) -> bool:
        return any(getattr(self, name) is not None for name in IO_LIMITS)

    def set_fields(self) -> dict[str, object]:
        """The limits that are set (name -> value)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def merged(self, changes: Limits) -> Limits:
        """These limits with every limit `changes` sets replaced."""
        return Limits.model_validate(self.set_fields() | changes.set_fields())

    @staticmethod
    def ceiling(all_limits: list[Limits]) -> Limits:
        """The largest value of every numeric limit over `all_limits` (what an instance that
        will be switched between them must be started able to reach, e.g. a VM's vCPUs)."""
        top: dict[str, object] = {}
        for limits in all_limits:
            for key, value in limits.set_fields().items():
                old = top.get(key)
                top[key] = value if old is None or not isinstance(value, int | float) \
                    or value > old else old  # type: ignore[operator]
        return Limits.model_validate(top)
