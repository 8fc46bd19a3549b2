"""A client of qemu-guest-agent through libvirt (`qemuAgentCommand`): no SSH, no keys.

Commands run with `guest-exec` and `capture-output`, polled with `guest-exec-status`; a command
runs as the leader of its own session (`setsid`), so a timeout kills the whole process group
with a second `guest-exec` of `kill`. Files come back with `guest-file-open`/`-read`.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

from bench.core.errors import BenchError, CommandError, CommandTimeout
from bench.core.lazy import lazy
from bench.core.procs import Completed
from bench.tiers.base import Background

if TYPE_CHECKING:
    import libvirt
    import libvirt_qemu
else:
    libvirt = lazy("libvirt")
    libvirt_qemu = lazy("libvirt_qemu")


GUEST_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
READ_CHUNK = 1 << 20
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1


class AgentError(BenchError):
    """The guest agent failed or is not there."""


class Agent:
    def __init__(self, domain: libvirt.virDomain) -> None:
        self.domain = domain

    def command(self, execute: str, arguments: dict[str, Any] | None = None,
                timeout: int = 30) -> Any:
        """Send one agent command and return its `return` value."""
        message: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.domain, json.dumps(message), timeout, 0)
        except libvirt.libvirtError as exc:
            raise AgentError(f"The guest agent of {self.domain.name()} failed {execute}: "
                             f"{exc.get_error_message()}",
                             "see the guest's console log; is qemu-guest-agent running?") from exc
        return json.loads(reply).get("return")

    def ping(self, timeout: int = 2) -> bool:
        try:
            self.command("guest-ping", timeout=timeout)
        except AgentError:
            return False
        return True

    # -- processes -----------------------------------------------------------------------------
    def start(self, argv: list[str], capture: bool = True) -> int:
        """Start argv in the guest and return its pid (it runs as given: wrap it in setsid to
        make it a process-group leader)."""
        reply = self.command("guest-exec", {"path": argv[0], "arg": argv[1:], "env": GUEST_ENV,
                                            "capture-output": capture})
        return int(reply["pid"])

    def status(self, pid: int) -> dict[str, Any]:
        reply: dict[str, Any] = self.command("guest-exec-status", {"pid": pid})
        return reply

    def wait(self, pid: int, argv: list[str], deadline: float, timeout: float) -> dict[str, Any]:
        """Poll until pid exits; return its status. Past `deadline` (time.monotonic()), kill
        its process group and raise CommandTimeout."""
        pause = POLL_FIRST_S
        while True:
            state = self.status(pid)
            if state.get("exited"):
                return state
            if time.monotonic() >= deadline:
                self.kill_group(pid)
                killed = self.reap(pid)
                raise CommandTimeout(argv, timeout, decode(killed, "err-data"))
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 1.5, POLL_MAX_S)

    def run(self, argv: list[str], timeout: float, session: bool = True) -> Completed:
        """Run argv to completion; CommandError on a non-zero exit, CommandTimeout past
        `timeout` (the process group is killed)."""
        full = ["setsid", *argv] if session else list(argv)
        began = time.monotonic()
        pid = self.start(full)
        state = self.wait(pid, argv, began + timeout, timeout)
        done = completed(argv, state, time.monotonic() - began)
        if done.returncode != 0:
            raise CommandError(argv, done.returncode, done.stderr or done.stdout)
        return done

    def kill_group(self, pid: int, signal: str = "KILL") -> None:
        """Signal the process group led by pid (a `setsid` child), then pid itself."""
        for target in (f"-{pid}", str(pid)):
            try:
                killer = self.start(["kill", f"-{signal}", "--", target], capture=True)
                self.reap(killer, 5.0)
            except AgentError:
                pass

    def reap(self, pid: int, within: float = 5.0) -> dict[str, Any]:
        """Wait briefly for an exited (or killed) process's status, so the agent forgets it."""
        end = time.monotonic() + within
        state: dict[str, Any] = {}
        while time.monotonic() < end:
            try:
                state = self.status(pid)
            except AgentError:
                return state
            if state.get("exited"):
                return state
            time.sleep(0.02)
        return state

    # -- files and facts -----------------------------------------------------------------------
    def read_file(self, path: str) -> bytes:
        handle = self.command("guest-file-open", {"path": path, "mode": "r"})
        chunks = []
        try:
            while True:
                part = self.command("guest-file-read", {"handle": handle, "count": READ_CHUNK})
                chunks.append(base64.b64decode(part.get("buf-b64", "")))
                if part.get("eof") or not part.get("count"):
                    break
        finally:
            self.command("guest-file-close", {"handle": handle})
        return b"".join(chunks)

    def ipv4(self, interface: str = "eth0") -> str | None:
        """The first IPv4 address of `interface`, from guest-network-get-interfaces."""
        for iface in self.command("guest-network-get-interfaces") or []:
            if iface.get("name") != interface:
                continue
            for addr in iface.get("ip-addresses", []):
                if addr.get("ip-address-type") == "ipv4":
                    return str(addr["ip-address"])
        return None


def decode(state: dict[str, Any], key: str) -> str:
    return base64.b64decode(state.get(key, "")).decode(errors="replace")


def completed(argv: list[str], state: dict[str, Any], seconds: float) -> Completed:
    code = state.get("exitcode")
    if code is None and state.get("signal") is not None:
        code = 128 + int(state["signal"])
    return Completed(list(argv), int(code if code is not None else -1),
                     decode(state, "out-data"), decode(state, "err-data"), seconds)


class GuestProcess(Background):
    """A command started in the background in the guest (a `setsid` group leader)."""

    def __init__(self, agent: Agent, argv: list[str], pid: int) -> None:
        self.agent = agent
        self.argv = argv
        self.pid = pid

    def stop(self) -> str:
        agent = self.agent
        state = agent.status(self.pid)
        if not state.get("exited"):
            agent.kill_group(self.pid, "TERM")
            end = time.monotonic() + 3
            while not state.get("exited") and time.monotonic() < end:
                time.sleep(0.05)
                state = agent.status(self.pid)
            if not state.get("exited"):
                agent.kill_group(self.pid, "KILL")
                state = agent.reap(self.pid)
        done = completed(self.argv, state, 0.0)
        return done.stdout + done.stderr
