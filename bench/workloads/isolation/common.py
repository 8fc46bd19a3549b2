"""What the isolation workloads share: in-instance programs, host-side runs, safety bounds."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bench.core import procs
from bench.core.errors import ParseError
from bench.tiers.base import Instance

if TYPE_CHECKING:
    from bench.workloads.base import Workload

T = TypeVar("T")
# The suite's workload registry, handed over by bench/workloads/__init__.py once it is built
# (victims and antagonists are workloads of it; importing it from here would be a cycle).
_REGISTRY: dict[str, Workload[Any]] = {}


def use_registry(workloads: dict[str, Workload[Any]]) -> None:
    _REGISTRY.update(workloads)


def registry() -> dict[str, Workload[Any]]:
    return _REGISTRY

# Safety bounds (the brief's numbers): no antagonist may be set past them.
MAX_FORK_BOUND = 2000
MAX_STORM_S = 20.0  # plus the exec's slack: bench ends a storm within 30 s
STORM_SLACK_S = 8.0
MAX_FLOOD_S = 30.0
MAX_WRITE_MB = 1024
HOG_OVER_LIMIT_MB = 256
HOG_RAM_FRACTION = 0.10


def source(name: str) -> str:
    """The source of bench/workloads/isolation/inside/<name>.py."""
    return (resources.files("bench.workloads.isolation") / "inside" / f"{name}.py").read_text()


def inside(instance: Instance, program: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run an inside/ program in the instance with the image's python3; its JSON output."""
    done = instance.exec(["python3", "-c", source(program), *args], timeout=timeout)
    return parse_json(done.stdout, program)


def on_host(program: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run an inside/ program on the host itself (the host's view, outside every tier)."""
    done = procs.run([sys.executable, "-c", source(program), *args], timeout=timeout)
    return parse_json(done.stdout, program)


def parse_json(text: str, program: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise ParseError(f"The isolation program {program!r} printed no JSON: {text[-300:]!r}",
                         "see raw/ output and the run's stderr.")
    data = json.loads(lines[-1])
    assert isinstance(data, dict)
    return data


class Concurrent(Generic[T]):
    """Run a call in a thread; `result()` joins it and returns its value or raises its error."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], T]) -> None:
        try:
            self._value = call()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self, timeout: float | None = None) -> T:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the concurrent call did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
