"""bench-agent, the docker tier's exec path, run here as a plain host process: its protocol
(argv passed literally, output, statuses, timeouts) and the host side's refusal of what a
container could plant at the socket's name. In a real container: tests/test_tier_docker.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core.errors import BenchError, CommandError, CommandTimeout
from bench.tiers.docker import agent as agent_mod


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[agent_mod.Agent]:
    exe, how = agent_mod.program()  # gcc is here (bootstrap installs it)
    assert exe is not None, how
    base = agent_mod.base_dir(tmp_path / "work", "test-run")
    served = agent_mod.Agent.make(base, "box", exe)
    proc = subprocess.Popen([str(exe), str(served.directory / agent_mod.SOCKET_NAME)])
    try:
        assert served.wait_ready(lambda: proc.poll() is None) == ""
        yield served
    finally:
        proc.kill()
        proc.wait()
        assert agent_mod.remove_base(tmp_path / "work")
        assert not served.directory.exists()


def test_argv_is_passed_as_it_is_and_statuses_come_back(agent: agent_mod.Agent) -> None:
    odd = ["a b", "$(touch /nonexistent)", "'\"", "*", ""]
    done = agent.run(["printf", "%s|", *odd], timeout=10)
    assert done.stdout == "|".join(odd) + "|" and done.returncode == 0
    big = agent.run(["head", "-c", str(4 << 20), "/dev/zero"], timeout=30)
    assert len(big.stdout) == 4 << 20
    with pytest.raises(CommandError) as failed:
        agent.run(["sh", "-c", "echo out; echo why >&2; exit 3"], timeout=10)
    assert failed.value.returncode == 3 and failed.value.stderr == "why\n"
    with pytest.raises(CommandError) as killed:
        agent.run(["sh", "-c", "kill -9 $$"], timeout=10)
    assert killed.value.returncode == 137  # 128 + SIGKILL, as the engine reports it
    with pytest.raises(CommandError) as missing:
        agent.run(["no-such-program"], timeout=10)
    assert missing.value.returncode == 127 and "no-such-program" in missing.value.stderr
    ids = agent.run(["sh", "-c", "echo $$ $(ps -o sid= -p $$) $(ps -o pgid= -p $$)"], timeout=10)
    pid, sid, pgid = ids.stdout.split()
    assert pid == sid == pgid  # a session of its own, as runc gives an exec


def test_a_timeout_kills_the_commands_process_group(agent: agent_mod.Agent) -> None:
    began = time.monotonic()
    with pytest.raises(CommandTimeout):
        agent.run(["sh", "-c", "sleep 4321 & sleep 4322"], timeout=0.5)
    assert time.monotonic() - began < 5
    left = subprocess.run(["pgrep", "-f", "^sleep 432[12]$"], capture_output=True, text=True)
    assert left.stdout == ""


def test_bench_going_away_kills_the_command(agent: agent_mod.Agent, tmp_path: Path) -> None:
    """Ctrl-C in bench: the connection closes before the status, the agent kills the group."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    marker = tmp_path / "started"
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.run(["sh", "-c", f"touch {marker}; exec sleep 4323"], timeout=30)
    finally:
        signal.signal(signal.SIGALRM, old)
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", "^sleep 4323$"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the command outlived bench's connection"
        time.sleep(0.05)
    assert marker.exists()


def test_what_is_planted_at_the_socket_is_never_connected_to(agent: agent_mod.Agent,
                                                             tmp_path: Path) -> None:
    other = socket.socket(socket.AF_UNIX)  # a socket of the host the container points at
    other.bind(str(tmp_path / "other.sock"))
    other.listen()
    path = agent.directory / agent_mod.SOCKET_NAME
    path.unlink()
    os.symlink(tmp_path / "other.sock", path)
    with pytest.raises(BenchError, match="not a socket"):
        agent.run(["true"], timeout=5)
    other.setblocking(False)
    with pytest.raises(BlockingIOError):
        other.accept()
    path.unlink()
    path.write_text("")
    with pytest.raises(BenchError, match="not a socket"):
        agent.ping()
    other.close()
