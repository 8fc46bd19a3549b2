"""A container's PID 1: it makes the container around itself, starts the command, and reaps.

The zygote forks it with `CLONE_NEWPID` in force, so it is PID 1 of a new PID namespace. It
reports each phase to bench on a pipe, one `name monotonic-seconds` line at a time:

    clone             first instruction after the fork
    net               new network namespace made (bench now wires a veth pair into it while
                      this goes on, then says `go`)
    cgroup_joined     control group made, limited and joined
    namespaces_ready  mount, UTS, IPC and cgroup namespaces made, hostname set
    root_mounted      overlay root, /proc, /sys, /dev in place, pivot_root done
    ready             ready; the command starts once bench's `go` is there too
    exit T STATUS     (command instances) the command ended with STATUS

Before `ready` it cuts its capabilities to the kept set and sets no_new_privs; on `go` it
starts the command (which inherits both) with posix_spawn, and stays as the namespace's init:
it reaps every child and exits with the command's status. A long-lived instance has no
command: its init only reaps, and `exec` enters it with setns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from bench.kernel import linuxns, seccomp
from bench.tiers.ns.runtime.rootfs import RootPlan, make_root

EXIT_SETUP_FAILED = 125
FD_NAMES = ("report", "go", "stdout", "stderr")  # the descriptors a start passes, in order


@dataclass(frozen=True)
class InitPlan:
    """Everything PID 1 needs, as plain data (it crosses to the zygote as JSON)."""

    flags: int  # namespaces to unshare (mnt, uts, ipc, cgroup, and net in bridge mode)
    cgroup_join: list[str]  # the file to write "0" to, in each hierarchy (Cgroup.join_files)
    cgroup_setup: list[tuple[str, str | None]]  # mkdir (value None) or write steps
    root: RootPlan
    hostname: str
    command: list[str] | None
    env: dict[str, str]
    keep_caps: list[int]
    seccomp: str | None = None  # a BPF program's file (bench.kernel.seccomp), loaded at ready
    fds: dict[str, int] = field(default_factory=dict)  # FD_NAMES -> descriptor, set on arrival

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("fds")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], fds: dict[str, int]) -> InitPlan:
        return cls(flags=data["flags"], cgroup_join=data["cgroup_join"],
                   cgroup_setup=[(p, v) for p, v in data["cgroup_setup"]],
                   root=RootPlan(**data["root"]), hostname=data["hostname"],
                   command=data["command"], env=data["env"], keep_caps=data["keep_caps"],
                   seccomp=data.get("seccomp"), fds=fds)


def _report(fd: int, name: str, detail: str = "") -> None:
    os.write(fd, f"{name} {detail or repr(time.monotonic())}\n".encode())


def _keep_only(fds: set[int]) -> None:
    """Close every inherited descriptor but `fds`."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in fds:
            with contextlib.suppress(OSError):
                os.close(int(name))


def _join_cgroup(plan: InitPlan) -> None:
    for path, value in plan.cgroup_setup:
        if value is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            continue
        try:
            with open(path, "w") as fh:
                fh.write(value)
        except OSError as exc:
            raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from None
    for path in plan.cgroup_join:
        with open(path, "w") as fh:
            fh.write("0")


def _which(command: str, env: dict[str, str]) -> str:
    if "/" in command:
        return command
    for directory in env.get("PATH", os.defpath).split(":"):
        path = f"{directory}/{command}"
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(2, f"{command}: not found in PATH", command)


def _spawn_command(plan: InitPlan) -> int:
    """Start the command with posix_spawn (vfork + exec: no Python runs in the child). It
    inherits our capability sets and no_new_privs, already cut down, and an empty signal mask."""
    assert plan.command is not None
    actions = [(os.POSIX_SPAWN_DUP2, plan.fds[name], fd)
               for name, fd in (("stdout", 1), ("stderr", 2)) if name in plan.fds]
    try:
        return os.posix_spawn(_which(plan.command[0], plan.env), plan.command, plan.env,
                              file_actions=actions, setsigmask=set())
    except OSError as exc:
        raise OSError(exc.errno, f"cannot run {plan.command[0]}: {exc.strerror}") from None


def _reap_forever(command_pid: int | None, report_fd: int) -> NoReturn:
    """The init loop: reap every child; when the command ends, say so and exit with its status."""
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == command_pid:
                code = os.waitstatus_to_exitcode(status)
                code = code if code >= 0 else 128 - code
                with contextlib.suppress(OSError):
                    _report(report_fd, "exit", f"{time.monotonic()!r} {code}")
                os._exit(code)
        signal.sigwait({signal.SIGCHLD})


def run_init(plan: InitPlan) -> NoReturn:
    """PID 1 of the container. Never returns; every failure is reported and ends it."""
    report = plan.fds["report"]
    try:
        _report(report, "clone")
        program = _read(plan.seccomp) if plan.seccomp else None  # a host path: before the root
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        linuxns.die_with_parent(signal.SIGKILL)
        os.setsid()
        _keep_only(set(plan.fds.values()))
        for fd in plan.fds.values():
            os.set_inheritable(fd, False)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        if plan.flags & linuxns.CLONE_NEWNET:
            linuxns.unshare(linuxns.CLONE_NEWNET)
            _report(report, "net")  # bench wires the veth in while we go on
        _join_cgroup(plan)
        _report(report, "cgroup_joined")
        linuxns.unshare(plan.flags & ~linuxns.CLONE_NEWNET)
        socket.sethostname(plan.hostname)
        _report(report, "namespaces_ready")
        make_root(plan.root)
        _report(report, "root_mounted")
        # PID 1 needs no privilege from here on: what it starts inherits the cut-down sets
        # (the zygote cut the bounding set once, for every container it forks)
        linuxns.set_capabilities(set(plan.keep_caps))
        linuxns.no_new_privs()
        if program:
            seccomp.load(program)
        _report(report, "ready")
        if os.read(plan.fds["go"], 16) != b"go":
            os._exit(EXIT_SETUP_FAILED)
        os.close(plan.fds["go"])
        command_pid = _spawn_command(plan) if plan.command is not None else None
        for name in ("stdout", "stderr"):
            if name in plan.fds:
                os.close(plan.fds[name])
        _reap_forever(command_pid, report)
    except BaseException as exc:  # report it, whatever it is: bench is waiting for a line
        with contextlib.suppress(OSError):
            _report(report, "error", " ".join(f"{type(exc).__name__}: {exc}".split()))
        os._exit(EXIT_SETUP_FAILED)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def enter(ns_fds: dict[str, int], cgroup_join: list[str], keep_caps: set[int],
          seccomp_program: bytes | None = None) -> Callable[[], None]:
    """A subprocess preexec that runs the command inside a running container.

    In the forked child: join the container's cgroup, setns into each of its namespaces, then
    fork once more, because only children enter the PID namespace. The middle process drops
    its descriptors (so Popen returns once the inner exec happened) and passes on the inner
    process's exit status; the inner one drops its capabilities and returns to be exec'd.
    """

    def preexec() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        for path in cgroup_join:
            with open(path, "w") as fh:
                fh.write("0")
        for name, flag in linuxns.NAMESPACE_FILES.items():
            if name in ns_fds:
                linuxns.setns(ns_fds[name], flag)
        pid = os.fork()
        if pid:
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        os.chdir("/")
        linuxns.drop_capabilities(keep_caps)
        linuxns.no_new_privs()
        if seccomp_program:
            seccomp.load(seccomp_program)

    return preexec
