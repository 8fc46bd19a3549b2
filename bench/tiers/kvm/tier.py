"""The kvm tier: virtual machines through libvirt-python.

The guest is the bench image made bootable (guest.py): direct kernel boot of the Debian
cloud kernel, a qcow2 overlay per instance over the guest's ext4 disk, a second virtio-blk disk
for /scratch backed by a file on the host's file system (made with mkfs.ext4 on the host before
each boot), virtio-net on a NAT network this tier defines per run, and the serial console in a
file. Everything inside is driven through qemu-guest-agent (agent.py): no SSH, no keys.

KVM is used only when it can really boot a guest (accel.py); otherwise the domains are
TCG (`<domain type='qemu'>`) and every sample says so (`accelerator`, `emulated`).

Start-up phases of an instance, on the host's CLOCK_MONOTONIC:
  create          start() was called (overlay and scratch disk are made next)
  defined         the domain is defined in libvirt
  start_call      just before virDomainCreate
  qemu_process    the QEMU process's start time (from /proc, 10 ms resolution)
  start_returned  virDomainCreate returned: QEMU is up and its vCPUs run
  kernel_started  guest time zero (and initramfs_started, init_started: console stamps),
                  carried to the host clock by bench/tiers/kvm/clock.py
  ready           the guest agent first answers (userspace is up)
  network_ready   eth0 has its DHCP address (long-lived instances)
  exec_call       a command instance's command is handed to the agent
  first_instruction  bench-stamp's guest clock reading, carried to the host clock
  exit            the agent first reports the command exited (polled)
  shutdown        the domain is off (a command instance runs `systemctl poweroff` through the
                  agent, BENCH_KVM_SHUTDOWN=clean, or is destroyed, =destroy; long-lived
                  instances are destroyed)
  removed         domain undefined, overlay and scratch files deleted

Parameters (environment):
  BENCH_LIBVIRT_URI           qemu:///system
  BENCH_KVM_ACCEL             auto (KVM if it boots, else TCG) | kvm (or fail) | tcg
  BENCH_KVM_BOOT_TIMEOUT      120 s from the start call to a ready agent (and DHCP address)
  BENCH_KVM_PROBE_TIMEOUT     20 s for the KVM boot probe
  BENCH_KVM_SHUTDOWN          clean | destroy, for command (start-up) instances
  BENCH_KVM_SHUTDOWN_TIMEOUT  30 s, then the domain is destroyed
  BENCH_KVM_DISK_CACHE        none (QEMU cache mode of both disks; recorded in every sample)
  BENCH_KVM_SCRATCH_MB        4096 (size of the /scratch disk)
  BENCH_KVM_MEMORY_MB         1024 (guest RAM when the scenario sets no memory limit)
  BENCH_KVM_CMDLINE_EXTRA     appended to the guest kernel's command line
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from bench.core import image as image_mod
from bench.core import procs
from bench.core.errors import BenchError, TierUnavailable
from bench.core.lazy import lazy
from bench.core.settings import settings
from bench.kernel import tc
from bench.tiers.base import (
    Availability,
    HostMemory,
    Instance,
    InstanceSpec,
    Tier,
    TierContext,
    host_memory,
)
from bench.tiers.kvm import accel as accel_mod
from bench.tiers.kvm import domxml, libvirtd
from bench.tiers.kvm import guest as guest_mod
from bench.tiers.kvm import limits as kvm_limits
from bench.tiers.kvm import net as kvm_net
from bench.tiers.kvm.console import console_tail
from bench.tiers.kvm.domxml import CacheMode, DomainConfig
from bench.tiers.kvm.instance import KvmInstance
from bench.tiers.kvm.net import NETWORK_PREFIX
from bench.tiers.kvm.runlock import hold_run_lock, lock_path, run_is_live
from bench.tune import firewall, hostnet

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy("libvirt")


PROBE_CMDLINE = "console=ttyS0 panic=-1 rdinit=/bench-kvm-probe-absent"
PROBE_MARKS = ("Freeing unused kernel", "Kernel panic")  # the kernel got through its init
TCG_SLOWDOWN = 15.0  # run timeouts are stretched this much when guests are emulated


def work_root() -> Path:
    return settings().work_dir


class KvmTier(Tier):
    name = "kvm"
    runs_own_kernel = True
    description = ("virtual machines through libvirt (KVM where it can boot a guest, else TCG "
                   "emulation, labelled); guest built from the bench image")
    packages = ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils", "dnsmasq-base",
                "libvirt-dev", "pkg-config")
    start_estimate_s = 60.0  # boot to a ready agent, then a clean shutdown, under TCG
    live_switches = kvm_limits.LIVE_SWITCHES
    cache_devices = "guest"
    cpu_share_inside = False  # the guest's clock runs on while its vCPU is throttled
    io_burst_s = 0.1  # QEMU's least throttle bucket, rate/10 (bps_max cannot be below bps)

    def cache_lab(self, instance: Instance, names: list[str], log: Callable[[str], None]) -> Any:
        from bench.tiers.kvm.cachedisks import attach_cache_disks

        assert isinstance(instance, KvmInstance)
        return attach_cache_disks(instance, names, log)

    def __init__(self) -> None:
        self.uri = libvirtd.uri()
        conf = settings()
        self.boot_timeout = conf.kvm_boot_timeout
        self.probe_timeout = conf.kvm_probe_timeout
        self.shutdown_timeout = conf.kvm_shutdown_timeout
        self.scratch_mb = conf.kvm_scratch_mb
        self.default_memory_mb = conf.kvm_memory_mb
        self.cmdline_extra = conf.kvm_cmdline_extra
        self.shutdown_mode = conf.kvm_shutdown
        self.disk_cache: CacheMode = conf.kvm_disk_cache
        self.accel_mode: accel_mod.Mode = conf.kvm_accel
        self._conn: libvirt.virConnect | None = None
        self._seq = itertools.count(1)
        self.network: kvm_net.RunNetwork | None = None
        self.network_name: str | None = None
        self.bridge = ""
        self.subnet: IPv4Network | None = None
        self._acceleration: accel_mod.Acceleration | None = None
        self._versions: dict[str, str] = {}
        self._lock: IO[str] | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, opened again if libvirtd went away and came back."""
        if self._conn is not None:
            try:
                alive = self._conn.isAlive()
            except libvirt.libvirtError:
                alive = False
            if not alive:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
        if self._conn is None:
            self._conn = libvirtd.connect(self.uri)
        return self._conn

    def ensure_running(self) -> list[str]:
        return libvirtd.ensure_running()

    def available(self) -> Availability:
        for tool in ("qemu-img", "mkfs.ext4"):
            if shutil.which(tool) is None:
                return Availability(False, f"{tool} is not installed.", "run `bench setup`.")
        try:
            conn = libvirtd.connect(self.uri)
        except TierUnavailable as exc:
            return Availability(False, exc.cause, exc.fix)
        slow = libvirtd.dev_kvm_problem() if libvirtd.is_local(self.uri) else None
        if slow:
            conn.close()
            return Availability(False, f"{slow}.", "run `bench setup` (gives /dev/kvm "
                                "root:kvm 0660, as udev does on Debian).")
        try:
            if "<domain type='qemu'" not in conn.getCapabilities().replace('"', "'"):
                return Availability(False, f"libvirt at {self.uri} offers no QEMU domains.",
                                    "apt-get install qemu-system-x86, then restart libvirtd.")
        finally:
            conn.close()
        img = image_mod.find()
        pending = "" if img is None or guest_mod.find(img) is not None else \
            " The guest is built from the bench image on first use (about a minute)."
        problem, _ = accel_mod.host_checks()
        if problem is None:
            return Availability(True, "KVM looks usable; a boot probe confirms it at run time."
                                + pending)
        return Availability(True, f"TCG only (results are emulated): {problem}{pending}")

    # -- per run ------------------------------------------------------------------------------
    def prepare(self, ctx: TierContext) -> None:
        super().prepare(ctx)
        self._lock = hold_run_lock(ctx.run_id)
        self.files_dir = ctx.workdir / "vm"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.guest = guest_mod.find(ctx.image) or guest_mod.build(ctx.image)
        self._versions = libvirtd.versions(self.conn)
        self.acceleration = self.detect_acceleration()
        self._make_network()

    @property
    def acceleration(self) -> accel_mod.Acceleration:
        if self._acceleration is None:
            raise BenchError("The kvm tier was used before prepare().", "call prepare() first.")
        return self._acceleration

    @acceleration.setter
    def acceleration(self, value: accel_mod.Acceleration) -> None:
        self._acceleration = value

    def detect_acceleration(self) -> accel_mod.Acceleration:
        found = accel_mod.detect(self.accel_mode, self.probe_kvm)
        if self.accel_mode == "kvm" and found.accelerator != "kvm":
            raise TierUnavailable(f"BENCH_KVM_ACCEL=kvm, but {found.reason}",
                                  "unset BENCH_KVM_ACCEL to fall back to TCG, or run on a host "
                                  "with hardware virtualisation (vmx/svm) and kvm_intel/kvm_amd.")
        return found

    def probe_kvm(self, host_cpu: bool = True) -> tuple[bool, str]:
        """Boot the guest kernel with KVM (no disk, an initramfs with no init) and see whether
        it gets through kernel init within the probe timeout; destroyed either way. The guests
        would run on the host's CPU model (`host_cpu`); QEMU's default model is for tests."""
        name = f"bench-{self.ctx.run_id}-kvm-probe"
        console = self.files_dir / f"{name}.console.log"
        cfg = DomainConfig(name=name, domain_type="kvm", run_id=self.ctx.run_id,
                           role="kvm-probe", vcpus=1, memory_mb=256, kernel=self.guest.kernel,
                           initrd=self.guest.initrd, cmdline=PROBE_CMDLINE,
                           console_log=console, agent=False, host_cpu=host_cpu)
        started = time.monotonic()
        try:
            domain = self.conn.createXML(domxml.domain_xml(cfg), 0)
        except libvirt.libvirtError as exc:
            return False, f"QEMU would not start with KVM: {exc.get_error_message()}"
        try:
            while time.monotonic() - started < self.probe_timeout:
                text = console.read_text(errors="replace") if console.exists() else ""
                if any(mark in text for mark in PROBE_MARKS):
                    return True, (f"a guest kernel got through init in "
                                  f"{time.monotonic() - started:.1f} s")
                time.sleep(0.1)
            return False, (f"its kernel had not finished init after {self.probe_timeout:.0f} s "
                           f"(destroyed; console: {console_tail(console, 3)})")
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
            console.unlink(missing_ok=True)

    def _make_network(self) -> None:
        self.network = kvm_net.RunNetwork(self.conn, self.ctx.run_id)
        self.network_name, self.bridge = self.network.name, self.network.bridge
        try:
            self.network.create()
        except BaseException as exc:
            self._remove(self.ctx.run_id)
            if not isinstance(exc, libvirt.libvirtError):
                raise
            raise TierUnavailable(f"libvirt could not create network {self.network_name}: "
                                  f"{exc.get_error_message()}",
                                  "run `bench cleanup`; dnsmasq-base must be installed.") from exc
        self.subnet = self.network.subnet

    def make_scratch(self, path: Path) -> None:
        with open(path, "wb") as fh:
            fh.truncate(self.scratch_mb << 20)
        # initialised now (no lazy init in the guest); `nodiscard`: the file is sparse already
        procs.run(["mkfs.ext4", "-q", "-F", "-L", "bench-scratch", "-E",
                   "lazy_itable_init=0,lazy_journal_init=0,nodiscard", str(path)], timeout=120)

    def start(self, spec: InstanceSpec) -> Instance:
        instance = self._new_instance(spec)
        instance.boot()
        return instance

    def start_many(self, specs: list[InstanceSpec]) -> list[Instance]:
        """Boot several guests at once (they boot in parallel); all or none."""
        instances = [self._new_instance(spec) for spec in specs]
        try:
            for instance in instances:
                instance.guarded(instance.launch)
            for instance in instances:
                instance.guarded(instance.await_ready)
        except BaseException:
            for instance in instances:
                with contextlib.suppress(Exception):
                    instance.stop()
            raise
        return list(instances)

    def _new_instance(self, spec: InstanceSpec) -> KvmInstance:
        return KvmInstance(spec, self, f"bench-{self.ctx.run_id}-{spec.role}-{next(self._seq)}")

    def finish(self) -> None:
        try:
            if hasattr(self, "ctx"):
                self._remove(self.ctx.run_id)
        finally:
            if self._lock is not None:
                lock_path(self.ctx.run_id).unlink(missing_ok=True)
                self._lock.close()  # releases the run's lock
                self._lock = None
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    def cleanup(self, run_id: str | None) -> list[str]:
        """Destroy and undefine our domains (recognised by their <metadata>), our networks
        (by name) and the runs' disk files. Runs that are still going (their bench process
        holds the run's lock) are left alone."""
        return self._remove(run_id, spare_live=True)

    def _remove(self, run_id: str | None, spare_live: bool = False) -> list[str]:
        def wanted(run: str | None) -> bool:
            if run is None or (run_id is not None and run != run_id):
                return False
            return not (spare_live and run_is_live(run))

        removed: list[str] = []
        try:
            conn = self.conn
        except TierUnavailable:
            conn = None
        if conn is not None:
            for domain in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    meta = domxml.domain_metadata(domain.XMLDesc(0))
                    if meta is None or not wanted(meta.get("run")):
                        continue
                    if domain.isActive():
                        domain.destroy()
                    if domain.isPersistent():
                        domain.undefine()
                    removed.append(f"domain {domain.name()}")
                    tc.remove_ifb(None, kvm_limits.ifb_name(str(meta.get("run")),
                                                            domain.name()))
            for network in conn.listAllNetworks():
                with contextlib.suppress(libvirt.libvirtError):
                    name = network.name()
                    if not name.startswith(NETWORK_PREFIX) or \
                            not wanted(name.removeprefix(NETWORK_PREFIX)):
                        continue
                    if network.isActive():
                        network.destroy()
                    if network.isPersistent():
                        network.undefine()
                    removed.append(f"network {name}")
        for files in sorted(work_root().glob(f"{run_id or '*'}/kvm/vm")):
            if not wanted(files.parent.parent.name):
                continue
            if any(files.iterdir()):
                removed.append(f"files {files}")
            shutil.rmtree(files, ignore_errors=True)
        own = self.ctx.run_id if hasattr(self, "ctx") else None
        for lock in sorted(lock_path("*").parent.glob(f"{run_id or '*'}.lock")):
            if lock.stem != own and wanted(lock.stem) and not run_is_live(lock.stem):
                lock.unlink(missing_ok=True)  # a dead run's lock file
        # host settings once the network is gone: this run's own, then the dead runs'
        if self.network is not None and self.network.run_id == run_id:
            removed += self.network.release()
            self.network = None
        return removed + firewall.recover("kvm", run_id) + hostnet.recover()

    def support_memory(self) -> HostMemory | None:
        """PSS of libvirtd and virtlogd, and of this run's dnsmasq."""
        if not libvirtd.is_local(self.uri):
            return None
        pids = libvirtd.daemon_pids("libvirtd") + libvirtd.daemon_pids("virtlogd")
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] == "dnsmasq" and any(
                        self.network_name and self.network_name in arg
                        for arg in proc.info["cmdline"] or []):
                    pids.append(proc.pid)
        return host_memory(pids)

    def timeout_factor(self) -> float:
        """Under TCG, Python runs about 15x slower than on the host here (sysbench 5-7x)."""
        return TCG_SLOWDOWN if self._acceleration is not None and \
            self._acceleration.emulated else 1.0

    def accel_facts(self) -> dict[str, Any]:
        found = self.acceleration
        return {"accelerator": found.accelerator, "emulated": found.emulated,
                "accelerator_reason": found.reason}

    def metadata(self) -> dict[str, Any]:
        if self._acceleration is None:
            return {"isolation": "virtual machine (libvirt)"}
        return {
            "isolation": "virtual machine (libvirt/QEMU)",
            **self.accel_facts(),
            "accelerator_checks": self.acceleration.checks,
            "libvirt_uri": self.uri,
            "qemu_user": "root (per-domain DAC label)",
            **self._versions,
            "guest": self.guest.hash,
            "guest_kernel": self.guest.manifest.get("kernel"),
            "guest_cmdline": " ".join(filter(None, [self.guest.cmdline, self.cmdline_extra])),
            "disk_cache": self.disk_cache,
            "startup_shutdown": self.shutdown_mode,
            "network": {"name": self.network_name, "bridge": self.bridge,
                        "subnet": str(self.subnet)},
        }

