"""The zygote: a small `python -S` process that forks containers' PID 1s for bench.

Forking bench itself (100+ MB of interpreter, numpy, pydantic...) costs tens of milliseconds
per start on hosts where page-table copies are expensive (nested or para-virtualised), and
each container's init would carry a copy of all of it. The zygote imports only what a
container needs, so a fork of it is small and quick. bench talks to it over a SOCK_SEQPACKET
socket: a request is an `InitPlan` as JSON with its descriptors attached (SCM_RIGHTS); the
answer is `{"pid": N}` (the init's PID as the host sees it) or `{"error": "..."}`.

The zygote dies with bench (PDEATHSIG), and every init dies with the zygote, and every
process of a container dies with its init: nothing outlives a killed `bench run` but the
files, cgroups and links that `bench cleanup` removes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.kernel import linuxns
from bench.tiers.ns.runtime.init import FD_NAMES, InitPlan, run_init

MAX_MESSAGE = 1 << 20
START_TIMEOUT = 30.0  # seconds bench waits for the zygote's answer
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from bench.tiers.ns.runtime.zygote import serve; serve(int(sys.argv[2]), sys.argv[3])")


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start(request: dict[str, Any], fds: list[int], host_pidns: int) -> dict[str, Any]:
    names = [n for n in FD_NAMES if n in request["fd_names"]]
    plan = InitPlan.from_dict(request["plan"], dict(zip(names, fds, strict=True)))
    linuxns.unshare(linuxns.CLONE_NEWPID)  # our next child is PID 1 of a new PID namespace
    try:
        pid = os.fork()
        if pid == 0:
            run_init(plan)
    finally:
        if os.getpid() != 1:
            linuxns.setns(host_pidns, linuxns.CLONE_NEWPID)
    return {"pid": pid}


def serve(fd: int, keep_caps: str) -> None:
    """The zygote's loop (runs in the zygote process). Its bounding set is cut to `keep_caps`
    (comma-separated numbers) first: every container's processes inherit that."""
    linuxns.die_with_parent(signal.SIGKILL)
    linuxns.drop_bounding({int(c) for c in keep_caps.split(",") if c})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # bench decides when containers stop
    sock = socket.socket(fileno=fd)
    if os.getppid() == 1:  # bench is already gone
        return
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        _reap()
        ready, _, _ = select.select([sock], [], [], 0.5)
        if not ready:
            continue
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
        if not data:
            return  # bench closed its end
        request: dict[str, Any] = {}
        try:
            request = json.loads(data)
            answer = _start(request, fds, host_pidns)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd_ in fds:
                os.close(fd_)
        answer["id"] = request.get("id")
        sock.send(json.dumps(answer).encode())


class Zygote:
    """bench's handle on its zygote process."""

    def __init__(self, keep_caps: set[int]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = str(Path(__file__).resolve().parents[4])
        caps = ",".join(str(c) for c in sorted(keep_caps))
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", BOOT, package_parent, str(theirs.fileno()), caps],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        self.sock = ours
        self.requests = 0

    def start(self, plan: InitPlan, fds: dict[str, int]) -> int:
        """Fork a container's init from `plan`; return its host PID."""
        names = [n for n in FD_NAMES if n in fds]
        self.requests += 1
        request = {"id": self.requests, "plan": plan.to_dict(), "fd_names": names}
        socket.send_fds(self.sock, [json.dumps(request).encode()], [fds[n] for n in names])
        while True:  # an answer to an earlier, abandoned request is dropped
            answer = json.loads(self.sock.recv(MAX_MESSAGE) or b'{"error": "the zygote died"}')
            if answer.get("id", self.requests) == self.requests:
                break
        if "error" in answer:
            raise OSError(f"forking the container's init failed: {answer['error']}")
        return int(answer["pid"])

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
