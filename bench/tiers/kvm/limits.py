"""A guest's limits while it runs: live switches through libvirt, and their readback.

| limit | at boot (domxml) | live switch |
|---|---|---|
| cpus | vCPUs = ceil(largest cpus of the run); quota per vCPU | setSchedulerParameters |
| memory_mb | RAM; with switches up to the largest, behind a balloon | setMemoryFlags |
| io_* | QEMU iotune of the scratch disk | setBlockIoTune |
| net_mbit | see below | the same shaper, changed |

net_mbit is what the guest sends. Where the host kernel has the tc police action, libvirt's
`<bandwidth><outbound>` does it (setInterfaceParameters to switch). Without it (this project's
hosts), the tap's ingress (what the guest sends) is redirected to an ifb device with tc mirred
and shaped there by a tbf, made and changed by bench. Instance metadata says which.

Not live: more CPUs than vCPUs booted, memory above what the guest booted with or any memory
change without a balloon, cpuset (vCPU pinning is not a bandwidth limit; left out), pids (set at
start inside the guest: bench.tiers.kvm.guestpids).
"""

from __future__ import annotations

import contextlib
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import BenchError
from bench.core.lazy import lazy
from bench.kernel import tc
from bench.tiers.base import SwitchChange
from bench.tiers.kvm.domxml import QUOTA_PERIOD_US, vcpu_quota_us

if TYPE_CHECKING:
    import libvirt

    from bench.tiers.kvm.instance import KvmInstance
else:
    libvirt = lazy("libvirt")

LIVE = 1  # VIR_DOMAIN_AFFECT_LIVE
LIVE_SWITCHES = frozenset({"cpus", "memory_mb", "io_read_bps", "io_write_bps", "io_read_iops",
                           "io_write_iops", "net_mbit"})
IOTUNE = {"io_read_bps": "read_bytes_sec", "io_write_bps": "write_bytes_sec",
          "io_read_iops": "read_iops_sec", "io_write_iops": "write_iops_sec"}
SCRATCH = "vdb"
IFB_PREFIX = "bi"


def shaper() -> str:
    return "libvirt-bandwidth" if tc.has_police() else "ifb"


def shaper_note(kind: str) -> str:
    return ("libvirt <bandwidth> outbound (tc police on the tap)" if kind == "libvirt-bandwidth"
            else "ifb redirect of the tap's ingress + tbf on the host (this kernel has no tc "
            "police action, which libvirt's outbound <bandwidth> needs)")


def net_kbytes(mbit: float) -> int:
    """libvirt's bandwidth unit: KiB/s."""
    return max(1, round(mbit * 1e6 / 8 / 1024))


def ifb_name(run_id: str, name: str) -> str:
    return IFB_PREFIX + hashlib.sha256(f"{run_id}/{name}".encode()).hexdigest()[:10]


def tap_of(domain: libvirt.virDomain) -> str | None:
    """The host side of the guest's NIC (vnetN), from the live domain XML."""
    root = ET.fromstring(domain.XMLDesc(0))  # noqa: S314 (libvirt's own XML)
    target = root.find("devices/interface/target")
    return target.get("dev") if target is not None else None


