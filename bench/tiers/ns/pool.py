"""The ns tier's pools: work taken off the start path and done beforehand, between starts.

- network namespaces, each already wired to the run's bridge (veth, address, route, lo up):
  a start's PID 1 joins one with setns instead of making one with unshare (1-2 ms);
- control groups, made and limited for a given set of limits: a start's PID 1 only joins;
- PID 1s (bench-nsinit --pooled), each spawned into its own new PID namespace with one of the
  network namespaces above and its pipes, waiting for a plan: a start with a command on the
  bridge writes its plan instead of spawning a process (the start's one fork fewer: on a busy
  host a new process waits for a core longer than a woken one). It has made nothing else yet:
  the start still joins the network namespace and the cgroup, makes the other namespaces and
  the root, drops capabilities, loads seccomp, and starts the command.

They are filled when the tier is prepared (network namespaces, PID 1s) and topped up when an
instance stops (teardown, off the next start's path). A start that finds its pool empty makes
its own, as without pools; each instance's metadata says which it got. Everything here carries
the run id like the rest of the tier: pooled groups sit under the run's group, pooled veths
are named and labelled by the run, a pooled namespace lives only as long as bench (or a pooled
PID 1) holds its descriptor, and a pooled PID 1 dies with bench (PR_SET_PDEATHSIG), so a killed
bench leaves nothing but what `bench cleanup` already removes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from bench.core.limits import Limits
from bench.kernel import cgroups, linuxns
from bench.tiers.ns.net import Bridge

NETNS_POOL = 2  # namespaces kept ready
CGROUP_POOL = 1  # groups kept ready per set of limits
INIT_POOL = 1  # PID 1s kept waiting


@dataclass
class PooledNet:
    fd: int  # holds the namespace alive
    net: dict[str, Any]  # Bridge.reserve()'s plan, already wired


@dataclass
class PooledInit:
    pid: int
    plan: int  # write end: the plan, then end of file
    report: int  # read end of its phase lines
    go: int  # write end of its go pipe
    out: tuple[int, int]  # read ends of the command's stdout, stderr
    fds: dict[str, int]  # report, go, stdout, stderr, netns as numbered in the init
    net: PooledNet

    def hand(self, argv: list[str]) -> None:
        """go, then the plan (its arguments after the program's name), and end of file."""
        data = memoryview(b"".join(arg.encode() + b"\0" for arg in argv))
        try:
            with contextlib.suppress(BrokenPipeError):  # gone: the start says so, as it reads
                os.write(self.go, b"go")
                while data:
                    data = data[os.write(self.plan, data):]
        finally:
            os.close(self.plan)


def new_netns() -> int:
    """A new, empty network namespace as a descriptor (this thread stays where it was)."""
    with open("/proc/thread-self/ns/net", "rb") as home:
        linuxns.unshare(linuxns.CLONE_NEWNET)
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            linuxns.setns(home.fileno(), linuxns.CLONE_NEWNET)


def limits_key(limits: Limits) -> tuple[Any, ...] | None:
    """What makes two instances' groups interchangeable; None: not pooled (I/O limits need the
    instance's own block device)."""
    if limits.has_io:
        return None
    return (limits.cpus, limits.cpuset, limits.memory_mb, limits.pids)


class Pools:
    def __init__(self, hierarchies: cgroups.Hierarchies, run_rel: str, bridge: Bridge) -> None:
        self.hierarchies = hierarchies
        self.run_rel = run_rel
        self.bridge = bridge
        self.nets: list[PooledNet] = []
        self.inits: list[PooledInit] = []
        self.groups: dict[tuple[Any, ...], list[cgroups.Cgroup]] = {}
        self.made = 0

    # -- network namespaces -----------------------------------------------------------------
    def fill_nets(self) -> None:
        while len(self.nets) < NETNS_POOL and len(self.bridge.free) > NETNS_POOL:
            fd = new_netns()
            try:
                net = self.bridge.reserve()
            except BaseException:
                os.close(fd)
                raise
            try:
                self.bridge.wire(fd, net)
            except BaseException:
                os.close(fd)
                self.bridge.release(net["host_end"], net["address"])
                raise
            self.nets.append(PooledNet(fd, net))

    def take_net(self) -> PooledNet | None:
        return self.nets.pop(0) if self.nets else None

    # -- PID 1s -----------------------------------------------------------------------------
    def fill_inits(self, nsinit: str, seccomp_path: str | None, env: dict[str, str]) -> None:
        from bench.tiers.ns.runtime import native

        if threading.current_thread() is not threading.main_thread():
            return  # PR_SET_PDEATHSIG would kill it when this thread ends, not with bench
        while len(self.inits) < INIT_POOL and (net := self.take_net()) is not None:
            ours, theirs = [], {"netns": net.fd}
            try:
                for name, reads in (("report", True), ("go", False), ("stdout", True),
                                    ("stderr", True), ("plan", False)):
                    r, w = os.pipe()
                    ours.append(r if reads else w)
                    theirs[name] = w if reads else r
                for fd in theirs.values():
                    os.set_inheritable(fd, True)
                filtered = ["--seccomp", seccomp_path] if seccomp_path else []
                kept = [theirs["plan"], *(fd for k, fd in theirs.items() if k != "plan")]
                pid = native.spawn_init(nsinit, [native.NAME, *filtered, "--pooled",
                                                 *map(str, kept)], env)
            except BaseException:
                for fd in ours:
                    os.close(fd)
                self.bridge.release(net.net["host_end"], net.net["address"])
                raise
            finally:
                for fd in theirs.values():
                    os.close(fd)  # the namespace's too: the init holds it now
            report, go, out, err, plan = ours
            self.inits.append(PooledInit(pid, plan, report, go, (out, err),
                                         {k: v for k, v in theirs.items() if k != "plan"},
                                         net))

    def take_init(self) -> PooledInit | None:
        """A waiting PID 1 that is still alive (one that died is dropped: the start spawns)."""
        while self.inits:
            init = self.inits.pop(0)
            if os.waitpid(init.pid, os.WNOHANG)[0] == 0:
                return init
            self._drop(init)
        return None

    def _drop(self, init: PooledInit) -> None:
        for fd in (init.plan, init.report, init.go, *init.out):
            os.close(fd)  # no plan: it ends by itself
        self.bridge.release(init.net.net["host_end"], init.net.net["address"])

    # -- control groups ---------------------------------------------------------------------
    def fill_group(self, limits: Limits) -> None:
        key = limits_key(limits)
        if key is None:
            return
        ready = self.groups.setdefault(key, [])
        while len(ready) < CGROUP_POOL:
            self.made += 1
            group = cgroups.Cgroup(self.hierarchies, f"{self.run_rel}/pool-{self.made}",
                                   cgroups.controllers_for(limits))
            group.create(limits)
            ready.append(group)

    def take_group(self, limits: Limits) -> cgroups.Cgroup | None:
        key = limits_key(limits)
        ready = self.groups.get(key) if key is not None else None
        return ready.pop(0) if ready else None

    # -- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        for init in self.inits:
            with contextlib.suppress(ProcessLookupError):  # in case it hangs
                os.kill(init.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(init.pid, 0)
            self._drop(init)
        self.inits.clear()
        for pooled in self.nets:
            os.close(pooled.fd)  # the namespace goes, and the veth with it
            self.bridge.release(pooled.net["host_end"], pooled.net["address"])
        self.nets.clear()
        for ready in self.groups.values():
            for group in ready:
                with contextlib.suppress(OSError):
                    group.remove()
        self.groups.clear()
