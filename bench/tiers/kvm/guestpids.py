"""A `pids` limit for a VM, inside the guest: a VM has its own kernel and PID space, so the
host's pid_max is not at stake, but a fork storm still exhausts the guest. The guest (systemd,
cgroup v2) gets one cgroup of bench's own with `pids.max`; every command bench starts in it
joins that group before it execs. The scripts are fixed strings; values and argv go in as
positional parameters, never into the script."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.tiers.kvm.agent import Agent

GROUP = "/sys/fs/cgroup/bench-instance"
MAKE = ('grep -qw pids /sys/fs/cgroup/cgroup.subtree_control || '
        'echo +pids > /sys/fs/cgroup/cgroup.subtree_control; '
        'mkdir -p "$1" && echo "$2" > "$1/pids.max"')
JOIN = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
HOW = f"pids.max of cgroup {GROUP} inside the guest (cgroup v2), joined by every command"


def make(agent: Agent, pids: int) -> None:
    agent.run(["sh", "-c", MAKE, "sh", GROUP, str(pids)], timeout=30)


def inside(argv: list[str]) -> list[str]:
    """argv started inside the group."""
    return ["sh", "-c", JOIN, "sh", GROUP, *argv]


def read(agent: Agent) -> int | None:
    text = agent.read_file(f"{GROUP}/pids.max").decode().strip()
    return None if text == "max" else int(text)
