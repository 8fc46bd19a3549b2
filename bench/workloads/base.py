"""The Workload contract: parameters, what it needs, how it runs in an instance, how it parses.

A workload module holds one workload and its parser; add it to bench/workloads/__init__.py.
Parsers are pure functions over the tool's machine-readable output, tested on real captures.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from bench.core.samples import Measurement
from bench.tiers.base import Instance, InstanceSpec, Tier

STAMP = "/usr/local/bin/bench-stamp"  # prints CLOCK_MONOTONIC as its first act (bench/native)

Family = Literal["cpu", "memory", "disk", "network", "startup", "density", "image",
                 "isolation"]


@dataclass
class Series:
    """A workload's 1-second time series (switch runs): metric -> [(t, value)], t in seconds
    since the tool started, each value the rate over the second that ends at t; with the run's
    usual summary measurements."""

    points: dict[str, list[tuple[float, float]]]
    units: dict[str, str]
    measurements: list[Measurement] = field(default_factory=list)
    duration_s: float | None = None  # the tool's own run time (puts t=0 on the host's clock)


class Params(BaseModel):
    """Base of every workload's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Params)


@dataclass
class RunContext:
    """What one run of a workload gets from the runner."""

    tier: Tier
    instance: Instance | None
    peer: Instance | None
    new_spec: Callable[[str, list[str] | None], InstanceSpec]
    deadline: float  # time.monotonic() by which the run must be done
    raw_dir: Path
    run_key: str
    raw_files: list[str] = field(default_factory=list)
    # a switch run: the file inside the instance that the tool's start stamp goes to, and
    # whether its output goes to <start_stamp>.out as well while it runs (see tool)
    start_stamp: str | None = None
    live_output: bool = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            from bench.core.errors import CommandTimeout

            raise CommandTimeout(["(run)"], 0.0)
        return left

    def save_raw(self, name: str, text: str | bytes) -> None:
        """Keep a tool's raw output under raw/ next to the samples taken from it."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.run_key}.{name}")
        path = self.raw_dir / safe
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        self.raw_files.append(safe)

    def tool(self, argv: list[str]) -> list[str]:
        """argv as a series run starts it. In a switch run: after bench-stamp has written the
        instance's clock to `start_stamp`, and with `live_output` its output (what it prints
        as well) in <start_stamp>.out while it runs, so that the switches' clock can start
        with the tool wherever the instance is slow to get it going (bench.run.switches)."""
        if self.start_stamp is None:
            return argv
        script = f'{STAMP} > "$0" || exit 1; exec "$@"'
        if self.live_output:
            script = f'{STAMP} > "$0" || exit 1; "$@" > "$0.out"; s=$?; cat "$0.out"; exit $s'
        return ["sh", "-c", script, self.start_stamp, *argv]

    def main(self) -> Instance:
        assert self.instance is not None
        return self.instance


class Workload(ABC, Generic[P]):
    name: ClassVar[str]
    family: ClassVar[Family]
    # the metrics a reader looks at first (summary, verdicts, adaptive repetitions); () = all
    headline: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str]
    params_model: type[P]
    needs_peer: ClassVar[bool] = False
    needs_instance: ClassVar[bool] = True  # False: the workload starts its own instances
    tools: ClassVar[tuple[str, ...]] = ()  # programs it needs inside the bench image
    # tiers this workload takes no part in, each with the reason (the plan leaves them out)
    not_on: ClassVar[dict[str, str]] = {}
    # switch runs: the series metric a limit's switch shows in (limit -> metric); None: the
    # workload reports no time series
    series_metric: ClassVar[dict[str, str] | None] = None
    series_live: ClassVar[bool] = False  # its tool prints the points as it goes (first_point)

    def first_point(self, output: str) -> float | None:
        """A series tool that prints its points as it goes: the tool's own time of the first
        point in what it has printed so far (None: none yet). A switch run starts its clock
        at the tool's t=0 seen so (bench.run.switches); None here for a tool that prints
        its points only at the end (series_live False)."""
        return None

    def before_series(self, ctx: RunContext, params: P) -> None:
        """Set-up a switch run does before its clock starts (e.g. laying out a file), so that
        the switches fall where the scenario puts them in the tool's run."""

    def run_series(self, ctx: RunContext, params: P) -> Series:
        """Run once like `run`, reporting a 1-second time series as well (switch runs)."""
        raise NotImplementedError(f"{self.name} reports no time series")

    def parse_params(self, raw: dict[str, Any]) -> P:
        return self.params_model.model_validate(raw)

    @abstractmethod
    def estimate_seconds(self, params: P) -> float:
        """Expected wall time of one run, for the plan's estimate and the default timeout."""

    def instance_starts(self, params: P) -> int:
        """How many instances one run starts itself (the plan adds the tier's start time)."""
        return 0 if self.needs_instance else 1

    @abstractmethod
    def run(self, ctx: RunContext, params: P) -> list[Measurement]:
        """Run once in ctx.instance (and ctx.peer) and return the parsed measurements."""
