"""Where a run's time went: the image, each tier's preparation (the kvm tier builds its guest
there on first use), each tier's runs (instance starts included) and the teardown. Printed as
one line at the end of `bench run` and kept in the manifest as `phases_s`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - began)

    def total(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 2) for name, value in self.seconds.items()} \
            | {"total": round(self.total(), 2)}

    def line(self) -> str:
        """e.g. `time 312 s: image 0.1 s · prepare kvm 24.3 s · runs kvm 120.5 s · ...`"""
        parts = [f"{name} {value:.1f} s" for name, value in self.seconds.items()]
        rest = self.total() - sum(self.seconds.values())
        return f"time {self.total():.0f} s: " + " · ".join([*parts, f"other {rest:.1f} s"])
