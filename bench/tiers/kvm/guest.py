"""The guest: the bench image made bootable, for the `kvm` tier.

Built from a copy of the bench image's root (so the guest runs the very files every other tier
runs), with the Debian cloud kernel, an initramfs that loads the virtio modules, systemd, udev and
qemu-guest-agent installed by apt *inside* a chroot of that copy (the image's apt sources are the
host's: nothing is downloaded but through apt). The result is three files, cached under a hash of
the image's hash and this recipe:

    /var/lib/bench/guests/<hash>/vmlinuz, initrd.img   direct kernel boot
    /var/lib/bench/guests/<hash>/disk.raw              ext4 root made with `mkfs.ext4 -d`
    /var/lib/bench/guests/<hash>/manifest.json         packages, what differs from the image

Instances boot from a qcow2 overlay per instance over `disk.raw`, which is never written.
The guest's boot is trimmed of what would only add noise to a benchmark (timers, on-disk journal,
graphical target); networking is systemd-networkd with DHCP on eth0; /scratch is the second
virtio disk (/dev/vdb), made by the tier on the host before each boot.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import ImageError
from bench.core.image import Image, recipe_hash
from bench.core.procs import run
from bench.core.settings import settings
from bench.kernel import sysmount
from bench.kernel.libc import LIBC

GUEST_RECIPE_VERSION = 1  # bump when the build steps below change
GUEST_PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "qemu-guest-agent",
    "systemd-sysv",
    "udev",
    "kmod",
    "e2fsprogs",
    # a typical test host: what bench builds cache setups and ns containers with inside the guest
    "dmsetup",
    "lvm2",
    "bcache-tools",
    "iptables",
    "libvirt0",  # libvirt-python (a dependency of bench, wheel built on the host) loads it
)
ROOT_DEVICE = "/dev/vda"
SCRATCH_DEVICE = "/dev/vdb"
CMDLINE = f"console=ttyS0 root={ROOT_DEVICE} rw net.ifnames=0"
# Files written into the guest's root, relative to it. Part of the recipe hash.
FILES = {
    # both file systems are fresh: no fsck. /scratch is mounted on first use, so the boot does
    # not wait for udev to announce the second disk (a quarter of the boot under TCG)
    "etc/fstab": f"{ROOT_DEVICE} / ext4 defaults 0 0\n"
                 f"{SCRATCH_DEVICE} /scratch ext4 "
                 "defaults,x-systemd.automount,x-systemd.device-timeout=120 0 0\n",
    "etc/hostname": "bench-guest\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 bench-guest\n",
    "etc/systemd/network/10-eth0.network": (
        "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n\n[DHCPv4]\nClientIdentifier=mac\n"  # machine-id is per boot
    ),
    # the journal in memory: no guest disk writes of its own during disk workloads
    "etc/systemd/journald.conf.d/bench.conf": "[Journal]\nStorage=volatile\n",
    # a small initramfs: only what finds the root disk (virtio_pci, virtio_blk; ext4 is built in)
    "etc/initramfs-tools/conf.d/bench.conf": "MODULES=list\nCOMPRESS=gzip\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\n",
}
ENABLED_UNITS = ("systemd-networkd.service",)
# Timers and jobs that would fire during a benchmark, and units that fail without D-Bus.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "fstrim.timer", "systemd-tmpfiles-clean.timer", "e2scrub_reap.service",
    "systemd-logind.service", "getty-static.service", "systemd-networkd-wait-online.service",
    "systemd-firstboot.service",
)
APT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
}
HEADROOM_BYTES = 1 << 30  # free space on the guest's root file system
CLONE_NEWNS = 0x00020000

_libc = LIBC


def guests_dir() -> Path:
    return settings().guest_dir


def recipe(img: Image) -> dict[str, Any]:
    return {
        "guest_recipe_version": GUEST_RECIPE_VERSION,
        "image": img.hash,
        "image_built_at": img.manifest.get("built_at"),  # `image build --force` makes a new one
        "arch": platform.machine(),
        "packages": sorted(GUEST_PACKAGES),
        "files": FILES,
        "enabled": sorted(ENABLED_UNITS),
        "masked": sorted(MASKED_UNITS),
        "cmdline": CMDLINE,
    }


@dataclass(frozen=True)
class Guest:
    hash: str
    path: Path

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.path / "disk.raw"

    @property
    def cmdline(self) -> str:
        return CMDLINE

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        return data


def find(img: Image) -> Guest | None:
    """The guest for this image and recipe, if it has been built."""
    digest = recipe_hash(recipe(img))
    path = guests_dir() / digest
    if all((path / name).is_file() for name in ("manifest.json", "vmlinuz", "initrd.img",
                                                 "disk.raw")):
        return Guest(digest, path)
    return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    guests_dir().mkdir(parents=True, exist_ok=True)
    with open(guests_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(img: Image, force: bool = False, log: Callable[[str], Any] = print) -> Guest:
    """Build the guest for `img` (or return the cached one). About a minute; apt downloads
    the kernel, systemd and the agent through the host's apt sources."""
    data = recipe(img)
    digest = recipe_hash(data)
    final = guests_dir() / digest
    with _build_lock():
        if not force and (guest := find(img)) is not None:
            return guest
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}.build-", dir=guests_dir()))
        try:
            started = time.monotonic()
            log(f"building the kvm guest {digest} from bench image {img.hash} ...")
            root = staging / "rootfs"
            run(["cp", "-a", "--reflink=auto", str(img.rootfs), str(root)], timeout=900)
            _install(root)
            _configure(root)
            manifest = _manifest(root, img, data, digest)
            kernel, initrd = _boot_files(root)
            shutil.copyfile(kernel, staging / "vmlinuz")
            shutil.copyfile(initrd, staging / "initrd.img")
            manifest["kernel"] = kernel.name.removeprefix("vmlinuz-")
            _make_disk(root, staging / "disk.raw")
            manifest["disk_bytes"] = (staging / "disk.raw").stat().st_size
            manifest["build_seconds"] = round(time.monotonic() - started, 1)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            shutil.rmtree(root)
            staging.chmod(0o755)
            for name in ("vmlinuz", "initrd.img", "disk.raw", "manifest.json"):
                (staging / name).chmod(0o644)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    guests_dir().chmod(0o755)
    changed = manifest["image_packages_changed"]
    if changed:
        log(f"warning: apt changed {len(changed)} of the image's packages in the guest "
            f"({', '.join(sorted(changed)[:5])}); rebuild the image to make them equal again")
    log(f"kvm guest {digest} ready at {final} ({manifest['build_seconds']:.0f} s)")
    return Guest(digest, final)


