"""The ns tier: the suite's own containers, made from kernel primitives and nothing else.

A start (see runtime/): bench posix_spawns bench-nsinit (bench/native/nsinit.c, built on
the host by bench.tiers.ns.runtime.native) with `CLONE_NEWPID` in force, so it is PID 1 of a new PID
namespace. That init joins a network namespace from the tier's pool (made and wired to the
run's bridge beforehand, bench.tiers.ns.pool) or unshares one while bench wires a veth pair
into it; joins the instance's control group (from the pool, or made and limited first);
unshares the mount, UTS, IPC and cgroup namespaces, sets the hostname, mounts overlayfs over
the bench image with /proc, /sys and /dev, pivot_roots into it and cuts its capabilities
(default: Docker's set) with no_new_privs. It reports each phase on a pipe; on bench's go it
starts the command and stays as the init that reaps. Without gcc the Python runtime does the
same: a zygote forks a Python init (runtime/zygote.py, runtime/init.py). `exec` enters a
running instance with setns (bench.tiers.ns.runtime.init.enter).

Settings (environment): `BENCH_NS_CAPS` = comma-separated capability names to keep
(`all` keeps every one; default Docker's set); `BENCH_NS_RUNTIME=python` = use the Python
runtime even where gcc is installed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core import hostlock, procs, safefs
from bench.core.errors import BenchError, CommandTimeout
from bench.core.limits import Limits
from bench.core.procs import Completed
from bench.core.settings import settings
from bench.kernel import cgroups, linuxns, sysmount, tc
from bench.tiers import switching
from bench.tiers.base import (
    Availability,
    Background,
    HostMemory,
    Instance,
    InstanceSpec,
    ProcessBackground,
    SwitchChange,
    Tier,
    TierContext,
    host_memory,
)
from bench.tiers.host import ENV
from bench.tiers.ns import net as ns_net
from bench.tiers.ns import pool as ns_pool
from bench.tiers.ns.net import Bridge
from bench.tiers.ns.runtime import native
from bench.tiers.ns.runtime.init import InitPlan, enter
from bench.tiers.ns.runtime.rootfs import RootPlan
from bench.tiers.ns.runtime.zygote import Zygote

CGROUP_ROOT = "bench-ns"
NAMESPACE_FLAGS = (linuxns.CLONE_NEWNS | linuxns.CLONE_NEWUTS | linuxns.CLONE_NEWIPC
                   | linuxns.CLONE_NEWCGROUP)
START_TIMEOUT = 30.0


class NsStartError(BenchError):
    """A container could not be started."""


def capabilities_from_env() -> frozenset[str]:
    raw = settings().ns_caps.strip()
    if not raw:
        return linuxns.DOCKER_DEFAULT_CAPS
    if raw.lower() == "all":
        return frozenset(linuxns.CAPABILITIES[: linuxns.last_cap() + 1])
    return frozenset(name.strip().upper().removeprefix("CAP_") for name in raw.split(",")
                     if name.strip())


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
        if self.spec.network == "bridge":
            flags |= linuxns.CLONE_NEWNET
            pooled_net = pools.take_net() if pools is not None else None
            if pooled_net is not None:
                self.net, child_fds["netns"] = pooled_net.net, pooled_net.fd
                self._net_pooled = True
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
            keep_caps=sorted(self.tier.keep_caps))
        self._report, child_fds["report"] = os.pipe()
        go_r, go_w = os.pipe()
        child_fds["go"] = go_r
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
        if limits.net_mbit is not None and self.spec.network == "bridge":
            tc.set_rate(switching.INSTANCE_LINK, limits.net_mbit, self.pid)

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
        bridge mode bench wires the veth in as soon as the namespace exists, while the init
        goes on, and says go then; with no network to wire, go is said at once. With `hold`,
        go is left to `go()`."""
        if (self.net is None or self._net_pooled) and not hold:
            with contextlib.suppress(BrokenPipeError):  # an init that failed says why below
                os.write(go_w, b"go")
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
        return enter(self.ns_fds, [str(f) for f in self.cgroup.join_files], self.tier.keep_caps)

    def exec(self, argv: list[str], timeout: float) -> Completed:
        return procs.run(argv, timeout=timeout, env=ENV, preexec=self._preexec())

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


