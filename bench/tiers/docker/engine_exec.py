"""The engine's own exec: commands and background servers through `docker exec` (what the
docker tier uses where its agent cannot serve, and for servers)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.core.errors import BenchError, CommandError, CommandTimeout
from bench.core.lazy import lazy
from bench.core.procs import Completed
from bench.tiers.base import Background

if TYPE_CHECKING:
    import docker
    import requests
    from docker.models.containers import Container

    from bench.tiers.docker.instance import DockerInstance
else:
    docker = lazy("docker")
    requests = lazy("requests")

# A background server: record its pid, then become it with its output in a log. The script is a
# constant; the server's argv arrives as positional parameters, never inside the script text.
SPAWN_SCRIPT = 'echo $$ > "$1"; log=$2; shift 2; exec "$@" > "$log" 2>&1'
TIMEOUT_STATUS = (124, 137)  # coreutils `timeout`: timed out / killed after the grace period


def _demuxed(output: Any) -> tuple[str, str]:
    """(stdout, stderr) of an `exec_run(..., demux=True)`, as text."""
    out, err = output if isinstance(output, tuple) else (output, None)
    return ((out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))


def run(engine: docker.DockerClient, container: Container, argv: list[str],
        timeout: float) -> Completed:
    """Instance.exec through `docker exec`, the command under coreutils `timeout`."""
    wrapped = ["timeout", "--kill-after=2", f"{max(timeout, 0.1):.3f}", *argv]
    started = time.perf_counter()
    api = engine.api
    saved = api.timeout
    api.timeout = int(timeout) + 30  # the HTTP read waits for the command: give it room
    try:
        done = container.exec_run(wrapped, demux=True)
    except (requests.exceptions.RequestException, docker.errors.APIError) as exc:
        raise CommandError(argv, -1, f"docker exec failed: {exc}") from exc
    finally:
        api.timeout = saved
    seconds = time.perf_counter() - started
    out, err = _demuxed(done.output)
    status = int(done.exit_code if done.exit_code is not None else -1)
    if status in TIMEOUT_STATUS and seconds >= timeout * 0.98:
        raise CommandTimeout(argv, timeout, err)
    if status != 0:
        raise CommandError(argv, status, err or out)
    return Completed(list(argv), status, out, err, seconds)


def spawn(instance: DockerInstance, argv: list[str], n: int) -> Background:
    """A server started by a detached exec (its pid and log under /tmp inside)."""
    pidfile, logfile = f"/tmp/bench-bg-{n}.pid", f"/tmp/bench-bg-{n}.log"
    api = instance.engine.api
    exec_id = api.exec_create(
        instance.container.id, ["sh", "-c", SPAWN_SCRIPT, "sh", pidfile, logfile, *argv])["Id"]
    api.exec_start(exec_id, detach=True)
    return DockerBackground(instance, exec_id, pidfile, logfile)


class DockerBackground(Background):
    """A server started by a detached exec; stopped by its pid, inside the container."""

    def __init__(self, instance: DockerInstance, exec_id: str, pidfile: str, logfile: str) -> None:
        self.instance = instance
        self.exec_id = exec_id
        self.pidfile = pidfile
        self.logfile = logfile
        self.stopped = False

    def _running(self) -> bool:
        return bool(self.instance.engine.api.exec_inspect(self.exec_id).get("Running"))

    def stop(self) -> str:
        if self.stopped:
            return ""
        self.stopped = True
        container = self.instance.container
        deadline = time.monotonic() + 5
        pid = ""
        while not pid and self._running() and time.monotonic() < deadline:
            done = container.exec_run(["cat", self.pidfile], demux=True)
            pid = _demuxed(done.output)[0].strip() if done.exit_code == 0 else ""
            if not pid:
                time.sleep(0.05)
        if pid:
            for signal_name, grace in (("TERM", 3.0), ("KILL", 3.0)):
                container.exec_run(["kill", f"-{signal_name}", pid])
                until = time.monotonic() + grace
                while self._running() and time.monotonic() < until:
                    time.sleep(0.05)
                if not self._running():
                    break
        try:
            text = self.instance.read_file(self.logfile).decode(errors="replace")
        except BenchError:
            text = ""
        container.exec_run(["rm", "-f", self.pidfile, self.logfile])
        return text
