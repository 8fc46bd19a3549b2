"""The libvirt daemons (started directly: no systemd here) and the connection to them."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench.core.errors import TierUnavailable
from bench.core.lazy import lazy
from bench.core.settings import settings

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy("libvirt")


URI_ENV = "BENCH_LIBVIRT_URI"
DEFAULT_URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")
RUN_DIRS = (Path("/var/log/libvirt"), Path("/run/libvirt"))
SOCKET = Path("/run/libvirt/libvirt-sock")
START_TIMEOUT_S = 30.0
QEMU_PID_DIR = Path("/run/libvirt/qemu")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
DEV_KVM = Path("/dev/kvm")
DEFAULT_QEMU_USER = "libvirt-qemu"  # Debian's build default


def uri() -> str:
    return settings().libvirt_uri


def is_local(name: str | None = None) -> bool:
    """A URI whose QEMU processes run on this host (so we can see their memory)."""
    return (name or uri()) in ("qemu:///system", "qemu:///session")


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are raised, not printed."""


def connect(name: str | None = None) -> libvirt.virConnect:
    target = name or uri()
    libvirt.registerErrorHandler(_quiet, None)  # once would do; it is idempotent and cheap
    try:
        return libvirt.open(target)
    except libvirt.libvirtError as exc:
        raise TierUnavailable(
            f"Cannot connect to libvirt at {target}: {exc.get_error_message()}",
            "run `bench setup` (starts virtlogd and libvirtd), or set "
            f"{URI_ENV} to a reachable libvirt.") from exc


def daemon_pids(name: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["name", "exe"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name or Path(proc.info["exe"] or "").name == name:
                found.append(proc.pid)
    return found


def qemu_user(conf: Path = QEMU_CONF) -> str:
    """The user libvirt runs QEMU as (qemu.conf's `user`, else Debian's default)."""
    with contextlib.suppress(OSError):
        for line in conf.read_text().splitlines():
            found = re.match(r'^\s*user\s*=\s*"([^"]+)"', line)
            if found:
                return found.group(1).lstrip("+")
    return DEFAULT_QEMU_USER


def dev_kvm_problem(dev: Path = DEV_KVM, user: str | None = None) -> str | None:
    """Why QEMU's user cannot open /dev/kvm, or None. When it cannot, libvirt finds its cached
    QEMU capabilities stale on every call (KVM was usable when it probed as root) and probes
    QEMU again, which makes each define or start take about a minute."""
    if not dev.exists():
        return None
    name = user or qemu_user()
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return None  # no such user: libvirt will say so itself
    groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {account.pw_gid}
    info = dev.stat()
    if info.st_uid == account.pw_uid:
        wanted = stat.S_IRUSR | stat.S_IWUSR
    elif info.st_gid in groups:
        wanted = stat.S_IRGRP | stat.S_IWGRP
    else:
        wanted = stat.S_IROTH | stat.S_IWOTH
    if info.st_mode & wanted == wanted:
        return None
    return (f"{dev} (mode {stat.filemode(info.st_mode)}) cannot be opened by {name}, the user "
            "libvirt runs QEMU as, so libvirt re-probes QEMU on every call (about a minute per "
            "guest)")


def fix_dev_kvm(dev: Path = DEV_KVM) -> str | None:
    """Give /dev/kvm the owner and mode udev gives it on Debian (root:kvm 0660), where no udev
    did. Returns what was done."""
    if dev_kvm_problem(dev) is None:
        return None
    try:
        kvm = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    os.chown(dev, 0, kvm)
    dev.chmod(0o660)
    return f"set {dev} to root:kvm 0660 (as udev does on Debian)"


def ensure_running() -> list[str]:
    """Start virtlogd and libvirtd in the background when they are not running."""
    if not is_local():
        return [f"libvirt at {uri()} is remote; nothing to start here"]
    done = []
    fixed = fix_dev_kvm()
    if fixed:
        done.append(fixed)
    for directory in RUN_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
    for daemon in DAEMONS:
        if daemon_pids(daemon):
            done.append(f"{daemon} already running")
            continue
        if shutil.which(daemon) is None:
            raise TierUnavailable(f"{daemon} is not installed.",
                                  "run `bench setup` (apt-get install libvirt-daemon-system).")
        # `-d` daemonises: it leaves our session and outlives `bench setup`
        subprocess.run([daemon, "-d"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, timeout=30, close_fds=True)
        done.append(f"started {daemon}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            connect().close()
            break
        except TierUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return done


def qemu_pid(domain_name: str) -> int | None:
    """The QEMU process of a running domain (local URIs only)."""
    try:
        return int((QEMU_PID_DIR / f"{domain_name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def started_at_monotonic(pid: int) -> float | None:
    """When a process started, on this process's CLOCK_MONOTONIC (10 ms resolution: the
    kernel keeps start times in clock ticks since boot)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    now_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic() - (now_boot - since_boot)


def versions(conn: libvirt.virConnect) -> dict[str, str]:
    def dotted(number: int) -> str:
        return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"

    found = {"libvirt": dotted(conn.getLibVersion())}
    with contextlib.suppress(libvirt.libvirtError):
        found["qemu"] = dotted(conn.getVersion())
    return found
