"""Scenario files: YAML validated by pydantic. Every error names the file, the field path and
what is allowed there."""

from __future__ import annotations

import itertools
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.core import shipped, yamlio
from bench.core.errors import ScenarioError
from bench.core.limits import Limits, NetworkMode, ScratchMode
from bench.tiers.registry import TIERS
from bench.tune.sweep import SweepSpec
from bench.workloads import WORKLOADS

DEFAULT_SCENARIO = "quick"


def scenario_dir() -> Path:
    """Shipped scenarios: $BENCH_SCENARIO_DIR, else the package's own."""
    return shipped.scenario_dir()


class WorkloadEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str = Field(description="a name from `bench list`")
    params: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(
        default_factory=dict, description="parameter -> values; every combination is a cell"
    )
    repetitions: int | None = Field(None, ge=1, le=10000)
    timeout_s: float | None = Field(None, gt=0, le=86400)

    @field_validator("workload")
    @classmethod
    def known_workload(cls, name: str) -> str:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(sorted(WORKLOADS))}")
        return name

    @field_validator("matrix")
    @classmethod
    def non_empty(cls, matrix: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in matrix.items():
            if not values:
                raise ValueError(f"matrix.{key} is empty; give at least one value")
        return matrix

    def combinations(self) -> list[dict[str, Any]]:
        keys = sorted(self.matrix)
        return [
            {**self.params, **dict(zip(keys, combo, strict=True))}
            for combo in itertools.product(*(self.matrix[k] for k in keys))
        ]


class TierOverride(BaseModel):
    """Lighter plans for one tier (e.g. VMs under TCG emulation in a quick scenario)."""

    model_config = ConfigDict(extra="forbid")

    repetitions: int | None = Field(None, ge=1, le=10000,
                                    description="at most this many repetitions of each cell")
    warmup: int | None = Field(None, ge=0, le=100, description="warm-up rounds of each cell")
    skip: list[str] = Field(default_factory=list, description="workloads not run on this tier")

    @field_validator("skip")
    @classmethod
    def known_workloads(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in WORKLOADS:
                raise ValueError(f"unknown workload {name!r}; allowed: "
                                 f"{', '.join(sorted(WORKLOADS))}")
        return names


class Switch(BaseModel):
    """Limits changed on the running instances `at_s` seconds into a switch run."""

    model_config = ConfigDict(extra="forbid")

    at_s: float = Field(gt=0, le=3600, description="seconds after the workload started")
    set: Limits = Field(description="the limits to change (the others stay as they are)")


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    tiers: list[str] = Field(min_length=1)
    require_all_tiers: bool = Field(
        False, description="fail instead of skipping a tier that is unavailable here"
    )
    repetitions: int = Field(5, ge=1, le=10000)
    warmup: int = Field(1, ge=0, le=100)
    seed: int = Field(1, ge=0)
    target_ci: float | None = Field(
        None, gt=0, lt=1, description="adaptive repetitions: after `repetitions`, repeat a cell "
        "until its median's 95% CI half-width is below this fraction of the median (0.02 = 2%)")
    max_repetitions: int | None = Field(
        None, ge=1, le=10000, description="adaptive: at most this many repetitions of a cell "
        "(default 10 x repetitions)")
    time_budget_s: float | None = Field(
        None, gt=0, le=7 * 86400, description="adaptive: stop repeating a cell once its runs "
        "took this many seconds in all")
    limits: Limits = Field(default_factory=Limits)
    network: NetworkMode = Field(
        "bridge", description="instances' network: bridge (own namespace, veth, NAT) or host")
    scratch: ScratchMode = Field(
        "overlay", description="disk workloads' /scratch: overlay (the instance's root layer) "
        "or bind (a host directory or volume)")
    tier_overrides: dict[str, TierOverride] = Field(
        default_factory=dict, description="tier -> fewer repetitions / warm-ups on that tier")
    workloads: list[WorkloadEntry] = Field(min_length=1)
    switches: list[Switch] = Field(
        default_factory=list, description="live limit changes during each run (a switch run: "
        "one long workload reports a 1-second time series; see bench/run/switches.py)")
    sweep: SweepSpec | None = Field(
        None, description="tunables / profiles / cache setups each cell is measured under "
        "(bench/tune/sweep.py)")

    @field_validator("tiers")
    @classmethod
    def known_tiers(cls, tiers: list[str]) -> list[str]:
        for name in tiers:
            if name not in TIERS:
                raise ValueError(f"unknown tier {name!r}; allowed: {', '.join(TIERS)}")
        if len(set(tiers)) != len(tiers):
            raise ValueError("a tier is listed twice")
        return tiers

    @field_validator("tier_overrides")
    @classmethod
    def known_override_tiers(cls, overrides: dict[str, TierOverride]) -> dict[str, TierOverride]:
        for name in overrides:
            if name not in TIERS:
                raise ValueError(f"unknown tier {name!r}; allowed: {', '.join(TIERS)}")
        return overrides


def _path_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model whose field set applies at `loc` (to list allowed keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return _unwrap(arg)
    return annotation


def _allowed(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    field_name = loc[-1] if loc else None
    parent = _model_at(model, loc[:-1])
    if parent is None or not isinstance(field_name, str):
        return ""
    if field_name not in parent.model_fields:
        return "allowed keys: " + ", ".join(parent.model_fields)
    annotation = _unwrap(parent.model_fields[field_name].annotation)
    if get_origin(annotation) is Literal:
        return "allowed: " + ", ".join(repr(a) for a in get_args(annotation))
    return ""


def _describe(error: Any, model: type[BaseModel], prefix: tuple[int | str, ...] = ()) -> str:
    loc = tuple(error["loc"])
    where = _path_text(prefix + loc)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    hint = _allowed(model, loc)
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) \
        else f" (got {got!r})"
    return f"{where}: {message}{shown}" + (f"; {hint}" if hint else "")


def _check_params(scenario: Scenario) -> list[str]:
    """Validate each workload's params and each matrix value against that workload's model."""
    problems = []
    for index, entry in enumerate(scenario.workloads):
        model = WORKLOADS[entry.workload].params_model
        base = ("workloads", index)
        for key in entry.matrix:
            if key in entry.params:
                problems.append(f"{_path_text((*base, 'matrix', key))}: also set in params; "
                                "give a parameter in one place")
        try:
            model.model_validate(entry.params | {k: v[0] for k, v in entry.matrix.items()})
        except ValidationError as exc:
            for err in exc.errors():
                first = err["loc"][0] if err["loc"] else None
                in_matrix = isinstance(first, str) and first in entry.matrix
                where = ("matrix", str(first), 0) if in_matrix else ("params",)
                loc = tuple(err["loc"][1:]) if in_matrix else tuple(err["loc"])
                problems.append(_describe({**err, "loc": loc}, model, (*base, *where)))
        for key, values in entry.matrix.items():
            for position, value in enumerate(values[1:], 1):
                try:
                    model.model_validate(entry.params | {key: value})
                except ValidationError as exc:
                    for err in exc.errors():
                        if err["loc"] and err["loc"][0] == key:
                            problems.append(_describe({**err, "loc": tuple(err["loc"][1:])},
                                                      model, (*base, "matrix", key, position)))
    return problems


def _check_switches(scenario: Scenario) -> list[str]:
    """net_mbit needs a link of the instance's own; switch runs need a time series and tiers
    that take switches; switches come in time order."""
    problems = []
    sets = [("limits", scenario.limits)] + [
        (f"switches[{i}].set", s.set) for i, s in enumerate(scenario.switches)]
    if scenario.network == "host":
        for where, limits in sets:
            if limits.net_mbit is not None:
                problems.append(f"{where}.net_mbit: an egress rate needs network: bridge; with "
                                "network: host it would shape the host's own interfaces")
    if not scenario.switches:
        return problems
    for i, switch in enumerate(scenario.switches):
        if not switch.set.set_fields():
            problems.append(f"switches[{i}].set: sets no limit")
        if i and switch.at_s <= scenario.switches[i - 1].at_s:
            problems.append(f"switches[{i}].at_s: {switch.at_s:g} is not after the switch "
                            f"before ({scenario.switches[i - 1].at_s:g}); list them in time order")
    for name in scenario.tiers:
        if not TIERS[name].live_switches:
            problems.append(f"tiers: {name!r} has no limits and takes no switches; drop it from "
                            "a scenario with switches")
    for index, entry in enumerate(scenario.workloads):
        if WORKLOADS[entry.workload].series_metric is None:
            with_series = sorted(n for n, w in WORKLOADS.items() if w.series_metric)
            problems.append(f"workloads[{index}].workload: {entry.workload!r} reports no time "
                            f"series, so switches cannot be followed; allowed: "
                            f"{', '.join(with_series)}")
    return problems


def resolve_path(name_or_path: str) -> Path:
    """A scenario is named by its path or by the name of a shipped one (`quick`, `full`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = scenario_dir() / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in scenario_dir().glob("*.yaml")))
    raise ScenarioError(f"No scenario named {name_or_path!r}.",
                        f"give a path to a YAML file or one of: {names}.")


def parse(text: str, source: str) -> Scenario:
    try:
        data = yamlio.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source} is not valid YAML: {exc}",
                            "fix the YAML syntax at the line shown.") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source} must hold a mapping of scenario keys, not "
                            f"{type(data).__name__}.",
                            "start from scenarios/quick.yaml.")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, Scenario) for err in exc.errors()]
        raise ScenarioError(f"{source} is not a valid scenario:\n  - " + "\n  - ".join(problems),
                            "correct the fields named above (see scenarios/quick.yaml).") from None
    problems = _check_params(scenario) + _check_switches(scenario)
    if problems:
        raise ScenarioError(f"{source} is not a valid scenario:\n  - " + "\n  - ".join(problems),
                            "correct the fields named above (`bench list` shows each "
                            "workload's parameters).")
    return scenario


def load(name_or_path: str) -> tuple[Scenario, str]:
    """Load and validate a scenario; return it with its source text (kept in the manifest)."""
    path = resolve_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"Cannot read scenario {path}: {exc.strerror}.",
                            "check the path.") from None
    return parse(text, str(path)), text
