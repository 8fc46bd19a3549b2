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
runtime even where gcc is installed; `BENCH_NS_SECCOMP` = `docker` (default: Docker's default
seccomp profile, compiled for the kept capabilities and loaded by the init at `ready` and by
each exec, so ns and docker run under the same filter) or `none`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from bench.core import hostlock
from bench.core.errors import BenchError
from bench.core.limits import Limits
from bench.core.settings import settings
from bench.kernel import cgroups, linuxns, seccomp, sysmount
from bench.tiers import switching
from bench.tiers.base import (
    Availability,
    HostMemory,
    Instance,
    InstanceSpec,
    Tier,
    TierContext,
    host_memory,
)
from bench.tiers.host import ENV
from bench.tiers.ns import net as ns_net
from bench.tiers.ns import pool as ns_pool
from bench.tiers.ns.instance import CGROUP_ROOT, NsInstance
from bench.tiers.ns.net import Bridge
from bench.tiers.ns.runtime import native
from bench.tiers.ns.runtime.zygote import Zygote


def capabilities_from_env() -> frozenset[str]:
    raw = settings().ns_caps.strip()
    if not raw:
        return linuxns.DOCKER_DEFAULT_CAPS
    if raw.lower() == "all":
        return frozenset(linuxns.CAPABILITIES[: linuxns.last_cap() + 1])
    return frozenset(name.strip().upper().removeprefix("CAP_") for name in raw.split(",")
                     if name.strip())



class NsTier(Tier):
    name = "ns"
    description = ("own containers: clone/unshare, setns, pivot_root, overlayfs, cgroups, "
                   "veth + bridge + NAT (no Docker)")
    packages = ("iptables", "util-linux", "iproute2", "libseccomp2")
    live_switches = switching.CONTAINER_SWITCHES
    warm_start = True  # start_prepared: the init holds before the command until go()

    def __init__(self, capabilities: frozenset[str] | None = None) -> None:
        self.capabilities = capabilities if capabilities is not None else capabilities_from_env()
        self.keep_caps = linuxns.cap_numbers(self.capabilities)
        self.instances: list[NsInstance] = []
        self.counter = 0
        self._filesystems: dict[int, dict[str, Any]] = {}  # st_dev -> sysmount.filesystem_of
        self.seccomp_program: bytes | None = None  # set at prepare (BENCH_NS_SECCOMP)
        self.seccomp_path: str | None = None

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
        if settings().ns_seccomp == "docker":  # first: nothing to undo if it fails
            self.seccomp_program = seccomp.compile_bpf(seccomp.profile(), self.capabilities)
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            path = ctx.workdir / "seccomp.bpf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.seccomp_program)
            self.seccomp_path = str(path)
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
                self._fill_bridge_pools()
            except BaseException:
                self.finish()
                raise

    def _fill_bridge_pools(self) -> None:
        """Network namespaces, and PID 1s waiting with one each (taken from the first)."""
        assert self.nsinit is not None
        self.pools.fill_nets()
        self.pools.fill_inits(self.nsinit, self.seccomp_path, ENV)
        self.pools.fill_nets()

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
                self._fill_bridge_pools()
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
                "seccomp": ("Docker's default profile (docker.io 20.10.24, from Debian's "
                            "golang-github-docker-docker-dev) for the kept capabilities"
                            if self.seccomp_path else
                            "none (Docker applies its default profile: ns and docker differ "
                            "in the system calls they allow)"),
                "root": "overlayfs over the bench image",
                "runtime": ("bench-nsinit (C, posix_spawn)" if getattr(self, "nsinit", None)
                            else "bench (python, os.fork)"),
                "runtime_note": getattr(self, "runtime_note", None),
                "pools": ("network namespaces (made and wired at prepare and after a stop), "
                          "control groups per set of limits (made after a stop): a start "
                          "joins them; PID 1s each in a new PID namespace with a pooled "
                          "network namespace, waiting for a plan (a start with a command on "
                          "the bridge takes one instead of spawning it); instance metadata "
                          "says which it got"
                          if getattr(self, "nsinit", None) else None),
                "pool_errors": getattr(self, "pool_errors", [])[-3:]}

