"""Visibility audit: what an instance sees of the machine and may do to it (read-only).

The probe (inside/visibility.py) runs in the instance and, at the same moment, on the host;
each item compares the two. Every metric is 1 where the instance sees or may touch the host's
own thing (its memory size, CPUs, uptime, processes, kernel log, modules, /proc/sys) and 0
where it is isolated; a few are counts. Whether the instance shares the host's kernel comes
from the boot id: in a VM the kernel-wide items concern the guest's kernel, not the host's.
The text each item `shows` (metadata) is what goes into the matrix of the summary and report.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from bench.core.limits import Limits
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Workload
from bench.workloads.isolation.common import Concurrent, inside, on_host

MiB = 1 << 20


class VisibilityParams(Params):
    timeout_s: float = Field(30.0, gt=0, le=600, description="for the probe inside")


@dataclass(frozen=True)
class Item:
    metric: str
    value: float
    shows: str


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


def _limit_cpus(limits: Limits | None) -> str:
    if limits is None:
        return "none"
    parts = []
    if limits.cpuset:
        parts.append(f"cpuset {limits.cpuset}")
    if limits.cpus:
        parts.append(f"quota {limits.cpus:g}")
    return ", ".join(parts) or "none"


def audit(seen: dict[str, Any], host: dict[str, Any], limits: Limits | None) -> list[Item]:
    """The items of the matrix from the probe's view inside and the host's; `limits` are
    those the tier enforces (None: it enforces none)."""
    shared = bool(seen["boot_id"]) and seen["boot_id"] == host["boot_id"]
    kernel = "host kernel" if shared else "own kernel"
    items = [Item("vis.shared_kernel", _flag(shared), kernel)]
    mem = (seen["memtotal_kib"] or 0) * 1024
    limit = f"{limits.memory_mb} MiB" if limits and limits.memory_mb else "none"
    items.append(Item("vis.meminfo_is_host", _flag(seen["memtotal_kib"] == host["memtotal_kib"]),
                      f"MemTotal {mem / MiB:.0f} MiB (limit {limit})"))
    cpus = seen["cpus_allowed"]
    items.append(Item("vis.cpus_seen", float(seen["cpus_online"] or 0),
                      f"{seen['cpus_online']} online, {cpus} usable "
                      f"(limit {_limit_cpus(limits)})"))
    up, host_up = seen["uptime_s"], host["uptime_s"]
    items.append(Item("vis.uptime_is_host", _flag(up is not None and abs(up - host_up) < 5),
                      f"uptime {up:.0f} s (host {host_up:.0f} s)" if up is not None else "?"))
    load, host_load = seen["loadavg_1"], host["loadavg_1"]
    items.append(Item("vis.loadavg_is_host",
                      _flag(load is not None and abs(load - host_load) <= 0.05 + 0.05 * host_load),
                      f"load {load} (host {host_load})"))
    procs, host_procs = seen["processes"], host["processes"]
    items.append(Item("vis.host_processes_visible", _flag(shared and procs >= host_procs // 2),
                      f"{procs} processes (host {host_procs})"))
    items.append(Item("vis.hostname_is_host", _flag(seen["hostname"] == host["hostname"]),
                      str(seen["hostname"])))
    items.append(Item("vis.pid1_is_host", _flag(shared and seen["pid1"] == host["pid1"]),
                      str(seen["pid1"])))
    items.append(Item("vis.dev_nodes", float(seen["dev_nodes"]),
                      f"{seen['dev_nodes']} in /dev (host {host['dev_nodes']})"))
    items.append(Item("vis.host_modules_listed", _flag(shared and seen["proc_modules_readable"]),
                      f"/proc/modules: {seen['proc_modules_lines']} lines"
                      if seen["proc_modules_readable"] else "/proc/modules unreadable"))
    can_load = seen["cap_sys_module"] and seen["modules_disabled"] != "1"
    items.append(Item("vis.host_module_load_possible", _flag(shared and can_load),
                      f"CAP_SYS_MODULE {'yes' if seen['cap_sys_module'] else 'no'}, "
                      f"modules_disabled {seen['modules_disabled']} ({kernel})"))
    # sysctl and sysfs writes are checked against the files' modes (root-owned, 0644): root of
    # the host's user namespace may write them wherever they are mounted read-write
    host_root = seen["euid"] == 0 and seen["namespaces"].get("user") == \
        host["namespaces"].get("user")
    for key, path in (("sys", "/sys"), ("proc_sys", "/proc/sys")):
        writable = seen[f"{key}_readonly"] is False
        items.append(Item(f"vis.host_{key}_writable", _flag(shared and writable and host_root),
                          f"{path} mounted {'rw' if writable else 'ro'}"
                          + (", as host root" if host_root else "") + f" ({kernel})"))
    items.append(Item("vis.capability_bounding_set", float(seen["cap_bnd_count"]),
                      f"{seen['cap_bnd_count']} caps (CapBnd {seen['cap_bnd']})"))
    mode = {0: "disabled", 1: "strict", 2: "filter"}.get(seen["seccomp"], str(seen["seccomp"]))
    items.append(Item("vis.seccomp_filter", _flag(seen["seccomp"] == 2), f"seccomp {mode}"))
    refused = seen.get("keyctl_errno")
    if refused is not None:  # None: an architecture the probe has no number for
        items.append(Item("vis.keyctl_allowed", _flag(shared and refused != errno.EPERM),
                          "keyctl (outside Docker's seccomp profile) " + (
                              "refused (EPERM)" if refused == errno.EPERM else "allowed")
                          + ("" if shared else f" ({kernel})")))
    items.append(Item("vis.no_new_privs", _flag(seen["no_new_privs"] == 1),
                      f"no_new_privs {seen['no_new_privs']}"))
    items.append(Item("vis.lsm_confined", _flag(seen["lsm"] not in ("none", "unconfined")),
                      f"LSM label {seen['lsm']}"))
    for ns in ("user", "time"):
        own = seen["namespaces"].get(ns) != host["namespaces"].get(ns) if shared else True
        items.append(Item(f"vis.own_{ns}_ns", _flag(own),
                          (f"{ns} ns {'own' if own else 'host'}" if shared else kernel)
                          + (f" (uid_map {seen['uid_map']})" if ns == "user" and shared else "")))
    items.append(Item("vis.host_kernel_log_readable", _flag(shared and seen["klog_readable"]),
                      f"syslog(READ_ALL) {'allowed' if seen['klog_readable'] else 'denied'} "
                      f"({kernel})"))
    # every PID of a child namespace is also one of the host's: the host's pid_max binds it
    items.append(Item("vis.pid_max_shared", _flag(shared),
                      f"pid_max {seen['pid_max']} (host {host['pid_max']}; "
                      + ("its PIDs are host PIDs too)" if shared else "own PID table)")))
    return items


class Visibility(Workload[VisibilityParams]):
    name = "isolation.visibility"
    family = "isolation"
    headline = ("vis.shared_kernel",)
    description = "visibility audit: what an instance sees and may do (read-only probe)"
    params_model = VisibilityParams
    tools = ("python3",)

    def estimate_seconds(self, params: VisibilityParams) -> float:
        return 1.0

    def run(self, ctx: RunContext, params: VisibilityParams) -> list[Measurement]:
        instance = ctx.main()
        timeout = min(params.timeout_s, ctx.remaining())
        host_view = Concurrent(lambda: on_host("visibility", [], timeout))
        seen = inside(instance, "visibility", [], timeout)
        host = host_view.result(timeout)
        ctx.save_raw("visibility.json", _dumps({"inside": seen, "host": host}))
        limits = instance.spec.limits if ctx.tier.applies_limits else None
        return [Measurement(metric=i.metric, value=i.value, unit="", direction="lower",
                            metadata={"shows": i.shows}) for i in audit(seen, host, limits)]


def _dumps(data: Any) -> str:
    import json

    return json.dumps(data, indent=1, sort_keys=True)