class GuestLimits:
    """The live limits of one guest."""

    def __init__(self, instance: KvmInstance) -> None:
        self.instance = instance
        self.net_shaper: str | None = None
        self.ifb: str | None = None
        self.tap: str | None = None

    @property
    def domain(self) -> libvirt.virDomain:
        if self.instance.domain is None:
            raise BenchError(f"Guest {self.instance.name} is not running.", "start it first.")
        return self.instance.domain

    # -- at boot ----------------------------------------------------------------------------
    def start_network(self, mbit: float | None, switchable: bool) -> None:
        """After the domain started: the ifb shaper, when net_mbit is set (or will be)."""
        if mbit is None and not switchable:
            return
        self.net_shaper = shaper()
        self.tap = tap_of(self.domain)
        if self.net_shaper == "ifb" and self.tap:
            self.ifb = ifb_name(self.instance.tier.ctx.run_id, self.instance.name)
            tc.redirect_to_ifb(self.tap, self.ifb)
            if mbit is not None:
                tc.set_rate(self.ifb, mbit)

    def stop_network(self) -> None:
        if self.ifb:
            tc.remove_ifb(None, self.ifb)  # the tap went with the guest
            self.ifb = None

    # -- switches ---------------------------------------------------------------------------
    def switch_one(self, limit: str, value: Any) -> SwitchChange:
        how = {"cpus": self._cpus, "memory_mb": self._memory_mb, "net_mbit": self._net_mbit,
               **{name: self._io for name in IOTUNE}}.get(limit)
        if how is None:
            return SwitchChange(limit, value, False, "a VM cannot change this limit live")
        try:
            return how(limit, value)
        except libvirt.libvirtError as exc:
            return SwitchChange(limit, value, False,
                                f"libvirt refused it: {exc.get_error_message()}")

    def _cpus(self, limit: str, value: float) -> SwitchChange:
        vcpus = self.instance.config.vcpus
        if value > vcpus:
            return SwitchChange(limit, value, False,
                                f"more CPUs than the {vcpus} vCPU(s) the guest booted with")
        quota = vcpu_quota_us(value, vcpus) if value < vcpus else -1
        try:
            self.domain.setSchedulerParametersFlags(
                {"vcpu_period": QUOTA_PERIOD_US, "vcpu_quota": quota}, LIVE)
        except libvirt.libvirtError as exc:
            # libvirtd resolves controllers through its mount table: a bind mount of the
            # cgroup tree elsewhere (a chroot's /sys) sends it to the wrong files. The vCPU
            # threads' own groups are the files it would write.
            groups = self._vcpu_groups()
            if not groups:
                raise
            for group in groups:
                (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            return SwitchChange(limit, value, True,
                                "cpu.cfs_quota_us of the vCPU threads' cgroups (libvirt "
                                f"failed: {exc.get_error_message()[:120]})")
        return SwitchChange(limit, value, True,
                            "libvirt setSchedulerParameters vcpu_quota (per vCPU thread)")

    def _vcpu_tasks(self) -> list[Path]:
        """/proc/<qemu>/task/<tid> of the QEMU threads that run vCPUs ("CPU n/TCG|KVM")."""
        pid = self.instance.pid
        found = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    if (task / "comm").read_text().startswith("CPU "):
                        found.append(task)
        return found if pid is not None else []

    def vcpu_seconds(self) -> float | None:
        """The vCPU threads' time on a CPU (schedstat: nanoseconds, where /stat has ticks)."""
        tasks = self._vcpu_tasks()
        used = 0
        for task in tasks:
            with contextlib.suppress(OSError, ValueError, IndexError):
                used += int((task / "schedstat").read_text().split()[0])
        return used / 1e9 if tasks else None

    def _vcpu_groups(self) -> list[Path]:
        """The cgroup v1 cpu groups of the vCPU threads."""
        root = next((Path(p) for p in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu")
                     if Path(p, "cpu.cfs_quota_us").exists()), None)
        if root is None:
            return []
        found = []
        for task in self._vcpu_tasks():
            with contextlib.suppress(OSError):
                for line in (task / "cgroup").read_text().splitlines():
                    _, controllers, rel = line.split(":", 2)
                    if "cpu" in controllers.split(","):
                        found.append(root / rel.lstrip("/"))
        return sorted(set(found))

    def _memory_mb(self, limit: str, value: int) -> SwitchChange:
        cfg = self.instance.config
        top = max(cfg.memory_mb, cfg.memory_max_mb or 0)
        if not cfg.memory_max_mb or cfg.memory_max_mb <= cfg.memory_mb:
            return SwitchChange(limit, value, False,
                                "the guest has no balloon (booted without memory switches)")
        if value > top:
            return SwitchChange(limit, value, False,
                                f"more than the {top} MB the guest booted with")
        self.domain.setMemoryFlags(value << 10, LIVE)
        return SwitchChange(limit, value, True, "libvirt setMemoryFlags (virtio balloon)")

    def _io(self, limit: str, value: int) -> SwitchChange:
        # QEMU takes the throttle as a whole: the ones not switched are given as they are
        current = self.domain.blockIoTune(SCRATCH, LIVE)
        tune = {key: int(current.get(key) or 0) for key in IOTUNE.values()}
        self.domain.setBlockIoTune(SCRATCH, tune | {IOTUNE[limit]: value}, LIVE)
        return SwitchChange(limit, value, True,
                            f"libvirt setBlockIoTune {IOTUNE[limit]} on {SCRATCH}")

    def _net_mbit(self, limit: str, value: float) -> SwitchChange:
        if self.net_shaper == "libvirt-bandwidth" and self.tap:
            self.domain.setInterfaceParameters(self.tap, {"outbound.average": net_kbytes(value)},
                                               LIVE)
            return SwitchChange(limit, value, True,
                                "libvirt setInterfaceParameters outbound.average")
        if self.ifb is None:
            return SwitchChange(limit, value, False,
                                "the guest was started without a shaper (no net_mbit)")
        tc.set_rate(self.ifb, value)
        return SwitchChange(limit, value, True,
                            f"tbf on {self.ifb} (ifb carrying {self.tap}'s ingress)")

    # -- readback ---------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        domain = self.domain
        found: dict[str, Any] = {}
        try:
            params = domain.schedulerParametersFlags(LIVE)
        except libvirt.libvirtError:  # libvirt could not read the cgroups: read them here
            groups = self._vcpu_groups()
            params = {"vcpu_quota": int((groups[0] / "cpu.cfs_quota_us").read_text()),
                      "vcpu_period": int((groups[0] / "cpu.cfs_period_us").read_text())} \
                if groups else {}
        quota = params.get("vcpu_quota", -1)
        vcpus = self.instance.config.vcpus
        found["cpus"] = (quota / params.get("vcpu_period", QUOTA_PERIOD_US) * vcpus
                         if 0 < quota < 1 << 40 else None)
        found["memory_mb"] = domain.info()[2] >> 10
        tune = domain.blockIoTune(SCRATCH, LIVE)
        for limit, key in IOTUNE.items():
            found[limit] = int(tune.get(key) or 0) or None
        if self.net_shaper == "libvirt-bandwidth" and self.tap:
            average = domain.interfaceParameters(self.tap, LIVE).get("outbound.average", 0)
            found["net_mbit"] = average * 1024 * 8 / 1e6 if average else None
        elif self.ifb:
            found["net_mbit"] = tc.read_rate(self.ifb)
        else:
            found["net_mbit"] = None
        return found

    def guest_memtotal_mb(self) -> float | None:
        text = self.instance.read_file("/proc/meminfo").decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
        return None
