"""SSD-cache setups inside a kvm guest: a slow disk (a host file behind QEMU's iotune) and a
fast disk (a file in host memory, /dev/shm, at most 512 MiB) are hot-plugged into the instance,
and the recipe is built on them inside the guest through its agent (bench.tune.cache.given).

Both files are unlinked as soon as QEMU holds them open, so they go away with the guest, even
after a crash: nothing is left to clean up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.errors import CommandError
from bench.core.hostlock import work_root
from bench.tiers.kvm.domxml import disk_xml
from bench.tune.cache.given import GivenDevicesLab
from bench.tune.cache.recipes import device_spec

if TYPE_CHECKING:
    from bench.tiers.kvm.instance import KvmInstance

FAST_MAX_MB = 512
SLOW_TARGET, FAST_TARGET = "vdc", "vdd"
SHM = Path("/dev/shm")


class GuestShell:
    """bench.tune.cache.shell.Shell inside a running guest (argv lists through the agent)."""

    def __init__(self, instance: KvmInstance) -> None:
        self.instance = instance

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> str:
        try:
            return self.instance.exec(argv, timeout=timeout).stdout
        except CommandError:
            if check:
                raise
            return ""

    def read(self, path: str) -> str:
        try:
            return self.instance.exec(["cat", path], timeout=30).stdout
        except CommandError as exc:
            raise OSError(f"cannot read {path} in the guest: {exc}") from None

    def write(self, path: str, text: str) -> None:
        try:
            self.instance.exec(["sh", "-c", 'printf %s "$1" > "$2"', "sh", text, path],
                               timeout=60)
        except CommandError as exc:
            raise OSError(f"cannot write {text!r} to {path} in the guest: {exc}") from None

    def exists(self, path: str) -> bool:
        return self.run(["sh", "-c", 'test -e "$1" && echo y', "sh", path], check=False) == "y\n"

    def realpath(self, path: str) -> str:
        return self.run(["readlink", "-f", path], timeout=30).strip()


def attach_cache_disks(instance: KvmInstance, names: list[str],
                       log: Callable[[str], None]) -> GivenDevicesLab:
    import libvirt

    assert instance.domain is not None
    spec = device_spec()
    run_id = instance.tier.ctx.run_id
    slow = work_root() / f"bench-{run_id}-{instance.name}-cache-slow.raw"
    slow.parent.mkdir(parents=True, exist_ok=True)
    with open(slow, "wb") as fh:
        fh.truncate(spec.slow.size_mb << 20)
    fast = SHM / f"bench-{run_id}-{instance.name}-cache-fast.raw"
    fast_mb = min(spec.fast.size_mb, FAST_MAX_MB)
    fast.unlink(missing_ok=True)  # /dev/shm is anyone's: a new file, never a planted link
    fd = os.open(fast, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, fast_mb << 20)
    finally:
        os.close(fd)
    for path in (slow, fast):
        instance.qemu.give(path)
    try:
        instance.domain.attachDeviceFlags(
            disk_xml(slow, SLOW_TARGET, read_bps=spec.slow.read_bps,
                     write_bps=spec.slow.write_bps, read_iops=spec.slow.read_iops,
                     write_iops=spec.slow.write_iops), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        instance.domain.attachDeviceFlags(disk_xml(fast, FAST_TARGET, cache="writeback"),
                                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        for path in (slow, fast):  # QEMU holds them open: freed when the guest goes
            path.unlink(missing_ok=True)
    shell = GuestShell(instance)
    deadline = time.monotonic() + 60 * instance.tier.timeout_factor()
    while not all(shell.exists(f"/dev/{t}") for t in (SLOW_TARGET, FAST_TARGET)):
        if time.monotonic() > deadline:
            raise CommandError(["hot-plug", SLOW_TARGET, FAST_TARGET], 1,
                               "the guest did not see its cache disks within a minute")
        time.sleep(0.5)
    slowed = (f"QEMU iotune on /dev/{SLOW_TARGET}: {spec.slow.read_bps >> 20} MiB/s, "
              f"{spec.slow.read_iops} IOPS")
    return GivenDevicesLab(run_id, shell, f"/dev/{SLOW_TARGET}", f"/dev/{FAST_TARGET}",
                           instance.scratch_dir(), slowed, names, log=log)
