"""The host tier: bare metal. Workloads run from the bench image's root through chroot only:
no namespaces, no cgroup limits, the host's network (loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.core import procs
from bench.core.errors import CommandTimeout
from bench.core.procs import Completed
from bench.core.settings import settings
from bench.kernel import sysmount
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


def _chroot_into(root: Path) -> Any:
    def enter() -> None:
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

    def launch(self) -> None:
        assert self.spec.command is not None
        self.phases.mark("create")
        # The start-up baseline: a plain spawn of chroot(8), which enters the image and execs
        # the command. No preexec hook, so Python can vfork instead of copying its own memory.
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        self.proc = subprocess.Popen(
            [chroot, str(self.root), *self.spec.command], env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, close_fds=True,
        )
        self.phases.mark("started")  # Popen returns once exec has succeeded in the child

    def exec(self, argv: list[str], timeout: float) -> Completed:
        return procs.run(argv, timeout=timeout, env=ENV, preexec=_chroot_into(self.root))

    def spawn(self, argv: list[str]) -> Background:
        self._spawned += 1
        log = self.workdir / f"{self.spec.role}-bg-{self._spawned}.log"
        proc = procs.spawn(argv, env=ENV, preexec=_chroot_into(self.root), stdout_path=str(log))
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
        inside = (self.root / path.lstrip("/")).resolve()
        if not str(inside).startswith(str(self.root.resolve())):
            raise ValueError(f"{path} leaves the instance's root")
        return inside.read_bytes()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if "removed" not in self.phases.stamps and self.proc is not None:
            self.phases.mark("removed")

    def metadata(self) -> dict[str, Any]:
        fs = sysmount.filesystem_of(self.scratch_host)
        return {"network_path": "loopback", "scratch_fs": fs["fstype"],
                "scratch_device": fs["device"], "scratch_mode": "bind"}


class HostTier(Tier):
    name = "host"
    is_baseline = True
    own_netns = False
    description = "bare metal: the bench image's root through chroot, no isolation, no limits"
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
        if spec.command is not None:
            instance.launch()
        else:
            instance.phases.mark("create")
            instance.phases.mark("ready")
        return instance

    def finish(self) -> None:
        if hasattr(self, "root"):
            sysmount.unmount_all(self.root)
            deadline = time.monotonic() + 5
            while sysmount.mounts_under(self.root) and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(self.scratch, ignore_errors=True)
            if not sysmount.mounts_under(self.root):
                shutil.rmtree(self.root, ignore_errors=True)

    def cleanup(self, run_id: str | None) -> list[str]:
        base = settings().work_dir
        removed = []
        for work in sorted(base.glob(run_id or "*")):
            removed += [f"mount {p}" for p in sysmount.unmount_all(work / "host")]
        return removed

    def metadata(self) -> dict[str, Any]:
        return {"isolation": "none (chroot)", "limits": "none"}
