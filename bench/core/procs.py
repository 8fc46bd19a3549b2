"""Run commands as argv lists (never a shell string); a timeout kills the whole process group.

The one place bench runs a program to completion. The exceptions, each for a reason this
module cannot serve (tests/test_layout.py holds the list):
- daemons that must outlive bench: dockerd (tiers/docker/engine.py), libvirtd and virtlogd
  (tiers/kvm/libvirtd.py), the image registries (tiers/docker/registry.py, limited.py);
- processes an Instance owns for its lifetime and stops itself: host-tier commands and
  servers (tiers/host.py, tiers/base.py's ProcessBackground), the tar stream into
  `docker import` (tiers/docker/image.py);
- the host tier's mount namespace holder, a `python -S` that lives as long as the tier
  (kernel/mountns.py);
- the ns runtime: the C init is posix_spawned with a signal mask and descriptors set just so
  (tiers/ns/runtime/native.py; its gcc build goes through here), the Python runtime forks
  (runtime/zygote.py, runtime/init.py) because a new PID namespace starts at a fork;
- programs that run inside an instance, not in bench (workloads/isolation/inside/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.core.errors import CommandError, CommandTimeout


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    preexec: Callable[[], None] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = True,
) -> Completed:
    """Run argv to completion. On timeout the process group is killed and CommandTimeout raised.

    `new_session=False` gives the child a process group of its own but keeps bench's session:
    with kernel.sched_autogroup_enabled a new session is a new scheduling group, with a fair
    share of its own against every other session (see `_group`)."""
    argv = [str(a) for a in argv]
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        start_new_session=preexec is None and new_session,
        process_group=0 if preexec is None and not new_session else None,
        preexec_fn=_group(preexec, new_session) if preexec else None,
        cwd=cwd,
        pass_fds=tuple(pass_fds),
    )
    try:
        out, err = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CommandTimeout(argv, timeout or 0.0, err) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    done = Completed(argv, proc.returncode, out, err, time.perf_counter() - start)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, err or out)
    return done


def _group(preexec: Callable[[], None] | None, new_session: bool) -> Callable[[], None]:
    """A preexec that puts the child in a process group of its own (the timeout kills it), in
    a new session or in bench's. Sessions matter to the scheduler: with autogroup (Debian's
    default) two programs in two sessions share the CPUs half and half whatever their thread
    counts, a shield the host tier, bench's no-isolation baseline, must not add."""
    def wrapped() -> None:
        if new_session:
            os.setsid()
        else:
            os.setpgid(0, 0)
        if preexec is not None:
            preexec()

    return wrapped


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    stdout_path: str | None = None,
    new_session: bool = True,
) -> subprocess.Popen[str]:
    """Start argv in the background in its own process group (stop it with `terminate`)."""
    out = open(stdout_path, "w") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
            preexec_fn=_group(preexec, new_session),
        )
    finally:
        if stdout_path and not isinstance(out, int):
            out.close()


def terminate(proc: subprocess.Popen[str], grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
