"""bench-nsinit: the container side of a start in C (bench/native/nsinit.c), built on the host.

The tier compiles it with gcc on first use into a cache directory keyed by the source's hash
(`BENCH_CACHE_DIR`, default /var/cache/bench), so a start is one posix_spawn from bench: no
fork of a Python process, no interpreter start-up in the container's init. Without gcc the
tier falls back to the Python runtime (runtime/zygote.py + runtime/init.py) and says so in its
metadata. `plan_argv` turns an `InitPlan` into the program's command line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from bench.core.settings import settings
from bench.kernel import linuxns
from bench.tiers.ns.runtime.init import InitPlan

NAME = "bench-nsinit"


def source() -> bytes:
    return (resources.files("bench") / "native" / "nsinit.c").read_bytes()


def cache_dir() -> Path:
    return settings().cache_dir


def build() -> tuple[Path | None, str]:
    """The built program (compiled now if not cached) and a word on how, or (None, why not)."""
    code = source()
    digest = hashlib.sha256(code).hexdigest()[:16]
    target = cache_dir() / f"nsinit-{digest}" / NAME
    if os.access(target, os.X_OK):
        return target, f"cached {target}"
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc not found: the Python runtime is used"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp, "nsinit.c")
        src.write_bytes(code)
        out = Path(tmp, NAME)
        for static in (["-static"], []):  # static: no dynamic loader at each start
            done = subprocess.run([gcc, "-O2", "-Wall", *static, "-o", str(out), str(src)],
                                  capture_output=True, text=True, timeout=120, check=False)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            return None, f"gcc failed ({done.stderr.strip()[:300]}): the Python runtime is used"
        os.replace(out, target)  # atomic: a concurrent build ends with the same file
    return target, f"built {target}"


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
