"""bench-nsinit: the container side of a start in C (bench/native/nsinit.c), built on the host.

The tier compiles it with gcc on first use (bench/core/cprogram.py), so a start is one
posix_spawn from bench: no fork of a Python process, no interpreter start-up in the container's
init. Without gcc the tier falls back to the Python runtime (runtime/zygote.py +
runtime/init.py) and says so in its metadata. `plan_argv` turns an `InitPlan` into the
program's command line.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from bench.core import cprogram
from bench.kernel import linuxns
from bench.tiers.ns.runtime.init import InitPlan

NAME = "bench-nsinit"


def build() -> tuple[Path | None, str]:
    """The built program (compiled now if not cached) and a word on how, or (None, why not)."""
    built, how = cprogram.build(NAME, "nsinit.c")
    return built, how if built is not None else f"{how}: the Python runtime is used"


def spawn_init(path: str, argv: list[str], env: dict[str, str]) -> int:
    """posix_spawn (vfork + exec: bench's memory is not copied) bench-nsinit as PID 1 of a new
    PID namespace: this thread unshares CLONE_NEWPID for its next child and goes back after.
    Returns its PID as the host sees it."""
    with open("/proc/thread-self/ns/pid", "rb") as home:
        linuxns.unshare(linuxns.CLONE_NEWPID)
        try:
            return os.posix_spawn(path, argv, env, setsigmask=set(),
                                  setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGPIPE,
                                             signal.SIGCHLD))
        finally:
            linuxns.setns(home.fileno(), linuxns.CLONE_NEWPID)


def plan_argv(plan: InitPlan, fds: dict[str, int]) -> list[str]:
    """bench-nsinit's command line for `plan` (see the head of nsinit.c)."""
    root = plan.root
    argv = [NAME, *(["--seccomp", plan.seccomp] if plan.seccomp else []),
            *(str(fds.get(n, -1)) for n in ("report", "go", "stdout", "stderr", "netns")),
            hex(plan.flags), plan.hostname, hex(sum(1 << c for c in plan.keep_caps)),
            root.lower, root.upper, root.work, root.merged, root.scratch_bind or "",
            str(len(plan.cgroup_setup))]
    for path, value in plan.cgroup_setup:
        argv += ["m", path, ""] if value is None else ["w", path, value]
    argv += [str(len(plan.cgroup_join)), *plan.cgroup_join]
    if plan.command is not None:
        argv += ["--", *plan.command]
    return argv
