"""Why a run's command died, in words: the OOM killer, a refused fork, the timeout.

A command killed because the instance's memory limit is below what the workload needs shows up
as exit status 137 (docker) or -9 (ns): before and after each run the kernel's counters of the
instance's groups are read (memory.events / memory.oom_control oom_kill, pids.events max), and
a run whose command failed while a counter moved is reported as what it was, with the limit,
what the workload reached, and the fix.
"""

from __future__ import annotations

from bench.core.errors import BenchError, CommandError, CommandTimeout
from bench.core.limits import Limits
from bench.kernel import cgroups
from bench.tiers.base import Instance

Events = dict[str, int | None]
MiB = 2**20


def snapshot(instance: Instance | None) -> Events:
    pid = instance.cgroup_pid() if instance is not None else None
    return cgroups.limit_events(pid) if pid else {}


def _moved(before: Events, after: Events, key: str) -> bool:
    old, new = before.get(key), after.get(key)
    return new is not None and new > (old or 0)


def explain(exc: BenchError, before: Events, after: Events, limits: Limits, workload: str,
            params: str, timeout: float) -> BenchError:
    """A clearer error for `exc` when the counters show what killed the command."""
    command = f"`{' '.join(exc.argv)}`" if isinstance(exc, CommandError | CommandTimeout) \
        else workload
    if isinstance(exc, CommandTimeout):
        return BenchError(
            f"{workload} ({params}) did not finish within the run's timeout of {timeout:.0f} s "
            f"and was killed ({command}).",
            "raise the workload's `timeout_s` in the scenario, or lower its size/runtime "
            "parameters; on an emulated tier (TCG) expect 4-15x longer runs.")
    if _moved(before, after, "oom_kill"):
        limit = after.get("memory_limit")
        limit_mb = (limits.memory_mb if limits.memory_mb is not None
                    else (limit // MiB if limit else None))
        peak = after.get("memory_peak")
        reached = f"; the instance's memory use had reached {peak / MiB:.0f} MiB" if peak else ""
        return BenchError(
            f"{workload} ({params}) was killed by the OOM killer: the instance's memory limit "
            f"is {limit_mb} MiB (limits.memory_mb) and the workload needs more{reached} "
            f"({command}, exit status {getattr(exc, 'returncode', '?')}).",
            f"raise limits.memory_mb above what {workload} needs (more than {limit_mb} MiB), "
            "or lower its size parameter.")
    if _moved(before, after, "pids_refused"):
        refused = (after.get("pids_refused") or 0) - (before.get("pids_refused") or 0)
        return BenchError(
            f"{workload} ({params}) could not start a process or thread: the kernel refused "
            f"{refused} fork(s)/clone(s) at the instance's pids limit of "
            f"{limits.pids if limits.pids is not None else after.get('pids_limit')} "
            f"(limits.pids) ({command}, exit status {getattr(exc, 'returncode', '?')}).",
            "raise limits.pids above the processes and threads the workload starts (threads "
            "count too), or lower its threads/processes parameter.")
    return exc
