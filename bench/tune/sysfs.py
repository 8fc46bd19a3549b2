"""Where tunables are read and written: the host's procfs/sysfs (under a root that tests point at
a fake tree) or inside an instance (a VM's own kernel, a container's network namespace).

Every path comes from the catalog; a device name is one plain word; the resolved path must stay
under /proc/sys or /sys of the same root (no `..`, no symlink out), or nothing is touched.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.errors import BenchError
from bench.core.settings import settings
from bench.tune.catalog import ALLOWED_RESOLVED, Tunable, TuneError

if TYPE_CHECKING:
    from bench.tiers.base import Instance

DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ROOT_ENV = "BENCH_SYSFS_ROOT"


def logical_path(tunable: Tunable, device: str | None) -> str:
    """The catalog path with its device filled in (checked to be one plain name)."""
    if not tunable.per_device:
        if device is not None:
            raise TuneError(f"{tunable.name} is not per-device; it takes no device.",
                            "drop the device.")
        return tunable.path
    if device is None:
        raise TuneError(f"{tunable.name} is per-device and needs a block device name.",
                        "give one, e.g. `--device vda` (ls /sys/block lists them).")
    if not DEVICE_RE.match(device):
        raise TuneError(f"{device!r} is not a block device name (one word of letters, digits, "
                        "'-' or '_'; no '/' or '..').", "give a name listed in /sys/block.")
    return tunable.path.replace("{device}", device)


def _top(logical: str) -> str:
    return "proc/sys" if logical.startswith("/proc/sys/") else "sys"


class Target(ABC):
    """One kernel whose tunables bench reads and writes."""

    key: str  # identity in the journal
    label: str  # for people: "host", "kvm guest main", ...

    @abstractmethod
    def read(self, tunable: Tunable, device: str | None) -> str:
        """The raw text the kernel shows; TuneError if it cannot be read."""

    @abstractmethod
    def write(self, tunable: Tunable, device: str | None, text: str) -> None:
        """Write the raw text; TuneError if the kernel refuses it."""

    @abstractmethod
    def exists(self, tunable: Tunable, device: str | None) -> bool:
        """Is the file there on this kernel (probed tunables may be absent)?"""


class HostFs(Target):
    """The host's procfs and sysfs, under `root` (default $BENCH_SYSFS_ROOT or /)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else settings().sysfs_root
        self.key = f"host:{self.root}"
        self.label = "host" if str(self.root) == "/" else f"host (root {self.root})"

    def resolve(self, tunable: Tunable, device: str | None) -> Path:
        logical = logical_path(tunable, device)
        top = Path(os.path.realpath(self.root / _top(logical)))
        real = Path(os.path.realpath(self.root / logical.lstrip("/")))
        inside = real.is_relative_to(top) and real != top
        if inside and not ALLOWED_RESOLVED.match("/" + str(real.relative_to(
                Path(os.path.realpath(self.root))))):
            raise TuneError(f"{tunable.name}: {logical} resolves to {real}, outside the "
                            "subtrees bench may write.", "check the symlinks under the "
                            f"procfs/sysfs root ({self.root}); this looks like a tampered tree.")
        if not inside:
            raise TuneError(f"{tunable.name}: {logical} resolves to {real}, outside "
                            f"{top}; bench writes nothing outside the catalog's paths.",
                            "check the symlinks under the procfs/sysfs root "
                            f"({self.root}); this looks like a tampered tree.")
        return real

    def exists(self, tunable: Tunable, device: str | None) -> bool:
        return self.resolve(tunable, device).is_file()

    def read(self, tunable: Tunable, device: str | None) -> str:
        path = self.resolve(tunable, device)
        try:
            return path.read_text()
        except OSError as exc:
            raise TuneError(f"Cannot read {tunable.name} ({path}): {exc.strerror}.",
                            _absent_fix(tunable)) from None

    def write(self, tunable: Tunable, device: str | None, text: str) -> None:
        path = self.resolve(tunable, device)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        except OSError as exc:
            raise TuneError(f"Cannot open {tunable.name} ({path}) for writing: "
                            f"{exc.strerror}.", "run bench as root.") from None
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            raise TuneError(f"The kernel refused {text!r} for {tunable.name} ({path}): "
                            f"{exc.strerror}.",
                            "pick a value the device/kernel supports (see the catalog's "
                            "risk note).") from None
        finally:
            os.close(fd)


def _absent_fix(tunable: Tunable) -> str:
    if tunable.probe:
        return f"nothing to do: {tunable.probe_note}"
    return "check that the kernel has this tunable (and the device exists)."


# A constant writer run inside an instance with argv [pattern, path, text]: it checks that the
# path, after symlinks, is one the catalog may write (not an `assert`, which `python -O` drops)
# and writes without creating or following anything.
_WRITER = (
    "import os,re,sys\n"
    "a,p,t=sys.argv[1:4]\n"
    "r=os.path.realpath(p)\n"
    "if not re.match(a,r):sys.exit('refused: '+p+' resolves to '+r)\n"
    "fd=os.open(r,os.O_WRONLY|os.O_TRUNC|os.O_NOFOLLOW)\n"
    "os.write(fd,t.encode())\n"
)


class InstanceFs(Target):
    """Tunables of an instance's own kernel or namespace, through Instance.exec."""

    def __init__(self, instance: Instance, label: str, timeout: float = 30.0) -> None:
        self.instance = instance
        self.key = f"instance:{id(instance)}"
        self.label = label
        self.timeout = timeout

    def read(self, tunable: Tunable, device: str | None) -> str:
        logical = logical_path(tunable, device)
        try:
            return self.instance.exec(["cat", logical], timeout=self.timeout).stdout
        except BenchError as exc:
            raise TuneError(f"Cannot read {tunable.name} ({logical}) in {self.label}: "
                            f"{exc.cause}", _absent_fix(tunable)) from None

    def write(self, tunable: Tunable, device: str | None, text: str) -> None:
        logical = logical_path(tunable, device)
        try:
            self.instance.exec(["python3", "-c", _WRITER, ALLOWED_RESOLVED.pattern, logical,
                                text], timeout=self.timeout)
        except BenchError as exc:
            raise TuneError(f"Cannot write {text!r} to {tunable.name} ({logical}) in "
                            f"{self.label}: {exc.cause}",
                            tunable.tiers_note or "the instance must allow writes to its "
                            "/proc/sys (and /sys) for this tunable.") from None

    def exists(self, tunable: Tunable, device: str | None) -> bool:
        logical = logical_path(tunable, device)
        try:
            self.instance.exec(["test", "-f", logical], timeout=self.timeout)
        except BenchError:
            return False
        return True


def block_device_of(path: Path | str, root: Path | str = "/") -> str:
    """The whole-disk block device holding `path` (a partition maps to its disk)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    link = Path(root) / "sys/dev/block" / f"{major}:{minor}"
    if major == 0 or not link.exists():
        raise TuneError(f"{path} is not on a block device (device {major}:{minor}: tmpfs, "
                        "overlay or btrfs subvolume), so it has no queue to tune.",
                        "give the device by name (`device:` in the sweep, `--device`).")
    real = Path(os.path.realpath(link))
    if (real / "partition").exists():
        real = real.parent
    return real.name
