"""Start-up of the ns tier against its baselines, as ratios measured in one interleaved run.

Time from the call that starts it (`tier.start`, `go()`, `subprocess.run`) to the no-op's first
instruction (bench-stamp's CLOCK_MONOTONIC stamp):

  ns-bridge   the ns tier as `bench run` uses it (own netns, veth on the run's bridge)
  ns-host     the ns tier in host network mode (no network namespace)
  ns-warm     the ns tier's warm start mode (startup.noop mode=warm): the command started in
              an instance prepared ahead (namespaces, cgroup, root ready), timed from the call
  unshare     `unshare --fork --pid --mount-proc --uts --ipc --net --mount --cgroup bench-stamp`:
              the namespaces the ns tier makes (its network namespace comes ready from the
              tier's pool, wired to the bridge; unshare makes an empty one); the ns tier does
              more (overlay root, /dev, read-only /proc parts, cgroup, capabilities, seccomp)
  fork-exec   the host's plain fork/exec of bench-stamp (subprocess, no isolation)
  docker-run  `docker run --rm --network none bench-image:HASH bench-stamp` (when docker is
              there; the container's stamp is on the same kernel clock), every --docker-every
              rounds only, as it takes about 100 times longer

Each of --repeat runs prints its medians and ratios (one JSON object per line): each ratio is
the median of the per-round ratios of the pair (both taken in the same round, as the issue
defines it; the ratio of the two medians is printed beside the ns/unshare one). The targets
are ns-bridge <= 1.25 x unshare in every run, ns-warm <= 2 x fork-exec, docker-run >= 50 x
ns-bridge (docker-run: ratio of medians, as it runs only every --docker-every rounds).

Usage (root, bench image built):  python -m benchmarks.ns_startup [--rounds 40] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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

UNSHARE = ["unshare", "--fork", "--pid", "--mount-proc", "--uts", "--ipc", "--net", "--mount",
           "--cgroup"]


def stamp_of(text: str) -> float:
    return parse_stamp(text)


def via_process(argv: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return stamp_of(done.stdout) - start


def via_ns(tier: NsTier, network: NetworkMode, limits: Limits) -> Callable[[], float]:
    def once() -> float:
        start = time.monotonic()  # from the call, as `unshare` is timed from its subprocess.run
        inst = tier.start(InstanceSpec("startup", limits, command=[STAMP], network=network))
        try:
            if inst.wait(30) != 0:
                raise RuntimeError(f"bench-stamp failed: {inst.output()}")
            first = stamp_of(inst.output())
        finally:
            inst.stop()
        return first - start

    return once


def via_warm(tier: NsTier, network: NetworkMode, limits: Limits) -> Callable[[], float]:
    """A prepared instance (untimed), then its command started on demand: go -> stamp."""
    def once() -> float:
        inst = tier.start_prepared(InstanceSpec("startup", limits, command=[STAMP],
                                                network=network))
        try:
            start = time.monotonic()
            inst.go()
            if inst.wait(30) != 0:
                raise RuntimeError(f"bench-stamp failed: {inst.output()}")
            first = stamp_of(inst.output())
        finally:
            inst.stop()
        return first - start

    return once


def docker_image(img: image.Image) -> str | None:
    name = f"bench-image:{img.hash}"
    if shutil.which("docker") is None:
        return None
    found = subprocess.run(["docker", "image", "inspect", name], capture_output=True)
    return name if found.returncode == 0 else None


def one_run(tier: NsTier, img: image.Image, args: argparse.Namespace, seed: int) -> None:
    stamp = str(img.rootfs / STAMP.lstrip("/"))
    limits = Limits(cpus=2, memory_mb=2048, pids=4096)  # what scenarios/quick.yaml sets
    cases: dict[str, Callable[[], float]] = {
        "ns-bridge": via_ns(tier, "bridge", limits),
        "ns-host": via_ns(tier, "host", limits),
        "ns-warm": via_warm(tier, "bridge", limits),
        "unshare": lambda: via_process([*UNSHARE, stamp]),
        "fork-exec": lambda: via_process([stamp]),
    }
    docker = docker_image(img)
    if docker:
        cases["docker-run"] = lambda: via_process(
            ["docker", "run", "--rm", "--network", "none", docker, STAMP])
    times: dict[str, list[float]] = {name: [] for name in cases}
    rng = random.Random(seed)
    for round_ in range(args.warmup + args.rounds):
        order = [n for n in cases if n != "docker-run" or round_ % args.docker_every == 0]
        rng.shuffle(order)  # interleaved, in a new order every round
        for name in order:
            value = cases[name]()
            if round_ >= args.warmup:
                times[name].append(value * 1e3)
    medians = {name: statistics.median(values) for name, values in times.items() if values}

    def paired(name: str, base: str) -> float:
        """The median of the round-by-round ratios (each pair taken in the same round)."""
        return round(statistics.median(
            [a / b for a, b in zip(times[name], times[base], strict=True)]), 2)

    result = {
        "rounds": args.rounds, "load": round(os.getloadavg()[0], 1),
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "ratio_ns_bridge_vs_unshare": paired("ns-bridge", "unshare"),
        "ratio_ns_host_vs_unshare": paired("ns-host", "unshare"),
        "ratio_ns_warm_vs_fork_exec": paired("ns-warm", "fork-exec"),
        "ratio_ns_bridge_vs_fork_exec": paired("ns-bridge", "fork-exec"),
        "ratio_of_medians_ns_bridge_vs_unshare": round(medians["ns-bridge"] / medians["unshare"],
                                                       2),
    }
    if "docker-run" in medians:
        result["ratio_docker_run_vs_ns_bridge"] = round(
            medians["docker-run"] / medians["ns-bridge"], 1)
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="consecutive runs")
    parser.add_argument("--docker-every", type=int, default=4)
    args = parser.parse_args()
    img = image.require()
    run_id = f"nsbench-{int(time.time())}"
    tier = NsTier()
    with tempfile.TemporaryDirectory(prefix="ns-startup-", dir="/var/tmp") as tmp:
        tier.prepare(TierContext(run_id, img, Path(tmp) / "ns", Path(tmp)))
        try:
            for run in range(args.repeat):
                one_run(tier, img, args, seed=run + 1)
        finally:
            tier.finish()


if __name__ == "__main__":
    main()
