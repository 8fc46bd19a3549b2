"""Start-up of the ns tier against its baselines, as ratios measured in one interleaved run.

Time from "start" to the no-op's first instruction (bench-stamp's CLOCK_MONOTONIC stamp):

  ns-bridge   the ns tier as `bench run` uses it (own netns, veth on the run's bridge)
  ns-host     the ns tier in host network mode (no network namespace)
  unshare     `unshare --fork --pid --mount-proc --uts --ipc --net --mount bench-stamp`
  fork-exec   the host's plain fork/exec of bench-stamp (subprocess, no isolation)

Usage (root, bench image built):  python benchmarks/ns_startup.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.core import image
from bench.tiers.base import InstanceSpec, Limits, NetworkMode, TierContext
from bench.tiers.ns.tier import NsTier
from bench.workloads.startup import STAMP, parse_stamp

UNSHARE = ["unshare", "--fork", "--pid", "--mount-proc", "--uts", "--ipc", "--net", "--mount"]


def stamp_of(text: str) -> float:
    return parse_stamp(text)


def via_process(argv: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return stamp_of(done.stdout) - start


def via_ns(tier: NsTier, network: NetworkMode, limits: Limits) -> Callable[[], float]:
    def once() -> float:
        inst = tier.start(InstanceSpec("startup", limits, command=[STAMP], network=network))
        try:
            if inst.wait(30) != 0:
                raise RuntimeError(f"bench-stamp failed: {inst.output()}")
            first = stamp_of(inst.output())
        finally:
            inst.stop()
        return first - inst.phases.stamps["create"]

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    img = image.require()
    stamp = str(img.rootfs / STAMP.lstrip("/"))
    limits = Limits(cpus=2, memory_mb=2048, pids=4096)  # what scenarios/quick.yaml sets
    run_id = f"nsbench-{int(time.time())}"
    tier = NsTier()
    with tempfile.TemporaryDirectory(prefix="ns-startup-", dir="/var/tmp") as tmp:
        tier.prepare(TierContext(run_id, img, Path(tmp) / "ns", Path(tmp)))
        try:
            cases: dict[str, Callable[[], float]] = {
                "ns-bridge": via_ns(tier, "bridge", limits),
                "ns-host": via_ns(tier, "host", limits),
                "unshare": lambda: via_process([*UNSHARE, stamp]),
                "fork-exec": lambda: via_process([stamp]),
            }
            times: dict[str, list[float]] = {name: [] for name in cases}
            rng = random.Random(1)
            for round_ in range(args.warmup + args.rounds):
                order = list(cases)
                rng.shuffle(order)  # interleaved, in a new order every round
                for name in order:
                    value = cases[name]()
                    if round_ >= args.warmup:
                        times[name].append(value * 1e3)
        finally:
            tier.finish()
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "rounds": args.rounds,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[-1], 3) for k, v in times.items()},
        "ratio_ns_bridge_vs_unshare": round(medians["ns-bridge"] / medians["unshare"], 2),
        "ratio_ns_host_vs_unshare": round(medians["ns-host"] / medians["unshare"], 2),
        "ratio_ns_bridge_vs_fork_exec": round(medians["ns-bridge"] / medians["fork-exec"], 2),
        "ratio_unshare_vs_fork_exec": round(medians["unshare"] / medians["fork-exec"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
