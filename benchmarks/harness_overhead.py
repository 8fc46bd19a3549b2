"""Does the harness inflate what it measures? Two checks, each interleaved in one run:

  docker start-up   the docker tier's start of bench-stamp, create call to removal (what
                    startup.noop reports as total_ms), against `docker run --rm` with the same
                    options (no init, the limits, the run's network) timed from outside
  1-second tool     `sysbench cpu --time=1 run` run by each tier (host, ns, docker: the tier's
                    exec into its long-lived instance, as `bench run` does): its wall time
                    minus sysbench's own "total time". sysbench's own start and exit fall
                    outside its total time, so the same tool started bare (`chroot ROOTFS
                    sysbench ...` from this script, no tier) is measured in the same rounds:
                    each tier's figure minus the bare one (the median of per-round
                    differences) is what the harness adds to the tool's own process time
  exec of `true`    in one long-lived docker-tier container, interleaved: the tier's exec (its
                    agent where it serves: `exec_path` says which) against the engine's
                    `docker exec` through the SDK (create, start attached, inspect)

Usage (root, bench image built, dockerd up):
    python -m benchmarks.harness_overhead [--rounds 15] [--tool-rounds 5]
Prints one JSON object; targets: docker tier within 10% of `docker run --rm`, each tier's
overhead on the 1-second tool within 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.core import image
from bench.tiers.base import InstanceSpec, Limits, Tier, TierContext
from bench.tiers.host import ENV
from bench.tiers.registry import get as get_tier
from bench.workloads.startup import STAMP

LIMITS = Limits(cpus=2, memory_mb=2048, pids=4096)  # what scenarios/quick.yaml sets
SYSBENCH = ["sysbench", "cpu", "--threads=1", "--time=1", "run"]


def docker_tier_total(tier: Tier) -> float:
    inst = tier.start(InstanceSpec("startup", LIMITS, command=[STAMP]))
    try:
        inst.wait(60)
    finally:
        inst.stop()
    stamps = inst.phases.stamps
    return stamps["removed"] - stamps["create"]


def docker_run(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def beyond_total(wall: float, stdout: str) -> float:
    """Wall seconds beyond sysbench's own "total time"."""
    found = re.search(r"total time:\s+([\d.]+)s", stdout)
    if not found:
        raise RuntimeError(f"sysbench printed no total time: {stdout[-300:]}")
    return wall - float(found.group(1))


def tool_overhead(tier: Tier) -> float:
    inst = tier.start(InstanceSpec("main", LIMITS, command=None))
    try:
        started = time.monotonic()
        done = inst.exec(SYSBENCH, 60)
        wall = time.monotonic() - started
    finally:
        inst.stop()
    return beyond_total(wall, done.stdout)


def exec_true(tier: Tier, rounds: int) -> dict[str, object]:
    """`true` through the docker tier's exec and through `docker exec`, in one container."""
    inst = tier.start(InstanceSpec("main", LIMITS, command=None))
    times: dict[str, list[float]] = {"tier_exec": [], "docker_exec_sdk": []}
    container = getattr(inst, "container")  # noqa: B009 - the docker tier's own
    try:
        for _ in range(rounds):
            for label in random.sample(sorted(times), 2):
                started = time.perf_counter()
                if label == "tier_exec":
                    inst.exec(["true"], 30)
                else:
                    assert container.exec_run(["true"]).exit_code == 0
                times[label].append(1e3 * (time.perf_counter() - started))
        path = inst.metadata().get("exec_path", "docker exec")
    finally:
        inst.stop()
    return {**{k: round(statistics.median(v), 2) for k, v in times.items()}, "exec_path": path}


def bare_overhead(rootfs: Path) -> float:
    """The tool's own process: started from here (the tiers' environment), no tier."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    started = time.monotonic()
    done = subprocess.run([chroot, str(rootfs), *SYSBENCH], check=True, capture_output=True,
                          text=True, env=ENV)
    return beyond_total(time.monotonic() - started, done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tool-rounds", type=int, default=5)
    args = parser.parse_args()
    img = image.require()
    run_id = f"harness-{int(time.time())}"
    tiers = {name: get_tier(name) for name in ("host", "ns", "docker")}
    result: dict[str, object] = {"load_before": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="harness-", dir="/var/tmp") as tmp:
        for name, tier in tiers.items():
            tier.prepare(TierContext(run_id, img, Path(tmp) / name, Path(tmp)))
        try:
            docker = tiers["docker"]
            network = str(getattr(docker, "network_name", "bridge"))
            # the tier's start-up containers run their command without docker-init, as here
            outside = ["docker", "run", "--rm", "--cpus", str(LIMITS.cpus),
                       "--memory", f"{LIMITS.memory_mb}m", "--memory-swap",
                       f"{LIMITS.memory_mb}m", "--pids-limit", str(LIMITS.pids),
                       "--network", network, f"bench-image:{img.hash}", STAMP]
            times: dict[str, list[float]] = {"docker tier": [], "docker run --rm": []}
            rng = random.Random(1)
            for _ in range(args.rounds):
                cases = [("docker tier", lambda: docker_tier_total(docker)),
                         ("docker run --rm", lambda: docker_run(outside))]
                rng.shuffle(cases)
                for label, func in cases:
                    times[label].append(func() * 1e3)
            tier_ms = statistics.median(times["docker tier"])
            client_ms = statistics.median(times["docker run --rm"])
            result["docker_startup_ms"] = {"tier_total": round(tier_ms, 1),
                                           "docker_run_rm": round(client_ms, 1),
                                           "ratio": round(tier_ms / client_ms, 3)}
            overhead: dict[str, list[float]] = {name: [] for name in ("bare", *tiers)}
            for _ in range(args.tool_rounds):
                order = ["bare", *tiers]
                rng.shuffle(order)
                for name in order:
                    overhead[name].append(1e3 * (bare_overhead(img.rootfs) if name == "bare"
                                                 else tool_overhead(tiers[name])))
            result["beyond_sysbench_total_ms"] = {name: round(statistics.median(v), 1)
                                                  for name, v in overhead.items()}
            result["tool_overhead_ms"] = {  # each tier minus the bare tool, round by round
                name: round(statistics.median(
                    [t - b for t, b in zip(overhead[name], overhead["bare"], strict=True)]), 1)
                for name in tiers}
            result["docker_exec_true_ms"] = exec_true(docker, 3 * args.rounds)
        finally:
            for tier in tiers.values():
                tier.finish()
    result["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
