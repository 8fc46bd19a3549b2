"""Live switches shared by the container tiers (ns, docker): a limit's cgroup files written on
the running group, and the egress rate as a tbf on the instance's side of its veth, set with tc
from the host inside the instance's network namespace (nsenter). Each change says which file or
qdisc it went through, or why it could not be made live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.limits import IO_LIMITS, Limits
from bench.kernel import cgroupread, cgroups, tc
from bench.tiers.base import SwitchChange

CGROUP_LIMITS = frozenset({"cpus", "cpuset", "memory_mb", "pids", *IO_LIMITS})
CONTAINER_SWITCHES = CGROUP_LIMITS | {"net_mbit"}
INSTANCE_LINK = "eth0"  # the instance's side of its veth


def _controller(h: cgroups.Hierarchies, limit: str) -> str:
    if limit in IO_LIMITS:
        return "io" if h.version == 2 else "blkio"
    return {"cpus": "cpu", "memory_mb": "memory"}.get(limit, limit)


def cgroup_change(group: cgroups.Cgroup, limit: str, value: Any,
                  io_device: str | None) -> SwitchChange:
    controller = _controller(group.h, limit)
    if controller not in group.h.roots:
        return SwitchChange(limit, value, False,
                            f"the instance's cgroup has no {controller} controller (it was "
                            "started without a limit that needs it)")
    if limit in IO_LIMITS and io_device is None:
        return SwitchChange(limit, value, False, "no block device under the scratch area")
    try:
        steps = cgroupread.update(group, Limits.model_validate({limit: value}), io_device)
    except BenchError as exc:
        return SwitchChange(limit, value, False, f"the kernel refused it: {exc.cause}")
    files = ", ".join(sorted({p.name for p, _ in steps}))
    return SwitchChange(limit, value, True, f"cgroup v{group.h.version} {files}")


def net_change(pid: int | None, value: float, network: str) -> SwitchChange:
    if network == "host" or pid is None:
        return SwitchChange("net_mbit", value, False,
                            "network: host has no link of its own to shape")
    try:
        tc.set_rate(INSTANCE_LINK, value, pid)
    except BenchError as exc:
        return SwitchChange("net_mbit", value, False, f"tc failed: {exc.cause}")
    return SwitchChange("net_mbit", value, True,
                        f"tbf on the instance's {INSTANCE_LINK} (tc from the host, nsenter)")


def readback(group: cgroups.Cgroup, io_device: str | None, pid: int | None,
             network: str) -> dict[str, Any]:
    found = cgroupread.read_limits(group, io_device)
    if network != "host" and pid is not None:
        found["net_mbit"] = tc.read_rate(INSTANCE_LINK, pid)
    return found


def group_of(pid: int, hierarchies: cgroups.Hierarchies) -> cgroups.Cgroup:
    """The control group `pid` is in (its memory controller's path; v2: the unified one)."""
    rel = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (hierarchies.version == 2 and controllers == "") or \
                (hierarchies.version == 1 and "memory" in controllers.split(",")):
            rel = path.lstrip("/")
    if not rel:
        raise BenchError(f"Process {pid} is in no memory control group.",
                         "check the engine's cgroup driver (cgroupfs or systemd).")
    return cgroups.Cgroup(hierarchies, rel)
