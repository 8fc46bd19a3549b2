"""The docker tier's exec without the engine's exec: the host side of bench-agent.

`docker exec` costs ~34 ms a command here (the API call, containerd, a new runc that joins the
container), against ~2 ms to enter the same namespaces. A long-lived container's own process is
bench-agent instead (bench/native/agent.c, built on the host and bound read-only into the
container), started by the engine under docker-init: each command is forked from it, so it
inherits what the engine gave the container's process (namespaces, cgroup, capabilities,
seccomp filter, no_new_privs, LSM label, user, environment, working directory), as an exec
would get them. The command's argv goes over a unix socket in a directory of the run's work
directory bound into the container, its stdout and stderr are pipes of ours passed with
SCM_RIGHTS, and its status comes back on the socket.

The socket's directory is writable from inside, so whatever is at the socket's name was put
there by the container: it is opened without following links and must be a socket before
bench connects to it (through /proc/self/fd, the inode it checked).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

from bench.core import safefs
from bench.core.errors import BenchError, CommandError, CommandTimeout
from bench.core.procs import Completed

EXE = "/run/bench-agent.exe"  # the program, as the container sees it
SOCKET_DIR = "/run/bench-agent"
SOCKET_NAME = "agent.sock"
COMMAND = [EXE, f"{SOCKET_DIR}/{SOCKET_NAME}"]
BASE_NAME = "docker-agent"  # under the tier's work directory: one directory per container
READY_TIMEOUT_S = 10.0
KILL_GRACE_S = 5.0
EXEC_PATH = "bench agent in the container (fork from the container's process)"


def running(pid: int) -> bool:
    """Is host process `pid` (a container's init) there and not a zombie?"""
    import psutil

    try:
        return pid > 0 and psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE,
                                                                psutil.STATUS_DEAD)
    except psutil.Error:
        return False


class AgentLost(BenchError):
    """The agent did not answer (not started yet, or the container is gone)."""


def program() -> tuple[Path | None, str]:
    """The agent built for this host (static), or None and why not."""
    from bench.core import cprogram

    return cprogram.build("bench-agent", "agent.c")


def base_dir(workdir: Path, run_id: str) -> Path:
    """The run's directory of agent sockets, one subdirectory per container (an absolute
    path: the engine binds it)."""
    base = safefs.secure_dir(workdir.absolute() / BASE_NAME)
    safefs.mark(base, run_id)
    return base


def remove_base(workdir: Path) -> bool:
    """Remove the agents' directories under a tier work directory (bench's marker only)."""
    return safefs.remove_marked(workdir / BASE_NAME)


class Agent:
    """One container's agent, seen from the host."""

    def __init__(self, directory: Path, exe: Path) -> None:
        self.directory = directory
        self.exe = exe

    @classmethod
    def make(cls, base: Path, name: str, exe: Path) -> Agent:
        directory = base / name
        shutil.rmtree(directory, ignore_errors=True)  # a name reused: a dead agent's socket
        return cls(safefs.secure_dir(directory), exe)

    def volumes(self) -> dict[str, dict[str, str]]:
        """The container's bind mounts: the socket's directory and the program."""
        return {str(self.directory): {"bind": SOCKET_DIR, "mode": "rw"},
                str(self.exe): {"bind": EXE, "mode": "ro"}}

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- connecting -------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        try:
            fd = os.open(self.directory / SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise AgentLost(f"no agent socket in {self.directory}: {exc.strerror}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise BenchError(f"{self.directory / SOCKET_NAME} is not a socket: the "
                                 "container put something else there.",
                                 "see what the container runs; bench will not connect to it.")
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError as exc:
            sock.close()
            raise AgentLost(f"the agent in {self.directory} does not answer: "
                            f"{exc.strerror}") from None
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(fd)
        return sock

    def ping(self) -> None:
        with self._connect() as sock:
            sock.settimeout(2.0)
            sock.sendall(struct.pack("=I", 0))
            try:
                said = sock.recv(16)
            except OSError as exc:
                raise AgentLost(f"the agent did not answer a ping: {exc}") from None
            if said != b"ready\n":
                raise AgentLost(f"the agent answered {said!r} to a ping")

    def wait_ready(self, alive: Callable[[], bool]) -> str:
        """Wait until the agent answers; '' then, else why it did not."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pause = 0.0005
        while True:
            try:
                self.ping()
                return ""
            except AgentLost as exc:
                why = str(exc)
            if not alive():
                return f"the container's process ended ({why})"
            if time.monotonic() > deadline:
                return f"no answer within {READY_TIMEOUT_S:g} s ({why})"
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    # -- running a command ------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float) -> Completed:
        """Run argv in the container and wait for it, as Instance.exec does: CommandTimeout
        (the command's process group killed) past `timeout`, CommandError on a non-zero
        status (128 + N for a signal N, as the engine reports it)."""
        if not argv or any("\0" in a for a in argv):
            raise CommandError(argv, -1, "an empty argv or a NUL byte in an argument")
        payload = b"".join(os.fsencode(a) + b"\0" for a in argv)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        try:
            sock = self._connect()
        except AgentLost as exc:
            raise CommandError(argv, -1, f"bench agent: {exc}") from None
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        reply = b""
        with contextlib.ExitStack() as stack, selectors.DefaultSelector() as sel:
            stack.callback(sock.close)
            for fd in (out_r, err_r):
                stack.callback(os.close, fd)
            try:
                header = struct.pack("=I", len(payload))
                socket.send_fds(sock, [header], [out_w, err_w])
                sock.sendall(payload)
            except OSError as exc:
                raise CommandError(argv, -1, f"bench agent: sending the command: {exc}") from None
            finally:
                os.close(out_w)
                os.close(err_w)
            for fd in (out_r, err_r, sock.fileno()):
                sel.register(fd, selectors.EVENT_READ)
            timed_out = False
            while len(sel.get_map()) > 1 or b"\n" not in reply:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(left):
                    fd = int(key.fd)
                    data = os.read(fd, 1 << 16)
                    if fd in chunks:
                        chunks[fd].append(data)
                    else:
                        reply += data
                    if not data:
                        sel.unregister(fd)
                        if fd == sock.fileno() and b"\n" not in reply:
                            raise CommandError(argv, -1, "bench agent: the agent went away "
                                               "before the command's status (container gone?)")
            if timed_out:
                with contextlib.suppress(OSError):
                    sock.sendall(b"k")  # the agent kills the command's process group
                    sock.settimeout(KILL_GRACE_S)
                    while b"\n" not in reply and (data := sock.recv(64)):
                        reply += data
                err = b"".join(chunks[err_r]).decode(errors="replace")
                raise CommandTimeout(argv, timeout, err)
        seconds = time.perf_counter() - started
        out = b"".join(chunks[out_r]).decode(errors="replace")
        err = b"".join(chunks[err_r]).decode(errors="replace")
        status = parse_status(reply.decode(errors="replace"))
        if status != 0:
            raise CommandError(argv, status, err or out)
        return Completed(list(argv), status, out, err, seconds)


def parse_status(line: str) -> int:
    """The agent's status line as the engine would report it (128 + N for signal N)."""
    kind, _, value = line.strip().partition(" ")
    if kind in ("exit", "signal") and value.isdigit():
        return int(value) + (128 if kind == "signal" else 0)
    raise BenchError(f"The bench agent answered {line!r} where a status was due.",
                     "a bug in bench/native/agent.c or its host side: report it.")
