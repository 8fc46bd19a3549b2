"""The resource limits of a scenario and how instances are wired: data types every floor shares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NetworkMode = Literal["bridge", "host"]
ScratchMode = Literal["overlay", "bind"]


class Limits(BaseModel):
    """Resource limits applied identically on every tier that isolates (the host tier has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float | None = Field(None, gt=0, le=1024, description="CPU quota in CPUs (CFS quota)")
    cpuset: str | None = Field(None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    memory_mb: int | None = Field(None, ge=16, le=1 << 22)
    pids: int | None = Field(None, ge=8, le=1 << 22)
    io_read_bps: int | None = Field(None, ge=1 << 16)
    io_write_bps: int | None = Field(None, ge=1 << 16)
