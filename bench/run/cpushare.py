"""The CPU an instance's limit is charged with, each second on the host's clock, while a switch
run's workload runs: the series a CPU switch is judged by on a tier whose instances cannot show
their CPU share inside (Tier.cpu_share_inside False: a VM). There the guest's own work rate is
no measure of its quota: its clock runs on while the vCPU is throttled, and under TCG a 5 ms
slice of every 100 ms period does ~40% less work per CPU second than a 10 ms one (measured:
479 against 835 sysbench events per vCPU second), so the rate is not proportional to the quota.
"""

from __future__ import annotations

import math
import threading
import time

from bench.tiers.base import Instance

METRIC = "cpu_share_host"
UNIT = "CPU"


class CpuShare(threading.Thread):
    """Samples `instance.cpu_seconds()` at each whole second after `t0` until `running` ends:
    points (seconds after t0, CPUs used over that second)."""

    def __init__(self, instance: Instance, t0: float, running: threading.Thread) -> None:
        super().__init__(name="switch-run-cpu-share", daemon=True)
        self.instance, self.t0, self.running = instance, t0, running
        self.points: list[tuple[float, float]] = []

    def run(self) -> None:
        last_at, last = time.monotonic(), self.instance.cpu_seconds()
        while self.running.is_alive() and last is not None:
            tick = self.t0 + math.floor(last_at - self.t0) + 1
            time.sleep(max(0.0, tick - time.monotonic()))
            now, used = time.monotonic(), self.instance.cpu_seconds()
            if used is None:
                return
            if now - last_at > 0.5:  # a sample late by half a second starts a new second
                self.points.append((round(now - self.t0, 3), (used - last) / (now - last_at)))
            last_at, last = now, used


def wanted(instance: Instance, cpus_switched: bool, share_inside: bool) -> bool:
    return cpus_switched and not share_inside and instance.cpu_seconds() is not None
