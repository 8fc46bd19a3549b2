"""Private daemons for the tests that kill one: a dockerd and a libvirtd of the test's own, with
their own sockets, state and run directories, so the machine's dockerd and libvirtd (which other
people use) are never touched. bench is pointed at them with BENCH_DOCKER_URL and
BENCH_LIBVIRT_URI.

The private dockerd has its own --host socket, --data-root, --exec-root (and so its own managed
containerd) and --pidfile, no default bridge, no iptables rules and its own address pool. The
private libvirtd runs in a mount namespace of its own where /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt and /etc/libvirt are the test's directories (libvirt's privileged driver has
fixed state paths, so a second daemon needs them hidden), its socket in a directory the host
sees (unix_sock_dir), and QEMU's output going to files (no virtlogd)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.kernel import sysmount

START_TIMEOUT_S = 90.0


@dataclass
class Private:
    """A daemon of the test's own: where to reach it, how to kill and start it again."""

    name: str
    url: str
    pidfile: Path
    start: Callable[[], None]
    mount_ns: str = ""  # the libvirtd's mount namespace: everything in it is ours
    extra: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        pid = self.pid
        os.kill(pid, sig)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)
        return pid


def _wait(what: str, ready: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(f"the private {what} did not come up: {tail}")
        time.sleep(0.2)


def _alive(pidfile: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return pid
    return None


def _stop(pid: int | None, timeout: float = 30) -> None:
    if pid is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def dockerd(root: Path) -> Iterator[Private]:
    """A dockerd of our own under `root` (a short path: socket paths are limited)."""
    exec_root = Path(f"/run/bench-test-dockerd-{os.getpid()}")
    sock, pidfile, log = root / "docker.sock", root / "dockerd.pid", root / "dockerd.log"
    argv = ["dockerd", "--host", f"unix://{sock}", "--data-root", str(root / "data"),
            "--exec-root", str(exec_root), "--pidfile", str(pidfile), "--bridge", "none",
            "--iptables=false", "--ip-masq=false", "--default-address-pool",
            "base=10.213.0.0/16,size=24", "--log-level", "warn"]

    def start() -> None:
        with open(log, "ab") as out:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)

        def answers() -> bool:
            done = subprocess.run(["docker", "-H", f"unix://{sock}", "version"],
                                  capture_output=True, timeout=30)
            return done.returncode == 0

        _wait("dockerd", answers, log)

    daemon = Private("dockerd", f"unix://{sock}", pidfile, start)
    start()
    try:
        yield daemon
    finally:
        _stop(_alive(pidfile))
        # its containerd (and shims) live under the exec root; dockerd stops them on SIGTERM,
        # but not after a SIGKILL
        _stop(_alive(exec_root / "containerd" / "containerd.pid"))
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(exec_root) in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
        for base in (exec_root, root):
            for point in sysmount.mounts_under(base):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(root / "data", ignore_errors=True)


PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/etc/libvirt")
# bind the test's directories over libvirt's fixed ones, then become the daemon (paths are
# passed as arguments, never spliced into the script)
_ENTER = ('set -e; while [ "$#" -gt 3 ]; do mount --bind "$1" "$2"; shift 2; done; '
          'exec libvirtd -d --config "$1" --pid-file "$2"')


def _mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


@contextlib.contextmanager
def libvirtd(root: Path, netns: str | None = None) -> Iterator[Private]:
    """A privileged libvirtd of our own, hidden in a mount namespace (see the module's text),
    and in the network namespace `netns` if given (its networks' links and firewall rules go
    there, not on the host)."""
    sock_dir, pidfile, log = root / "sock", root / "libvirtd.pid", root / "libvirtd.log"
    sock_dir.mkdir(parents=True, exist_ok=True)
    binds: list[str] = []
    for target in PRIVATE_DIRS:
        mine = root / target.strip("/").replace("/", "-")
        if target == "/etc/libvirt":
            # the machine's configuration without its persistent domains and networks
            shutil.copytree(target, mine, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("qemu", "autostart"))
            (mine / "qemu" / "networks" / "autostart").mkdir(parents=True, exist_ok=True)
            qemu_conf = mine / "qemu.conf"
            qemu_conf.write_text((qemu_conf.read_text() if qemu_conf.exists() else "")
                                 + '\nstdio_handler = "file"\n')
        mine.mkdir(parents=True, exist_ok=True)
        binds += [str(mine), target]
    config = root / "libvirtd.conf"
    config.write_text(f'unix_sock_dir = "{sock_dir}"\nlog_outputs = "3:file:{log}"\n'
                      'unix_sock_rw_perms = "0700"\n')
    url = f"qemu:///system?socket={sock_dir}/libvirt-sock"

    daemon = Private("libvirtd", url, pidfile, lambda: None)

    def start() -> None:
        enter = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run([*enter, "unshare", "--mount", "--propagation", "private", "--", "sh",
                        "-c", _ENTER, "sh", *binds, str(config), str(pidfile)],
                       stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)

        def answers() -> bool:
            done = subprocess.run(["virsh", "-c", url, "version"], capture_output=True,
                                  timeout=30)
            return done.returncode == 0

        _wait("libvirtd", answers, log)
        daemon.mount_ns = _mount_ns(daemon.pid)

    daemon.start = start
    start()
    try:
        yield daemon
    finally:
        _stop(_alive(pidfile))
        # whatever still runs in its namespace (QEMU, dnsmasq) is ours: nothing else is there
        if daemon.mount_ns:
            for proc in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if proc.pid != os.getpid() and _mount_ns(proc.pid) == daemon.mount_ns:
                        proc.kill()