class NsTier(Tier):
    name = "ns"
    description = ("own containers: clone/unshare, setns, pivot_root, overlayfs, cgroups, "
                   "veth + bridge + NAT (no Docker)")
    packages = ("iptables", "util-linux", "iproute2")
    live_switches = switching.CONTAINER_SWITCHES
    warm_start = True  # start_prepared: the init holds before the command until go()

    def __init__(self, capabilities: frozenset[str] | None = None) -> None:
        self.capabilities = capabilities if capabilities is not None else capabilities_from_env()
        self.keep_caps = linuxns.cap_numbers(self.capabilities)
        self.instances: list[NsInstance] = []
        self.counter = 0
        self._filesystems: dict[int, dict[str, Any]] = {}  # st_dev -> sysmount.filesystem_of

    def available(self) -> Availability:
        if os.geteuid() != 0:
            return Availability(False, "namespaces, mounts and cgroups need root.",
                                "run bench as root.")
        missing = [n for n in ("mnt", "pid", "net", "uts", "ipc", "cgroup")
                   if not Path(f"/proc/self/ns/{n}").exists()]
        if missing:
            return Availability(False, f"this kernel lacks namespaces: {', '.join(missing)}.",
                                "use a kernel built with CONFIG_NAMESPACES and its options.")
        if "overlay" not in Path("/proc/filesystems").read_text():
            return Availability(False, "this kernel has no overlayfs.",
                                "load the overlay module (`modprobe overlay`).")
        try:
            cgroups.detect()
        except BenchError as exc:
            return Availability(False, exc.cause, exc.fix)
        if shutil.which("iptables") is None:
            return Availability(False, "iptables is not installed (NAT for the bridge).",
                                "run `bench setup` (or `apt-get install iptables`).")
        return Availability(True)

    def prepare(self, ctx: TierContext) -> None:
        super().prepare(ctx)
        self.hierarchies = cgroups.detect()
        self.run_group = cgroups.Cgroup(self.hierarchies, f"{CGROUP_ROOT}/{ctx.run_id}")
        self.run_group.create(Limits())
        self.bridge = Bridge(ctx.run_id)
        try:
            self.bridge.create()
        except BaseException:
            self.run_group.remove()
            raise
        self.pools = ns_pool.Pools(self.hierarchies, self.run_group.rel, self.bridge)
        self.pool_errors: list[str] = []
        self._finishing = False
        self.zygote: Zygote | None = None
        self.nsinit: str | None = None
        if settings().ns_runtime == "python":
            self.runtime_note = "BENCH_NS_RUNTIME=python: the Python runtime is used"
        else:
            built, self.runtime_note = native.build()
            self.nsinit = str(built) if built else None
        if self.nsinit is None:
            self.zygote = Zygote(self.keep_caps)
        else:
            try:
                self.pools.fill_nets()
            except BaseException:
                self.finish()
                raise

    def filesystem_of(self, path: Path) -> dict[str, Any]:
        """sysmount.filesystem_of, once per file system (the mount table is not read on
        every start: instances' directories all sit on the work directory's)."""
        dev = os.stat(path).st_dev
        if dev not in self._filesystems:
            self._filesystems[dev] = sysmount.filesystem_of(path)
        return self._filesystems[dev]

    def refill(self, spec: InstanceSpec) -> None:
        """Top up the pools after an instance like `spec` stopped. A failure only costs the
        next start the work (it makes its own), and is noted in the metadata."""
        if self.nsinit is None or self._finishing:
            return
        try:
            self.pools.fill_group(spec.limits)
            if spec.network == "bridge":
                self.pools.fill_nets()
        except (OSError, BenchError) as exc:
            self.pool_errors.append(str(exc))

    @property
    def init_name(self) -> str:
        """What PID 1's command line shows: the runtime's init, not the workload."""
        return native.NAME if self.nsinit is not None else "bench.tiers.ns.runtime.zygote"

    def live_zygote(self) -> Zygote:
        """The zygote, started again if it died (its containers died with it)."""
        if self.zygote is None or self.zygote.proc.poll() is not None:
            if self.zygote is not None:
                self.zygote.close()
            self.zygote = Zygote(self.keep_caps)
        return self.zygote

    def start(self, spec: InstanceSpec, lower: str | None = None) -> Instance:
        """Start an instance; `lower` stacks these directories instead of the bench image."""
        return self._start(spec, lower, hold=False)

    def start_prepared(self, spec: InstanceSpec) -> Instance:
        return self._start(spec, None, hold=True)

    def _start(self, spec: InstanceSpec, lower: str | None, hold: bool) -> NsInstance:
        self.counter += 1
        instance = NsInstance(self, spec, f"{spec.role}-{self.counter}", lower)
        self.instances.append(instance)
        try:
            instance.launch(hold)
        except BaseException:
            instance.stop()
            raise
        return instance

    def forget(self, instance: NsInstance) -> None:
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)

    def layer_lab(self) -> Any:
        """overlayfs over N layer directories (bench/tiers/ns/layers.py)."""
        if getattr(self, "_layers", None) is None:
            from bench.tiers.ns.layers import NsLayers

            self._layers: Any = NsLayers(self)
        return self._layers

    def finish(self) -> None:
        if getattr(self, "_layers", None) is not None:
            self._layers.close()
            self._layers = None
        if not hasattr(self, "bridge"):
            return
        self._finishing = True
        for instance in list(self.instances):
            with contextlib.suppress(Exception):
                instance.stop()
        pools = getattr(self, "pools", None)
        if pools is not None:
            pools.close()
        self.bridge.remove()
        cgroups.remove_tree(self.hierarchies, self.run_group.rel)
        for root in self.hierarchies.unique_roots:  # the shared parent, once no run uses it
            with contextlib.suppress(OSError):
                (root / CGROUP_ROOT).rmdir()
        zygote = getattr(self, "zygote", None)
        if zygote is not None:
            zygote.close()
        del self.bridge
        shutil.rmtree(self.ctx.workdir, ignore_errors=True)

    def cleanup(self, run_id: str | None) -> list[str]:
        removed = []
        try:
            hierarchies = cgroups.detect()
        except BenchError:
            hierarchies = None
        if hierarchies is not None:
            runs = [run_id] if run_id else sorted(
                {p.name for root in hierarchies.unique_roots
                 for p in (root / CGROUP_ROOT).glob("*") if p.is_dir()})
            for run in runs:
                if run_id is None and hostlock.run_is_live(run):
                    continue  # a run still going: not a leftover
                removed += [f"cgroup {p}" for p in
                            cgroups.remove_tree(hierarchies, f"{CGROUP_ROOT}/{run}")]
        removed += ns_net.cleanup(run_id)
        from bench.tiers.ns import layers as ns_layers

        removed += ns_layers.cleanup(run_id)
        for run_dir in hostlock.run_dirs(run_id):
            work = run_dir / "ns"
            removed += [f"mount {p}" for p in sysmount.unmount_all(work)]
            if work.is_dir() and not work.is_symlink():
                shutil.rmtree(work, ignore_errors=True)  # fd-based: follows no symlink inside
                removed.append(f"directory {work}")
        return removed

    def support_memory(self) -> HostMemory | None:
        """The runtime's own processes (their proportional set size): the zygote, outside
        every container's cgroup; or, with bench-nsinit, each container's PID 1 (which its
        cgroup charges too: there is no runtime process outside the containers)."""
        zygote = getattr(self, "zygote", None)
        pids = [zygote.proc.pid] if zygote is not None else [i.pid for i in self.instances
                                                             if i.pid]
        return host_memory(pids) if pids else None

    def metadata(self) -> dict[str, Any]:
        h = getattr(self, "hierarchies", None)
        return {"isolation": "namespaces: mnt pid uts ipc net cgroup (no user ns)",
                "cgroup_version": h.version if h else None,
                "capabilities": sorted(self.capabilities), "no_new_privs": True,
                "seccomp": "none (Docker applies its default profile: ns and docker differ "
                           "in the system calls they allow)",
                "root": "overlayfs over the bench image",
                "runtime": ("bench-nsinit (C, posix_spawn)" if getattr(self, "nsinit", None)
                            else "bench (python, os.fork)"),
                "runtime_note": getattr(self, "runtime_note", None),
                "pools": ("network namespaces (made and wired at prepare and after a stop) and "
                          "control groups per set of limits (made after a stop): a start "
                          "joins them; instance metadata says which it got"
                          if getattr(self, "nsinit", None) else None),
                "pool_errors": getattr(self, "pool_errors", [])[-3:]}
