"""bench's own image registry: Debian's `docker-registry` (distribution 2.8) on loopback.

`bench setup` installs the package and starts it (no systemd) bound to `BENCH_REGISTRY_ADDR`
(default 127.0.0.1:5310; Docker trusts a loopback registry without TLS), storing under
`BENCH_REGISTRY_DIR` (default /var/lib/bench/registry). bench pushes with the registry's HTTP
API (blobs, then the manifest), so the pushed digest is known exactly. A run's repositories
live under `bench/<run id>/`; removing them and collecting garbage leaves the storage as it was.
The blob descriptor cache is off: a cache would outlive a garbage collection.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.core import procs
from bench.core.errors import BenchError
from bench.core.oci import MANIFEST_TYPE, BuiltImage
from bench.core.settings import settings
from bench.tiers.base import Availability

BINARY = "/usr/bin/docker-registry"
ADDR_ENV = "BENCH_REGISTRY_ADDR"
LOG = Path("/var/log/bench-registry.log")
START_TIMEOUT_S = 20.0
FIX = "run `bench setup` (installs Debian's docker-registry and starts it on loopback)."


def address() -> str:
    return settings().registry_addr


def state_dir() -> Path:
    return settings().registry_dir


def storage_dir() -> Path:
    return state_dir() / "storage"


def repositories_dir() -> Path:
    return storage_dir() / "docker/registry/v2/repositories"


def blob_digests() -> set[str]:
    """Every blob in the storage (what garbage collection keeps or removes)."""
    root = storage_dir() / "docker/registry/v2/blobs/sha256"
    return {f"sha256:{p.parent.name}" for p in root.glob("*/*/data")}


def config(addr: str, storage: Path, readonly: bool = False,
           tls: tuple[Path, Path] | None = None) -> str:
    """The registry's configuration (JSON is YAML)."""
    http_conf: dict[str, Any] = {"addr": addr, "headers": {"X-Content-Type-Options": ["nosniff"]}}
    if tls is not None:
        http_conf["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    store: dict[str, Any] = {"filesystem": {"rootdirectory": str(storage)},
                             "delete": {"enabled": True}}
    if readonly:
        store["maintenance"] = {"readonly": {"enabled": True},
                                "uploadpurging": {"enabled": False}}
    return json.dumps({"version": 0.1, "log": {"level": "warn", "fields": {"service": "bench"}},
                       "storage": store, "http": http_conf}, indent=2)


class Client:
    """The registry's HTTP API v2 (push, look up, delete)."""

    def __init__(self, addr: str, tls: ssl.SSLContext | None = None, timeout: float = 60.0) -> None:
        self.addr, self.tls, self.timeout = addr, tls, timeout

    def _conn(self) -> http.client.HTTPConnection:
        host, _, port = self.addr.rpartition(":")
        if self.tls is not None:
            return http.client.HTTPSConnection(host, int(port), timeout=self.timeout,
                                               context=self.tls)
        return http.client.HTTPConnection(host, int(port), timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except OSError as exc:
            raise BenchError(f"The registry at {self.addr} did not answer {method} {path}: "
                             f"{exc}.", FIX) from exc
        finally:
            conn.close()

    def alive(self) -> bool:
        with contextlib.suppress(BenchError):
            return self.request("GET", "/v2/")[0] == 200
        return False

    def _check(self, status: int, body: bytes, want: tuple[int, ...], what: str) -> None:
        if status not in want:
            raise BenchError(f"The registry at {self.addr} refused {what} (HTTP {status}: "
                             f"{body[:300].decode(errors='replace')}).", FIX)

    def push_blob(self, repo: str, digest: str, path: Path) -> None:
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200:
            return
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        self._check(status, body, (202,), f"an upload to {repo}")
        location = urlsplit(headers["location"])
        target = f"{location.path}?{location.query}&digest={digest}" if location.query \
            else f"{location.path}?digest={digest}"
        with open(path, "rb") as data:
            status, _, body = self.request("PUT", target, data, {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size)})
        self._check(status, body, (201,), f"blob {digest}")

    def push(self, repo: str, tag: str, image: BuiltImage, blob_dir: Path) -> str:
        """Push every blob and the manifest; returns the digest the registry gives it."""
        for blob in image.layers:
            self.push_blob(repo, blob.digest, blob.path)
        config_path = blob_dir / image.config_digest.replace(":", "-")
        config_path.write_bytes(image.config)
        self.push_blob(repo, image.config_digest, config_path)
        status, headers, body = self.request("PUT", f"/v2/{repo}/manifests/{tag}", image.manifest,
                                             {"Content-Type": MANIFEST_TYPE})
        self._check(status, body, (201,), f"manifest {repo}:{tag}")
        return headers.get("docker-content-digest", "")


def pid_file() -> Path:
    return state_dir() / "registry.pid"


def running_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file().read_text())
        if Path(f"/proc/{pid}/exe").resolve() == Path(BINARY).resolve():
            return pid
    return None


def available() -> Availability:
    if not Path(BINARY).exists():
        return Availability(False, "Debian's docker-registry is not installed.", FIX)
    if not Client(address(), timeout=3).alive():
        return Availability(False, f"no registry answers at {address()}.", FIX)
    return Availability(True)


def ensure_running() -> list[str]:
    """Start the loopback registry unless it answers; say what was done."""
    if not Path(BINARY).exists():
        return []  # installed by `bench setup`'s packages; doctor says so
    client = Client(address(), timeout=3)
    if client.alive():
        return []
    state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    storage_dir().mkdir(exist_ok=True)
    conf = state_dir() / "config.yml"
    conf.write_text(config(address(), storage_dir()))
    with open(LOG, "ab") as log:
        proc = subprocess.Popen([BINARY, "serve", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    pid_file().write_text(str(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not client.alive():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"docker-registry did not come up on {address()} (see {LOG}).",
                             f"check {LOG}; another program may hold the port "
                             f"(set {ADDR_ENV}).")
        time.sleep(0.1)
    return [f"started docker-registry on {address()} (storage {storage_dir()}, log {LOG})"]


def stop() -> None:
    pid = running_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def remove_run(run_id: str | None) -> list[str]:
    """Drop a run's repositories (every bench run's if None) and collect the garbage."""
    base = repositories_dir() / "bench"
    targets = [base / run_id] if run_id else ([base] if base.exists() else [])
    removed = [f"registry repositories {t.name}" for t in targets if t.exists()]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    if removed:
        garbage_collect()
    return removed


def garbage_collect() -> None:
    repositories_dir().mkdir(parents=True, exist_ok=True)  # gc fails on a missing one
    conf = state_dir() / "gc.yml"
    conf.write_text(config(address(), storage_dir()))
    procs.run([BINARY, "garbage-collect", "--delete-untagged", str(conf)], timeout=300)
