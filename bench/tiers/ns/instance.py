"""A container of the ns tier: its init, exec through setns, limits, switches and stop."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.core import procs, safefs
from bench.core.errors import BenchError, CommandTimeout
from bench.core.procs import Completed
from bench.kernel import cgroups, linuxns, tc
from bench.tiers import switching
from bench.tiers.base import (
    Background,
    Instance,
    InstanceSpec,
    ProcessBackground,
    SwitchChange,
)
from bench.tiers.host import ENV
from bench.tiers.ns.runtime import native
from bench.tiers.ns.runtime.init import InitPlan, enter
from bench.tiers.ns.runtime.rootfs import RootPlan

if TYPE_CHECKING:
    from bench.tiers.ns.pool import PooledInit
    from bench.tiers.ns.tier import NsTier

CGROUP_ROOT = "bench-ns"
NAMESPACE_FLAGS = (linuxns.CLONE_NEWNS | linuxns.CLONE_NEWUTS | linuxns.CLONE_NEWIPC
                   | linuxns.CLONE_NEWCGROUP)
START_TIMEOUT = 30.0


class NsStartError(BenchError):
    """A container could not be started."""



class NsInstance(Instance):
    def __init__(self, tier: NsTier, spec: InstanceSpec, name: str,
                 lower: str | None = None) -> None:
        super().__init__(spec)
        self.tier = tier
        self.name = name
        self.lower = lower or str(tier.ctx.image.rootfs)  # overlayfs lowerdir (top first)
        self.dir = tier.ctx.workdir / name
        self.cgroup = cgroups.Cgroup(tier.hierarchies, f"{CGROUP_ROOT}/{tier.ctx.run_id}/{name}",
                                     cgroups.controllers_for(spec.limits)
                                     | cgroups.controllers_for(spec.ceiling))
        self.io_device: str | None = None
        self.pid = 0  # PID 1 of the container, as the host sees it
        self.child = 0  # bench-nsinit, spawned by bench as the container's PID 1
        self.pidfd: int | None = None
        self._report: int | None = None
        self._buffer = b""
        self.ns_fds: dict[str, int] = {}
        self.net: dict[str, Any] | None = None
        self.exit_status: int | None = None
        self._out: tuple[int, int] | None = None  # read ends of the command's stdout, stderr
        self._output = ""
        self._spawned = 0
        self._stopped = False
        self._metadata: dict[str, Any] | None = None
        self.sources: dict[str, str] = {}  # what came from the tier's pools, what was made
        self._net_pooled = False
        self._ready = False
        self._go: int | None = None  # a prepared instance's go pipe, until go()

    # -- start ------------------------------------------------------------------------------
    def launch(self, hold: bool = False) -> None:
        """Build the container; with `hold`, stop short of its command until `go()` (a warm
        start: namespaces, cgroup and root ready, the init waiting on its go pipe)."""
        self.phases.mark("create")
        upper, work, merged = (self.dir / d for d in ("upper", "work", "merged"))
        scratch = self.dir / "scratch" if self.spec.scratch == "bind" else None
        for path in (upper, work, merged, *([scratch] if scratch else [])):
            path.mkdir(parents=True)
        limits = self.spec.limits
        io_device = None
        if limits.has_io or (self.spec.ceiling is not None and self.spec.ceiling.has_io):
            io_device = self.io_device = cgroups.block_device(scratch or upper)
        flags = NAMESPACE_FLAGS
        child_fds: dict[str, int] = {}
        pools = self.tier.pools if self.tier.nsinit is not None else None
        pooled_group = pools.take_group(limits) if pools is not None and \
            self.spec.ceiling is None else None
        if pooled_group is not None:
            self.cgroup = pooled_group
        self.sources["cgroup"] = "pool" if pooled_group is not None else "made at start"
        init = pools.take_init() if pools is not None and self.spec.network == "bridge" \
            and self.spec.command is not None and not hold else None
        self.sources["init"] = "pool" if init is not None else "spawned at start"
        if self.spec.network == "bridge":
            flags |= linuxns.CLONE_NEWNET
            pooled_net = init.net if init is not None else \
                pools.take_net() if pools is not None else None
            if pooled_net is not None:
                self.net, self._net_pooled = pooled_net.net, True
                if init is None:  # a pooled PID 1 holds its own
                    child_fds["netns"] = pooled_net.fd
            else:
                self.net = self.tier.bridge.reserve()
            self.sources["netns"] = "pool" if self._net_pooled else "made at start"
        plan = InitPlan(
            flags=flags, cgroup_join=[str(f) for f in self.cgroup.join_files],
            cgroup_setup=[] if pooled_group is not None else
            [(str(p), v) for p, v in self.cgroup.setup(limits, io_device)],
            root=RootPlan(self.lower, str(upper), str(work), str(merged),
                          str(scratch) if scratch else None),
            hostname=self.name, command=self.spec.command, env=ENV,
            keep_caps=sorted(self.tier.keep_caps), seccomp=self.tier.seccomp_path)
        if init is not None:
            self._hand_plan(init, plan)
        else:
            self._spawn(plan, child_fds, hold)
        if limits.net_mbit is not None and self.spec.network == "bridge":
            tc.set_rate(switching.INSTANCE_LINK, limits.net_mbit, self.pid)

    def _spawn(self, plan: InitPlan, child_fds: dict[str, int], hold: bool) -> None:
        self._report, child_fds["report"] = os.pipe()
        go_r, go_w = os.pipe()
        child_fds["go"] = go_r
        if not hold and (self.net is None or self._net_pooled):  # nothing to wire in: go is
            os.write(go_w, b"go")  # said before the init exists, never waited for under load
        if self.spec.command is not None:
            out_r, child_fds["stdout"] = os.pipe()
            err_r, child_fds["stderr"] = os.pipe()
            self._out = (out_r, err_r)
        try:
            try:
                if self.tier.nsinit is not None:
                    for fd in child_fds.values():
                        os.set_inheritable(fd, True)
                    self.child = native.spawn_init(self.tier.nsinit,
                                                   native.plan_argv(plan, child_fds), ENV)
                    self._adopt(self.child)
                else:
                    self._adopt(self.tier.live_zygote().start(plan, child_fds))
            finally:
                for fd in child_fds.values():
                    os.close(fd)
            self.metadata()
            self._follow(go_w, hold)
        finally:
            if hold and self._ready:
                self._go = go_w
            else:
                os.close(go_w)

    def _hand_plan(self, init: PooledInit, plan: InitPlan) -> None:
        """A pooled PID 1 (seccomp file given at its spawn): go, then the plan, on its pipes."""
        self.child, self._report, self._out = init.pid, init.report, init.out
        self._adopt(init.pid)
        init.hand(native.plan_argv(dataclasses.replace(plan, seccomp=None), init.fds)[1:])
        try:
            self.metadata()
            self._follow(init.go)
        finally:
            os.close(init.go)

    def _adopt(self, pid: int) -> None:
        self.pid = pid
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        with contextlib.suppress(ProcessLookupError):  # already gone: _dead says so
            self.pidfd = os.pidfd_open(pid)

    def _lines(self, deadline: float) -> Iterator[tuple[str, str]]:
        """The init's report lines as (name, detail) until it closes its end or `deadline`."""
        report = self._report
        assert report is not None
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                name, _, detail = line.decode(errors="replace").partition(" ")
                yield name, detail
            ready, _, _ = select.select([report], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(report, 4096) if ready else b""
            if not chunk:
                return
            self._buffer += chunk

    def _follow(self, go_w: int, hold: bool = False) -> None:
        """Record the init's phases until it is ready. Its `go` waits only for its network: in
        bridge mode without a pooled namespace bench wires the veth in as soon as the
        namespace exists, while the init goes on, and says go then; with no network to wire,
        go was said at launch. With `hold`, go is left to `go()`."""
        for name, detail in self._lines(time.monotonic() + START_TIMEOUT):
            if name == "error":
                raise NsStartError(f"Container {self.name} failed to start: {detail}",
                                   "check the limits against this host and run as root.")
            when, _, pid = detail.partition(" ")
            self.phases.mark(name, float(when))
            if name == "clone" and pid and int(pid) != self.pid:  # PID 1 is not bench's child
                self._adopt(int(pid))
            elif name == "net" and self.net is not None and not self._net_pooled:
                try:
                    with open(f"/proc/{self.pid}/ns/net", "rb") as netns:
                        self.tier.bridge.wire(netns.fileno(), self.net)
                    self.phases.mark("network_ready")
                    if not hold:
                        os.write(go_w, b"go")
                except OSError:
                    if not self._dead(1.0):
                        raise
                    # the init failed meanwhile: its own error line, next, says why
            elif name == "ready":
                self._ready = True
                if self.spec.command is None:  # held open: `exec` enters through them
                    for ns in linuxns.NAMESPACE_FILES:
                        if ns != "net" or self.spec.network == "bridge":
                            self.ns_fds[ns] = os.open(f"/proc/{self.pid}/ns/{ns}",
                                                      os.O_RDONLY | os.O_CLOEXEC)
                return
        raise NsStartError(f"Container {self.name} stopped before it was ready.",
                           "see `bench doctor`; run bench as root.")

    def _dead(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the init to end; True once it has."""
        if self.pidfd is None:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(ready)

    def go(self) -> None:
        if self._go is None:
            raise NsStartError(f"Container {self.name} is not a prepared instance waiting for "
                               "its command.", "start it with NsTier.start_prepared.")
        self.phases.mark("go")
        os.write(self._go, b"go")
        os.close(self._go)
        self._go = None

    # -- use --------------------------------------------------------------------------------
    def _preexec(self) -> Any:
        if not self.ns_fds or self._stopped:
            raise NsStartError(f"Container {self.name} is not a running long-lived instance, "
                               "so nothing can be run in it.",
                               "start it without a command (InstanceSpec.command=None).")
        return enter(self.ns_fds, [str(f) for f in self.cgroup.join_files], self.tier.keep_caps,
                     self.tier.seccomp_program)

    def exec(self, argv: list[str], timeout: float) -> Completed:
        nsinit = self.tier.nsinit
        if nsinit is None or not self.ns_fds or self._stopped:
            return procs.run(argv, timeout=timeout, env=ENV, preexec=self._preexec())
        # bench-nsinit --enter does what _preexec does, spawned without forking bench itself
        join = [str(f) for f in self.cgroup.join_files]
        spec = ",".join(f"{name}={fd}" for name, fd in self.ns_fds.items())
        keep = hex(sum(1 << c for c in self.tier.keep_caps))
        filtered = ["--seccomp", self.tier.seccomp_path] if self.tier.seccomp_path else []
        return procs.run([nsinit, *filtered, "--enter", keep, spec, str(len(join)), *join, "--",
                          *argv], timeout=timeout, env=ENV, pass_fds=list(self.ns_fds.values()))

    def spawn(self, argv: list[str]) -> Background:
        self._spawned += 1
        log = self.dir / f"bg-{self._spawned}.log"
        proc = procs.spawn(argv, env=ENV, preexec=self._preexec(), stdout_path=str(log))
        return ProcessBackground(proc, log)

    def address(self) -> str:
        return self.net["address"] if self.net else "127.0.0.1"

    def wait(self, timeout: float) -> int:
        assert self._out is not None and self._report is not None, \
            "wait() is for instances started with a command"
        deadline = time.monotonic() + timeout
        chunks: dict[int, list[bytes]] = {fd: [] for fd in self._out}
        open_fds = set(self._out)
        while open_fds:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(list(open_fds), [], [], max(0.0, left))
            if not ready and left <= 0:
                self.stop()
                raise CommandTimeout(self.spec.command or [], timeout)
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.discard(fd)
        self._output = b"".join(b"".join(chunks[fd]) for fd in chunks).decode(errors="replace")
        for name, detail in self._lines(deadline):
            if name == "exit":
                when, _, code = detail.partition(" ")
                self.phases.mark("exit", float(when))
                self.exit_status = int(code)
        if self.exit_status is None:  # the init died without a word: killed
            self._dead(max(0.0, deadline - time.monotonic()))
            self.phases.mark("exit")
            self.exit_status = -1
        return self.exit_status

    def output(self) -> str:
        return self._output

    def read_file(self, path: str) -> bytes:
        """Resolved inside the container's root: its own symlinks cannot point at the host."""
        return safefs.read_in_root(f"/proc/{self.pid}/root", path)

    def memory_bytes(self) -> int | None:
        return self.cgroup.memory_bytes()

    def cgroup_pid(self) -> int | None:
        return self.pid or None

    def memory_report(self) -> dict[str, int]:
        """The cgroup's usage, its memory.stat, and (v1) its kernel memory usage."""
        found = {"usage": self.cgroup.memory_bytes(), **self.cgroup.memory_stat()}
        kmem = self.cgroup.dir("memory") / "memory.kmem.usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            found["kmem_usage"] = int(kmem.read_text())
        return found

    def host_pids(self) -> set[int] | None:
        return self.cgroup.procs()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._go is not None:  # prepared, never started: closing the pipe ends the init
            os.close(self._go)
            self._go = None
        if self.pidfd is not None:
            if not self._dead(0):
                # PID 1 killed: the kernel kills the rest of its PID namespace
                with contextlib.suppress(ProcessLookupError):  # it may just have ended
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                self._dead(10.0)
                self.phases.stamps.setdefault("exit", time.monotonic())
            os.close(self.pidfd)
            self.pidfd = None
        if self.child:
            self._reap_child()
        for fd in [*(self._out or ()), *([self._report] if self._report is not None else []),
                   *self.ns_fds.values()]:
            os.close(fd)
        self._out = self._report = None
        self.ns_fds.clear()
        if self.net is not None:
            self.tier.bridge.release(self.net["host_end"], self.net["address"])
        self.cgroup.remove()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.tier.forget(self)
        if self.pid:
            self.phases.mark("removed")
        if self._ready:  # top the pools up for the next start, off its path
            self.tier.refill(self.spec)

    def _reap_child(self) -> None:
        """Collect bench's child, bench-nsinit (PID 1, or the process that forked it, which
        ends as PID 1 ends and takes PID 1 with it if killed)."""
        try:
            done, _ = os.waitpid(self.child, os.WNOHANG)
            if not done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, signal.SIGKILL)
                os.waitpid(self.child, 0)
        except ChildProcessError:
            pass
        self.child = 0

    def scratch_dir(self) -> str:
        return "/scratch"

    def _switch_one(self, limit: str, value: Any) -> SwitchChange:
        if limit == "net_mbit":
            return switching.net_change(self.pid or None, value, self.spec.network)
        return switching.cgroup_change(self.cgroup, limit, value, self.io_device)

    def read_limits(self) -> dict[str, Any]:
        return switching.readback(self.cgroup, self.io_device, self.pid or None,
                                  self.spec.network)

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:  # worked out once: the directories go with `stop`
            if self.spec.scratch == "bind":
                fs = self.tier.filesystem_of(self.dir / "scratch")
                scratch = {"scratch_mode": "bind", "scratch_fs": fs["fstype"],
                           "scratch_device": fs["device"]}
            else:
                fs = self.tier.filesystem_of(self.dir / "upper")
                scratch = {"scratch_mode": "overlay", "scratch_fs": "overlay",
                           "scratch_device": fs["device"], "overlay_upper_fs": fs["fstype"]}
            network = "veth+bridge" if self.spec.network == "bridge" else "host"
            if self.spec.limits.net_mbit is not None:
                network += f" (egress tbf {self.spec.limits.net_mbit:g} Mbit/s on eth0)"
            self._metadata = {"network_path": network, "network_mode": self.spec.network,
                              **scratch, **{f"{k}_source": v for k, v in self.sources.items()}}
        return self._metadata