# The device nodes a package script may use, made fresh in the chroot's own /dev (never the
# host's: scripts chown and chmod nodes such as /dev/kvm by the chroot's group ids).
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
             "urandom": (1, 9), "tty": (5, 0)}


def in_chroot(root: Path) -> Callable[[], None]:
    """A preexec that enters `root` in a private mount namespace, with its own /dev (a tmpfs
    with fresh nodes), /proc with /proc/sys read-only, a read-only /sys and the host's
    resolv.conf: package scripts cannot change the host, and the mounts vanish with the
    namespace whatever happens."""

    def enter() -> None:
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        sysmount.mount("none", "/", None, sysmount.MS_REC | sysmount.MS_PRIVATE)
        sysmount.mount("proc", root / "proc", "proc")
        sysmount.bind(root / "proc/sys", root / "proc/sys", readonly=True)
        sysmount.mount("sysfs", root / "sys", "sysfs", sysmount.MS_RDONLY)
        dev = root / "dev"
        sysmount.mount("tmpfs", dev, "tmpfs", sysmount.MS_NOSUID, "mode=755")
        for name, (major, minor) in DEV_NODES.items():
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)  # noqa: S103 (as in any /dev; mknod applies the umask)
        (dev / "pts").mkdir()
        (dev / "shm").mkdir()
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            (dev / name).symlink_to(target)
        if Path("/etc/resolv.conf").exists() and (root / "etc/resolv.conf").is_file():
            sysmount.bind("/etc/resolv.conf", root / "etc/resolv.conf", readonly=True)
        os.chroot(root)
        os.chdir("/")

    return enter


def _write(root: Path, relative: str, text: str, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def _install(root: Path) -> None:
    # initramfs settings first, so the kernel's own hook builds the small initramfs once
    for relative in ("etc/initramfs-tools/conf.d/bench.conf", "etc/initramfs-tools/modules"):
        _write(root, relative, FILES[relative])
    _write(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)  # start no daemons
    enter = in_chroot(root)
    try:
        run(["apt-get", "update", "-qq"], env=APT_ENV, preexec=enter, timeout=900)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *GUEST_PACKAGES],
            env=APT_ENV, preexec=enter, timeout=1800)
        run(["apt-get", "clean"], env=APT_ENV, preexec=enter, timeout=300)
    finally:
        (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _configure(root: Path) -> None:
    for relative, text in FILES.items():
        _write(root, relative, text)
    chroot = ["chroot", str(root)]
    run([*chroot, "systemctl", "enable", *ENABLED_UNITS], env=APT_ENV, timeout=120)
    run([*chroot, "systemctl", "mask", *MASKED_UNITS], env=APT_ENV, timeout=120)
    run([*chroot, "systemctl", "set-default", "multi-user.target"], env=APT_ENV, timeout=120)
    (root / "etc/machine-id").write_text("")  # systemd makes one per boot
    (root / "scratch").mkdir(exist_ok=True)


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError("The guest build installed no kernel in /boot.",
                         "check that apt can install linux-image-cloud-amd64 "
                         "(`apt-cache policy linux-image-cloud-amd64`).")
    kernel = kernels[-1]
    initrd = root / "boot" / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise ImageError(f"The guest build made no initramfs for {kernel.name}.",
                         "check the initramfs-tools output of the build.")
    return kernel, initrd


def _packages(root: Path) -> dict[str, str]:
    listing = run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                  timeout=60).stdout
    return dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)


def _manifest(root: Path, img: Image, data: dict[str, Any], digest: str) -> dict[str, Any]:
    packages = _packages(root)
    image_packages: dict[str, str] = img.manifest.get("packages", {})
    changed = {name: {"image": version, "guest": packages.get(name)}
               for name, version in image_packages.items() if packages.get(name) != version}
    return {
        "hash": digest,
        "recipe": data,
        "image": img.hash,
        "built_at": time.time(),
        "packages": packages,
        "added_packages": sorted(set(packages) - set(image_packages)),
        "image_packages_changed": changed,
    }


def _make_disk(root: Path, disk: Path) -> None:
    used = int(run(["du", "-sb", str(root)], timeout=300).stdout.split()[0])
    size = -(-(used + HEADROOM_BYTES) // (256 << 20)) * (256 << 20)
    with open(disk, "wb") as fh:
        fh.truncate(size)
    # initialise inode tables and journal now: no lazy-init writes in the guest during a run
    run(["mkfs.ext4", "-q", "-F", "-L", "bench-root", "-E",
         "lazy_itable_init=0,lazy_journal_init=0", "-d", str(root), str(disk)], timeout=900)
