"""A second registry behind a rate-limited link: the same storage, served read-only from a
network namespace of bench's own, over TLS from a CA bench makes for the run.

    engine (host netns) --veth, 10.214.x.y/30--> [bench-reg-<tag>: docker-registry :5443]
                                                   tbf on the namespace's end (its egress)

Only the namespace's end of the veth is shaped (what the registry sends: the layers); loopback
is never touched. The CA goes only into the engine's per-registry directory
/etc/docker/certs.d/<addr:port>/ca.crt, which the engine reads at each pull (no restart, no
daemon.json change), next to a `bench.run` file naming the run; all of it goes at `stop`,
or at `cleanup` after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

from bench.core import procs
from bench.core.errors import BenchError, CommandError
from bench.core.settings import settings
from bench.tiers.docker import registry

POOL = ipaddress.IPv4Network("10.214.0.0/16")  # one /30 per run
PORT = 5443
NS_PREFIX = "bench-reg-"
MARKER = "bench.run"


def certs_d() -> Path:
    return settings().docker_certs_d


def tag(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:6]


def _used_addresses() -> set[ipaddress.IPv4Address]:
    listing = procs.run(["ip", "-o", "-4", "addr", "show"], timeout=10).stdout
    found = set()
    for line in listing.splitlines():
        words = line.split()
        if "inet" in words:
            found.add(ipaddress.IPv4Interface(words[words.index("inet") + 1]).ip)
    return found


def _subnet(run_id: str) -> ipaddress.IPv4Network:
    subnets = list(POOL.subnets(new_prefix=30))
    first = int(tag(run_id), 16) % len(subnets)
    used = _used_addresses()
    for step in range(len(subnets)):
        net = subnets[(first + step) % len(subnets)]
        if not any(a in net for a in used):
            return net
    raise BenchError(f"Every /30 of {POOL} is in use.", "run `bench cleanup`.")


def _openssl(*args: str) -> None:
    procs.run(["openssl", *args], timeout=60)


def make_tls(out: Path, ip: str, run_id: str) -> tuple[Path, Path, Path]:
    """A CA for the run and a server certificate for `ip` signed by it: (ca, cert, key)."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca, ca_key = out / "ca.crt", out / "ca.key"
    cert, key, csr, ext = out / "server.crt", out / "server.key", out / "server.csr", out / "ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", f"/CN=bench registry CA {run_id}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"
                   "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class LimitedRegistry:
    def __init__(self, run_id: str, workdir: Path, rate_mbit: float) -> None:
        self.run_id, self.workdir, self.rate_mbit = run_id, workdir, rate_mbit
        self.ns = f"{NS_PREFIX}{tag(run_id)}"
        self.host_if, self.ns_if = f"brg{tag(run_id)}", f"brg{tag(run_id)}p"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr = ""
        self.tls: ssl.SSLContext | None = None

    @property
    def certs_dir(self) -> Path:
        return certs_d() / self.addr

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        net = _subnet(self.run_id)
        host_ip, ns_ip = (str(a) for a in list(net.hosts())[:2])
        self.addr = f"{ns_ip}:{PORT}"
        ip = ["ip", "-n", self.ns]
        procs.run(["ip", "netns", "add", self.ns], timeout=10)
        procs.run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                   "netns", self.ns], timeout=10)
        procs.run(["ip", "addr", "add", f"{host_ip}/30", "dev", self.host_if], timeout=10)
        procs.run(["ip", "link", "set", self.host_if, "up"], timeout=10)
        procs.run([*ip, "addr", "add", f"{ns_ip}/30", "dev", self.ns_if], timeout=10)
        procs.run([*ip, "link", "set", self.ns_if, "up"], timeout=10)
        procs.run([*ip, "link", "set", "lo", "up"], timeout=10)
        self.set_rate(self.rate_mbit)
        ca, cert, key = make_tls(self.workdir / "tls", ns_ip, self.run_id)
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        (self.certs_dir / MARKER).write_text(self.run_id)
        shutil.copyfile(ca, self.certs_dir / "ca.crt")
        self.tls = ssl.create_default_context(cafile=str(ca))
        conf = self.workdir / "limited.yml"
        conf.write_text(registry.config(self.addr, registry.storage_dir(), readonly=True,
                                        tls=(cert, key)))
        with open(self.workdir / "limited.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, registry.BINARY, "serve", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        client = registry.Client(self.addr, self.tls, timeout=3)
        deadline = time.monotonic() + registry.START_TIMEOUT_S
        while not client.alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"The rate-limited registry did not come up at {self.addr} "
                                 f"(see {self.workdir / 'limited.log'}).",
                                 "check that docker-registry runs (`bench setup`).")
            time.sleep(0.1)

    def set_rate(self, rate_mbit: float) -> None:
        """tbf on the namespace's end: what the registry sends is cut to rate_mbit."""
        self.rate_mbit = rate_mbit
        burst = max(int(rate_mbit * 1e6 / 8 / 100), 32 * 1024)  # 10 ms of data, at least 32 KiB
        procs.run(["tc", "-n", self.ns, "qdisc", "replace", "dev", self.ns_if, "root", "tbf",
                   "rate", f"{int(rate_mbit * 1000)}kbit", "burst", str(burst),
                   "latency", "100ms"], timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            procs.terminate(self.proc)  # type: ignore[arg-type]
            self.proc = None
        remove(self.ns, self.addr)


def remove(ns: str, addr: str = "") -> list[str]:
    removed = []
    if Path(f"/run/netns/{ns}").exists():
        with contextlib.suppress(CommandError):
            for pid in procs.run(["ip", "netns", "pids", ns], timeout=10).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(CommandError):
            procs.run(["ip", "netns", "del", ns], timeout=10)  # its veth goes with it
            removed.append(f"network namespace {ns}")
    if addr and (certs_d() / addr / MARKER).exists():
        shutil.rmtree(certs_d() / addr, ignore_errors=True)
        removed.append(f"certificate directory {certs_d() / addr}")
    return removed


def cleanup(run_id: str | None) -> list[str]:
    """A run's (or every run's) namespace and certificate directory, after a crash."""
    removed = []
    names = [f"{NS_PREFIX}{tag(run_id)}"] if run_id else \
        [p.name for p in Path("/run/netns").glob(f"{NS_PREFIX}*")]
    for ns in names:
        removed += remove(ns)
    if certs_d().is_dir():
        for marker in certs_d().glob(f"*/{MARKER}"):
            with contextlib.suppress(OSError):
                if run_id is None or marker.read_text().strip() == run_id:
                    shutil.rmtree(marker.parent, ignore_errors=True)
                    removed.append(f"certificate directory {marker.parent}")
    return removed
