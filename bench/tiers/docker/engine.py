"""The Docker engine the docker tier talks to: where it is, whether it answers (and if not, why),
starting a local dockerd without systemd, and converting the engine's clock to ours.

The engine is `BENCH_DOCKER_URL` when set (e.g. tcp://testhost:2375 or unix:///path/docker.sock),
else whatever `docker.from_env()` finds (DOCKER_HOST, else /var/run/docker.sock).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from calendar import timegm
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench.core.errors import TierUnavailable
from bench.core.lazy import lazy
from bench.core.settings import settings
from bench.tiers.base import Availability

if TYPE_CHECKING:
    import docker
else:
    docker = lazy("docker")


URL_ENV = "BENCH_DOCKER_URL"
DEFAULT_SOCKET = "/var/run/docker.sock"
DAEMON_LOG = Path("/var/log/bench-dockerd.log")
START_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 5.0
SUPPORT_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2",
                     "docker-proxy")

SETUP_FIX = ("run `bench setup` (installs docker.io and starts dockerd in the background; "
             f"its log is {DAEMON_LOG}).")


def engine_url() -> str | None:
    """The engine's address as configured, or None for docker's own default."""
    return settings().docker_url or os.environ.get("DOCKER_HOST") or None


def is_remote() -> bool:
    url = engine_url()
    return url is not None and not url.startswith("unix://")


def socket_path() -> str | None:
    """The unix socket of a local engine (None for a remote one)."""
    url = engine_url()
    if url is None:
        return DEFAULT_SOCKET
    if url.startswith("unix://"):
        return url[len("unix://"):]
    return None


def client(timeout: float = 120.0) -> docker.DockerClient:
    """A client of the configured engine; raises TierUnavailable (with the reason) if it is down."""
    availability = diagnose()
    if not availability.ok:
        raise TierUnavailable(availability.reason, availability.fix)
    return connect(timeout)


def connect(timeout: float) -> docker.DockerClient:
    url = settings().docker_url
    if url:
        return docker.DockerClient(base_url=url, timeout=int(timeout))
    return docker.from_env(timeout=int(timeout))


def _daemon_pids() -> list[int]:
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["name"] == "dockerd" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def _log_tail(lines: int = 3) -> str:
    try:
        text = DAEMON_LOG.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[-200:] for line in text[-lines:])


def _probe_socket(path: str) -> Availability | None:
    """Connect to the unix socket by hand: tells a missing socket, a dead daemon and a permission
    problem apart (the SDK reports all three as one 'connection aborted')."""
    if not os.path.exists(path):
        if shutil.which("dockerd") is None and shutil.which("docker") is None:
            return Availability(False, "Docker is not installed (no dockerd on PATH).", SETUP_FIX)
        pids = _daemon_pids()
        if path != DEFAULT_SOCKET:
            running = f"; a dockerd is running here (pid {pids[0]}) but listens elsewhere" \
                if pids else ""
            return Availability(
                False, f"No Docker socket at {path}, the address given by {URL_ENV} or "
                f"DOCKER_HOST{running}.",
                f"point {URL_ENV} at the engine's socket, or unset it and run `bench setup` "
                "to use (and start) the local dockerd.")
        if pids:
            return Availability(
                False, f"dockerd is running (pid {pids[0]}) but there is no Docker socket at "
                f"{path}: it is still starting, or listens elsewhere.",
                f"wait a few seconds; if it persists, see {DAEMON_LOG} or set {URL_ENV} to "
                "the engine's address.")
        return Availability(False, f"The Docker daemon is not running (no Docker socket at "
                            f"{path}).", SETUP_FIX)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PING_TIMEOUT_S)
    try:
        sock.connect(path)
    except PermissionError:
        return Availability(
            False, f"Permission denied on the Docker socket {path} (uid {os.geteuid()}).",
            "run bench as root, or add this user to the `docker` group and log in again.")
    except ConnectionRefusedError:
        tail = _log_tail()
        return Availability(
            False, f"Nothing answers on the Docker socket {path}: dockerd died and left it "
            "behind." + (f" Its log ends: {tail}" if tail else ""), SETUP_FIX)
    except OSError as exc:
        return Availability(False, f"Cannot connect to the Docker socket {path}: {exc}.",
                            SETUP_FIX)
    finally:
        sock.close()
    return None


def diagnose() -> Availability:
    """Does the engine answer? If not, why (socket missing, daemon down, permission) and the fix."""
    path = socket_path()
    if path is not None:
        found = _probe_socket(path)
        if found is not None:
            return found
    where = engine_url() or f"unix://{DEFAULT_SOCKET}"
    try:
        with contextlib.closing(connect(PING_TIMEOUT_S)) as probe:
            probe.ping()
    except docker.errors.DockerException as exc:
        if path is None:
            return Availability(
                False, f"The Docker engine at {where} does not answer: {exc}.",
                f"start the engine there (or check the address), or unset {URL_ENV} to use "
                "the local one.")
        return Availability(False, f"The Docker engine at {where} does not answer the API: "
                            f"{exc}.", SETUP_FIX)
    return Availability(True, f"engine at {where}")


def ensure_running(log_path: Path = DAEMON_LOG) -> list[str]:
    """Start a local dockerd in the background when the engine does not answer (no systemd here).

    dockerd runs detached (own session, reparented to init) with its log in `log_path`; it
    starts its own containerd. Returns what was done; raises TierUnavailable if it cannot start.
    """
    state = diagnose()
    if state.ok:
        return [f"Docker engine already running ({state.reason})"]
    if socket_path() is None or engine_url() not in (None, f"unix://{DEFAULT_SOCKET}"):
        raise TierUnavailable(f"Cannot start the configured engine from here: {state.reason}",
                              state.fix)
    if shutil.which("dockerd") is None:
        raise TierUnavailable("dockerd is not installed.", "apt-get install docker.io")
    if _daemon_pids():
        _wait_for_engine(START_TIMEOUT_S)
        return ["Docker engine was starting; it answers now"]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(DEFAULT_SOCKET)  # a socket left by a daemon that died
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # setsid --fork: dockerd leaves our process group and session, so it outlives `bench
        # setup` and never holds the caller's terminal or pipes open.
        subprocess.run(["setsid", "--fork", "dockerd"], stdin=subprocess.DEVNULL, stdout=log,
                       stderr=subprocess.STDOUT, check=True, timeout=10, close_fds=True)
    started = time.monotonic()
    _wait_for_engine(START_TIMEOUT_S)
    return [f"started dockerd in the background in {time.monotonic() - started:.1f} s "
            f"(log: {log_path})"]


def _wait_for_engine(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = diagnose()
    while not state.ok:
        if time.monotonic() > deadline:
            raise TierUnavailable(f"dockerd did not answer within {timeout:.0f} s: {state.reason}"
                                  + (f" Its log ends: {_log_tail()}" if _log_tail() else ""),
                                  f"see {DAEMON_LOG}; fix what it reports, then `bench setup`.")
        time.sleep(0.2)
        state = diagnose()


# -- clocks -------------------------------------------------------------------------------------

_STAMP = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_engine_time(text: str) -> float | None:
    """An engine time stamp (RFC 3339 with nanoseconds) as seconds since the epoch; None if unset
    (the engine's zero time 0001-01-01T00:00:00Z)."""
    match = _STAMP.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time stamp: {text!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    if int(year) < 1970:
        return None
    seconds = timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def realtime_offset() -> float:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, read as tightly as we can (best of 5 brackets)."""
    best: tuple[int, float] | None = None
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        width = after - before
        offset = (wall - (before + after) / 2) / 1e9
        if best is None or width < best[0]:
            best = (width, offset)
    assert best is not None
    return best[1]


def to_monotonic(engine_time: str, offset: float | None = None) -> float | None:
    """An engine wall-clock stamp on our CLOCK_MONOTONIC (meaningful for a local engine only)."""
    wall = parse_engine_time(engine_time)
    if wall is None:
        return None
    return wall - (realtime_offset() if offset is None else offset)


# -- the engine's own memory --------------------------------------------------------------------

def support_pids() -> list[int]:
    """The engine's processes on this host: dockerd, containerd, one containerd-shim per
    container, docker-proxy (their memory is the per-container cost density measures)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if any(name == n or name.startswith("containerd-shim") for n in SUPPORT_PROCESSES):
            found.append(proc.pid)
    return found


def engine_facts(engine: docker.DockerClient) -> dict[str, Any]:
    """What the engine says about itself; a fact it does not report is "unknown"."""
    info = engine.info()
    version = engine.version()

    def fact(source: dict[str, Any], key: str) -> str:
        value = source.get(key)
        return str(value) if value not in (None, "") else "unknown"

    return {
        "engine_url": engine_url() or f"unix://{DEFAULT_SOCKET}",
        "server_version": fact(version, "Version"),
        "api_version": fact(version, "ApiVersion"),
        "storage_driver": fact(info, "Driver"),
        "cgroup_driver": fact(info, "CgroupDriver"),
        "cgroup_version": fact(info, "CgroupVersion"),
        "kernel": fact(info, "KernelVersion"),
        "runtime": fact(info, "DefaultRuntime"),
        "docker_root": info.get("DockerRootDir"),
        "engine_clock": "remote (phases from engine stamps are not on our clock)"
        if is_remote() else "local (engine stamps converted to CLOCK_MONOTONIC)",
    }
