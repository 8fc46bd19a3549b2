"""The host tier: bare metal. Workloads run from the bench image's root through chroot only:
no cgroup limits, the host's network (loopback), the host's pid, net, uts, ipc and cgroup
namespaces. Only the mounts the chroot needs (/proc, /sys, /dev, /tmp, /scratch) live in a
mount namespace of bench's own (kernel/mountns.py), so the machine's mount table never shows
them (a second /sys/fs/cgroup there misleads libvirt's cgroup look-up, which the kvm tier's
live CPU switch needs). Its commands stay in bench's session (a process group each, for the
timeout's kill): with the kernel's autogroup a session of their own would be a scheduling
group of their own, sharing the CPUs half and half with a neighbour whatever the thread
counts, a shield bare metal processes do not have.

The one exception is safety: an instance started with a `guard` (an antagonist: fork storm,
memory hog) runs every process in a cgroup of bench's own, `bench-guard/<run-id>/<name>`,
limited by the guard and removed (its processes killed) when the instance stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core import hostlock, procs, safefs
from bench.core.errors import BenchError, CommandTimeout
from bench.core.procs import Completed
from bench.kernel import cgroups, mountns, sysmount
from bench.kernel.mountns import MountHolder
from bench.tiers.base import (
    Availability,
    Background,
    Instance,
    InstanceSpec,
    ProcessBackground,
    Tier,
    TierContext,
)

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}


GUARD_ROOT = "bench-guard"


def _enter(holder: MountHolder, join: list[str] | None = None) -> Callable[[], None]:
    def enter() -> None:
        for path in join or ():  # the guard's cgroup first: everything forked after is in it
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        holder.enter()

    return enter


class HostInstance(Instance):
    def __init__(self, spec: InstanceSpec, holder: MountHolder, workdir: Path,
                 scratch: Path) -> None:
        super().__init__(spec)
        self.holder = holder
        self.workdir = workdir
        self.scratch_host = scratch
        self.proc: subprocess.Popen[str] | None = None
        self._output = ""
        self._spawned = 0
        self.guard: cgroups.Cgroup | None = None

    def confine(self, hierarchies: cgroups.Hierarchies, rel: str) -> None:
        """Put this instance's processes in a new cgroup limited by the spec's guard."""
        assert self.spec.guard is not None
        self.guard = cgroups.Cgroup(hierarchies, rel, cgroups.controllers_for(self.spec.guard))
        self.guard.create(self.spec.guard)

    def _enter(self) -> Callable[[], None]:
        join = [str(p) for p in self.guard.join_files] if self.guard is not None else None
        return _enter(self.holder, join)

    def launch(self) -> None:
        assert self.spec.command is not None
        self.phases.mark("go" if "create" in self.phases.stamps else "create")
        # The start-up baseline: a plain spawn of bench-mntexec, which enters the image (the
        # holder's mount namespace and root) and execs the command. No preexec hook, so Python
        # can vfork instead of copying its own memory.
        self.proc = subprocess.Popen(
            self.holder.argv(self.spec.command), env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, close_fds=True,
        )
        self.phases.mark("started")  # Popen returns once exec has succeeded in the child

    def go(self) -> None:
        """A warm start on the host: there is nothing to prepare, so it is the plain spawn."""
        self.launch()

    def exec(self, argv: list[str], timeout: float) -> Completed:
        if self.guard is None:  # bench-mntexec enters the image: no preexec, Python can vfork
            return procs.run(self.holder.argv(argv), timeout=timeout, env=ENV,  # (no copy)
                             new_session=False)
        return procs.run(argv, timeout=timeout, env=ENV, preexec=self._enter(),
                         new_session=False)

    def spawn(self, argv: list[str]) -> Background:
        self._spawned += 1
        log = self.workdir / f"{self.spec.role}-bg-{self._spawned}.log"
        proc = procs.spawn(argv, env=ENV, preexec=self._enter(), stdout_path=str(log),
                           new_session=False)
        return ProcessBackground(proc, log)

    def address(self) -> str:
        return "127.0.0.1"

    def wait(self, timeout: float) -> int:
        assert self.proc is not None, "wait() is for instances started with a command"
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise CommandTimeout(self.spec.command or [], timeout) from None
        self.phases.mark("exit")
        self._output = out + err
        return self.proc.returncode

    def output(self) -> str:
        return self._output

    def read_file(self, path: str) -> bytes:
        return safefs.read_in_root(self.holder.root_path, path)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.guard is not None:
            self.guard.remove()  # kills what is left in it
            self.guard = None
        if "removed" not in self.phases.stamps and self.proc is not None:
            self.phases.mark("removed")

    def memory_bytes(self) -> int | None:
        return self.guard.memory_bytes() if self.guard is not None else None

    def host_pids(self) -> set[int] | None:
        return self.guard.procs() if self.guard is not None else None

    def metadata(self) -> dict[str, Any]:
        fs = sysmount.filesystem_of(self.scratch_host)
        found = {"network_path": "loopback", "scratch_fs": fs["fstype"],
                 "scratch_device": fs["device"], "scratch_mode": "bind"}
        if self.spec.guard is not None:
            found["guard"] = self.spec.guard.model_dump(exclude_none=True)
        return found


class HostTier(Tier):
    name = "host"
    is_baseline = True
    warm_start = True  # nothing to prepare: its warm start is the plain spawn, from go
    own_netns = False
    description = "bare metal: the bench image's root through chroot, no isolation, no limits"
    applies_limits = False
    cache_devices = "host"

    def available(self) -> Availability:
        if os.geteuid() != 0:
            return Availability(False, "chroot and bind mounts need root.", "run bench as root.")
        return Availability(True)

    def prepare(self, ctx: TierContext) -> None:
        super().prepare(ctx)
        self.root = ctx.workdir / "host-root"
        self.scratch = ctx.workdir / "host-scratch"
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.guards = 0
        self.holder = MountHolder(self.root, [  # made inside the holder's namespace
            {"bind": True, "source": str(ctx.image.rootfs), "target": "/", "readonly": True},
            {"source": "proc", "target": "/proc", "fstype": "proc",
             "flags": sysmount.MS_NOSUID | sysmount.MS_NODEV | sysmount.MS_NOEXEC},
            {"bind": True, "source": "/sys", "target": "/sys", "readonly": True},
            {"bind": True, "source": "/dev", "target": "/dev"},
            {"source": "tmpfs", "target": "/tmp", "fstype": "tmpfs",
             "flags": sysmount.MS_NOSUID, "data": "mode=1777"},
            {"bind": True, "source": str(self.scratch), "target": "/scratch"},
        ])

    def start(self, spec: InstanceSpec) -> Instance:
        instance = HostInstance(spec, self.holder, self.ctx.workdir, self.scratch)
        if spec.guard is not None:
            self.guards += 1
            instance.confine(cgroups.detect(),
                             f"{GUARD_ROOT}/{self.ctx.run_id}/{spec.role}-{self.guards}")
        if spec.command is not None:
            instance.launch()
        else:
            instance.phases.mark("create")
            instance.phases.mark("ready")
        return instance

    def start_prepared(self, spec: InstanceSpec) -> Instance:
        instance = HostInstance(spec, self.holder, self.ctx.workdir, self.scratch)
        instance.phases.mark("create")
        return instance

    def bind_scratch(self, source: Path) -> None:
        mountns.bind_into(self.holder.pid, source, "/scratch")

    def unbind_scratch(self) -> None:
        if self.holder.proc.poll() is None:  # else the mount went with the namespace
            mountns.unmount_in(self.holder.pid, "/scratch")

    def finish(self) -> None:
        if hasattr(self, "ctx"):
            self._remove_guards(self.ctx.run_id)
        if hasattr(self, "holder"):
            self.holder.stop()  # its namespace, and every mount in it, go with it
        if hasattr(self, "root"):  # (an empty directory in the machine's mount namespace)
            shutil.rmtree(self.scratch, ignore_errors=True)
            if not sysmount.mounts_under(self.root):
                shutil.rmtree(self.root, ignore_errors=True)

    def cleanup(self, run_id: str | None) -> list[str]:
        removed = self._remove_guards(run_id)
        for work in hostlock.run_dirs(run_id):
            removed += mountns.kill_holders(work / "host")
            removed += [f"mount {p}" for p in sysmount.unmount_all(work / "host")]
        return removed

    @staticmethod
    def _remove_guards(run_id: str | None) -> list[str]:
        try:
            hierarchies = cgroups.detect()
        except BenchError:
            return []
        rel = f"{GUARD_ROOT}/{run_id}" if run_id else GUARD_ROOT
        removed = [f"cgroup {p}" for p in cgroups.remove_tree(hierarchies, rel)]
        for root in hierarchies.unique_roots:  # the shared parent, once no run uses it
            with contextlib.suppress(OSError):
                (root / GUARD_ROOT).rmdir()
        return removed

    def metadata(self) -> dict[str, Any]:
        return {"isolation": "none (chroot)", "limits": "none",
                "scheduling": "bench's session (one autogroup for every instance)",
                "namespaces": "the host's (pid, net, uts, ipc, cgroup, user)",
                "mounts": "the chroot's in a mount namespace of bench's own (" + (
                    f"{self.holder.how}, entered by {self.holder.entry})"
                    if hasattr(self, "holder") else "not made)")}
