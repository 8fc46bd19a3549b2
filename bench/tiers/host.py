"""The host tier: bare metal. Workloads run from the bench image's root through chroot only:
no namespaces, no cgroup limits, the host's network (loopback). Its commands stay in bench's
session (a process group each, for the timeout's kill): with the kernel's autogroup a session of
their own would be a scheduling group of their own, sharing the CPUs half and half with a
neighbour whatever the thread counts, a shield bare metal processes do not have.

The one exception is safety: an instance started with a `guard` (an antagonist: fork storm,
memory hog) runs every process in a cgroup of bench's own, `bench-guard/<run-id>/<name>`,
limited by the guard and removed (its processes killed) when the instance stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.core import hostlock, procs, safefs
from bench.core.errors import BenchError, CommandTimeout
from bench.core.procs import Completed
from bench.kernel import cgroups, sysmount
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


def _chroot_into(root: Path, join: list[str] | None = None) -> Any:
    def enter() -> None:
        for path in join or ():  # the guard's cgroup first: everything forked after is in it
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        os.chroot(root)
        os.chdir("/")

    return enter


class HostInstance(Instance):
    def __init__(self, spec: InstanceSpec, root: Path, workdir: Path, scratch: Path) -> None:
        super().__init__(spec)
        self.root = root
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

    def _enter(self) -> Any:
        join = [str(p) for p in self.guard.join_files] if self.guard is not None else None
        return _chroot_into(self.root, join)

    def launch(self) -> None:
        assert self.spec.command is not None
        self.phases.mark("go" if "create" in self.phases.stamps else "create")
        # The start-up baseline: a plain spawn of chroot(8), which enters the image and execs
        # the command. No preexec hook, so Python can vfork instead of copying its own memory.
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        self.proc = subprocess.Popen(
            [chroot, str(self.root), *self.spec.command], env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, close_fds=True,
        )
        self.phases.mark("started")  # Popen returns once exec has succeeded in the child

    def go(self) -> None:
        """A warm start on the host: there is nothing to prepare, so it is the plain spawn."""
        self.launch()

    def exec(self, argv: list[str], timeout: float) -> Completed:
        if self.guard is None:  # chroot(8) enters the image: no preexec, so Python can vfork
            chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # instead of copying itself
            return procs.run([chroot, str(self.root), *argv], timeout=timeout, env=ENV,
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
        return safefs.read_in_root(self.root, path)

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
        try:
            sysmount.bind(ctx.image.rootfs, self.root, readonly=True)
            sysmount.mount("proc", self.root / "proc", "proc",
                           sysmount.MS_NOSUID | sysmount.MS_NODEV | sysmount.MS_NOEXEC)
            sysmount.bind("/sys", self.root / "sys", readonly=True)
            sysmount.bind("/dev", self.root / "dev")
            sysmount.mount("tmpfs", self.root / "tmp", "tmpfs", sysmount.MS_NOSUID, "mode=1777")
            sysmount.bind(self.scratch, self.root / "scratch")
        except OSError:
            self.finish()
            raise

    def start(self, spec: InstanceSpec) -> Instance:
        instance = HostInstance(spec, self.root, self.ctx.workdir, self.scratch)
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
        instance = HostInstance(spec, self.root, self.ctx.workdir, self.scratch)
        instance.phases.mark("create")
        return instance

    def finish(self) -> None:
        if hasattr(self, "ctx"):
            self._remove_guards(self.ctx.run_id)
        if hasattr(self, "root"):
            sysmount.unmount_all(self.root)
            deadline = time.monotonic() + 5
            while sysmount.mounts_under(self.root) and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(self.scratch, ignore_errors=True)
            if not sysmount.mounts_under(self.root):
                shutil.rmtree(self.root, ignore_errors=True)

    def cleanup(self, run_id: str | None) -> list[str]:
        removed = self._remove_guards(run_id)
        for work in hostlock.run_dirs(run_id):
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
                "scheduling": "bench's session (one autogroup for every instance)"}
