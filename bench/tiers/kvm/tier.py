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
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import IO, Any, cast

import libvirt
import psutil

from bench.core import image as image_mod
from bench.core import procs
from bench.core.errors import BenchError, TierUnavailable
from bench.core.procs import Completed
from bench.kernel import sysmount
from bench.tiers.base import (
    Availability,
    Background,
    Instance,
    InstanceSpec,
    Tier,
    TierContext,
)
from bench.tiers.kvm import accel as accel_mod
from bench.tiers.kvm import clock, domxml, libvirtd
from bench.tiers.kvm import guest as guest_mod
from bench.tiers.kvm.agent import Agent, AgentError, completed
from bench.tiers.kvm.domxml import CACHE_MODES, CacheMode, DomainConfig

NETWORK_PREFIX = "bench-kvm-"
PROBE_CMDLINE = "console=ttyS0 panic=-1 rdinit=/bench-kvm-probe-absent"
PROBE_MARKS = ("Freeing unused kernel", "Kernel panic")  # the kernel got through its init
SUBNETS = [IPv4Network(f"192.168.{n}.0/24") for n in range(160, 250)]
CONSOLE_TAIL_LINES = 15
TCG_SLOWDOWN = 15.0  # run timeouts are stretched this much when guests are emulated


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise BenchError(f"{name}={os.environ[name]!r} is not a number.",
                         f"set {name} to seconds, e.g. {default:g}.") from None


def work_root() -> Path:
    return Path(os.environ.get("BENCH_WORK_DIR", "/var/tmp/bench"))


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last distinct lines of a guest's serial console, without terminal escapes."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail: list[str] = []
    for raw in text.replace("\r", "\n").splitlines():
        line = " ".join(ANSI.sub("", raw).split())
        if line and line not in tail[-3:]:
            tail.append(line)
    return " | ".join(tail[-lines:]) or "(no console output)"


class KvmBackground(Background):
    def __init__(self, instance: KvmInstance, argv: list[str], pid: int) -> None:
        self.instance = instance
        self.argv = argv
        self.pid = pid

    def stop(self) -> str:
        agent = self.instance.agent
        state = agent.status(self.pid)
        if not state.get("exited"):
            agent.kill_group(self.pid, "TERM")
            end = time.monotonic() + 3
            while not state.get("exited") and time.monotonic() < end:
                time.sleep(0.05)
                state = agent.status(self.pid)
            if not state.get("exited"):
                agent.kill_group(self.pid, "KILL")
                state = agent.reap(self.pid)
        done = completed(self.argv, state, 0.0)
        return done.stdout + done.stderr


class KvmInstance(Instance):
    def __init__(self, spec: InstanceSpec, tier: KvmTier, name: str) -> None:
        super().__init__(spec)
        self.tier = tier
        self.name = name
        self.files = tier.files_dir / name
        self.overlay = self.files / "root.qcow2"
        self.scratch = self.files / "scratch.raw"
        self.console = self.files / "console.log"
        self.domain: libvirt.virDomain | None = None
        self.pid: int | None = None
        self.ip: str | None = None
        self.sync: clock.ClockSync | None = None
        self._command_pid: int | None = None
        self._output = ""
        self._stopped = False
        self.config = self._config()

    @property
    def agent(self) -> Agent:
        if self.domain is None:
            raise AgentError(f"Guest {self.name} is not running.", "start it first.")
        return Agent(self.domain)

    def _config(self) -> DomainConfig:
        limits = self.spec.limits
        cpuset = tuple(_parse_cpuset(limits.cpuset)) if limits.cpuset else ()
        host_cpus = len(cpuset) if cpuset else (os.cpu_count() or 1)
        vcpus = max(1, math.ceil(limits.cpus)) if limits.cpus else host_cpus
        quota = limits.cpus if limits.cpus and limits.cpus < vcpus else None
        cmdline = " ".join(filter(None, [self.tier.guest.cmdline, self.tier.cmdline_extra]))
        return DomainConfig(
            name=self.name, domain_type=self.tier.acceleration.domain_type,
            run_id=self.tier.ctx.run_id, role=self.spec.role, vcpus=vcpus,
            memory_mb=limits.memory_mb or self.tier.default_memory_mb,
            kernel=self.tier.guest.kernel, initrd=self.tier.guest.initrd, cmdline=cmdline,
            console_log=self.console, root_disk=self.overlay, scratch_disk=self.scratch,
            disk_cache=self.tier.disk_cache, network=self.tier.network_name, cpuset=cpuset,
            cpu_quota=quota, io_read_bps=limits.io_read_bps, io_write_bps=limits.io_write_bps)

    # -- start-up ------------------------------------------------------------------------------
    def boot(self) -> None:
        """Launch and wait until ready; on any failure (or Ctrl-C) the domain and its files
        are removed before the error goes on."""
        self.guarded(self.launch)
        self.guarded(self.await_ready)

    def guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as exc:
            self._save_console("failed-boot")
            self.stop()
            if isinstance(exc, libvirt.libvirtError):
                raise BenchError(f"libvirt failed while starting guest {self.name}: "
                                 f"{exc.get_error_message()}",
                                 "check that libvirtd runs (`bench setup` starts it) and see "
                                 "/var/log/libvirt/qemu/.") from exc
            raise

    def launch(self) -> None:
        """Make the disks, define the domain and start it (returns once QEMU runs)."""
        self.phases.mark("create")
        self.files.mkdir(parents=True)
        procs.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                   "-b", str(self.tier.guest.disk), str(self.overlay)], timeout=60)
        self.tier.make_scratch(self.scratch)
        self.domain = self.tier.conn.defineXML(domxml.domain_xml(self.config))
        self.phases.mark("defined")
        self.phases.mark("start_call")
        try:
            self.domain.create()
        except libvirt.libvirtError as exc:
            raise BenchError(f"libvirt could not start guest {self.name}: "
                             f"{exc.get_error_message()}",
                             "see /var/log/libvirt/qemu/ and `bench doctor`.") from exc
        self.phases.mark("start_returned")
        self.pid = libvirtd.qemu_pid(self.name)
        started = libvirtd.started_at_monotonic(self.pid) if self.pid else None
        if started is not None:
            self.phases.mark("qemu_process", started)

    def await_ready(self) -> None:
        """Wait for the agent (and, for a long-lived instance, the network); a command
        instance's command is started here. Past the boot timeout the guest is destroyed."""
        deadline = self.phases.stamps["start_call"] + self.tier.boot_timeout
        self._wait_ready(deadline)
        self.phases.mark("ready")
        if self.spec.command is None:
            self._wait_address(deadline)
            self.phases.mark("network_ready")
            self._sync_clock()
        else:
            self.phases.mark("exec_call")
            self._command_pid = self.agent.start(list(self.spec.command))

    def _not_ready(self, why: str) -> BenchError:
        return BenchError(
            f"Guest {self.name} ({self.config.domain_type}) {why} within its "
            f"{self.tier.boot_timeout:.0f} s boot timeout; it was destroyed. Last console "
            f"lines: {console_tail(self.console)}",
            "raise BENCH_KVM_BOOT_TIMEOUT on a slow (TCG) host, or read the console lines "
            "above: a kernel or init failure shows there.")

    def _wait_ready(self, deadline: float) -> None:
        assert self.domain is not None
        agent = Agent(self.domain)
        while True:
            if agent.ping(timeout=1):
                return
            if not self.domain.isActive():
                raise BenchError(
                    f"Guest {self.name} stopped before its agent answered. Last console lines: "
                    f"{console_tail(self.console)}",
                    "read the console lines above: a kernel panic or init failure shows there.")
            if time.monotonic() >= deadline:
                raise self._not_ready("did not answer on its guest agent")
            time.sleep(0.05)

    def _wait_address(self, deadline: float) -> None:
        while True:
            with contextlib.suppress(AgentError):
                self.ip = self.agent.ipv4("eth0")
            if self.ip:
                return
            if time.monotonic() >= deadline:
                raise self._not_ready("got no IPv4 address on eth0 (DHCP)")
            time.sleep(0.1)

    def _sync_clock(self) -> None:
        """Put the guest's clock on the host's and carry the console's boot stamps over."""
        agent = self.agent
        self.sync = clock.sync(
            lambda: clock.timer_list_now(agent.read_file("/proc/timer_list").decode()))
        with contextlib.suppress(OSError):
            events = clock.console_events(self.console.read_text(errors="replace"))
            for name, guest_s in events.items():
                self.phases.mark(name, self.sync.to_host(guest_s))

    # -- the Instance contract -----------------------------------------------------------------
    def exec(self, argv: list[str], timeout: float) -> Completed:
        return self.agent.run(argv, timeout)

    def spawn(self, argv: list[str]) -> Background:
        pid = self.agent.start(["setsid", *argv])
        return KvmBackground(self, argv, pid)

    def address(self) -> str:
        if self.ip is None:
            self.ip = self.agent.ipv4("eth0")
        if self.ip is None:
            raise BenchError(f"Guest {self.name} has no IPv4 address on eth0.",
                             "see its console log; is systemd-networkd running in the guest?")
        return self.ip

    def wait(self, timeout: float) -> int:
        """For a command instance: wait for its command, then read the clocks (the stamp's
        guest time becomes `first_instruction` on the host's clock)."""
        assert self._command_pid is not None, "wait() is for instances started with a command"
        argv = list(self.spec.command or [])
        state = self.agent.wait(self._command_pid, argv, time.monotonic() + timeout, timeout)
        self.phases.mark("exit")
        done = completed(argv, state, 0.0)
        self._output = done.stdout + done.stderr
        self._sync_clock()
        stamp = _stamp_seconds(done.stdout)
        if stamp is not None and self.sync is not None:
            self.phases.mark("first_instruction", self.sync.to_host(stamp))
        return done.returncode

    def output(self) -> str:
        return self._output

    def read_file(self, path: str) -> bytes:
        return self.agent.read_file(path)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.domain is not None:
            with contextlib.suppress(libvirt.libvirtError, TierUnavailable):
                # a fresh handle: the one we hold dies with its connection (libvirtd restarted)
                self.domain = self.tier.conn.lookupByName(self.name)
            with contextlib.suppress(libvirt.libvirtError):
                if self.domain.isActive():
                    if (self.spec.command is not None and "ready" in self.phases.stamps
                            and self.tier.shutdown_mode == "clean"):
                        self._shutdown_cleanly()
                    if self.domain.isActive():
                        self.domain.destroy()
                self.phases.mark("shutdown")
            with contextlib.suppress(libvirt.libvirtError):
                self.domain.undefine()
        shutil.rmtree(self.files, ignore_errors=True)
        if "create" in self.phases.stamps:
            self.phases.mark("removed")

    def _shutdown_cleanly(self) -> None:
        assert self.domain is not None
        # not the agent's guest-shutdown: it runs `shutdown +0`, which needs logind and D-Bus
        with contextlib.suppress(AgentError):
            self.agent.start(["systemctl", "poweroff", "--no-block"], capture=False)
        end = time.monotonic() + self.tier.shutdown_timeout
        while time.monotonic() < end:
            if not self.domain.isActive():
                return
            time.sleep(0.05)

    def _save_console(self, why: str) -> None:
        """Keep a failed guest's console in the run's raw/ directory."""
        with contextlib.suppress(OSError, AttributeError):
            if self.console.exists():
                shutil.copyfile(self.console,
                                self.tier.ctx.raw_dir / f"kvm-{self.name}-{why}-console.log")

    def memory_bytes(self) -> int | None:
        """The QEMU process's proportional set size: what the guest costs the host."""
        return libvirtd.pss_bytes([self.pid]) if self.pid else None

    def metadata(self) -> dict[str, Any]:
        scratch_fs = sysmount.filesystem_of(self.tier.files_dir)
        found = {
            **self.tier.accel_facts(),
            "network_path": f"virtio-net over libvirt NAT bridge {self.tier.bridge}",
            "scratch_mode": "virtio-blk disk (raw file on the host)",
            "scratch_fs": "ext4 (in the guest)",
            "scratch_device": "/dev/vdb (virtio-blk)",
            "scratch_backing_fs": scratch_fs["fstype"],
            "scratch_backing_device": scratch_fs["device"],
            "disk_cache": self.config.disk_cache,
            "disk_io": self.config.io_mode,
            "guest_cpu": "host-passthrough" if self.config.domain_type == "kvm"
            else "qemu64 (QEMU's TCG default)",
            "vcpus": self.config.vcpus,
            "memory_mb": self.config.memory_mb,
        }
        if self.spec.network == "host":
            found["network_note"] = "a VM has no host network mode: it used the NAT bridge"
        if self.spec.scratch == "bind":
            found["scratch_note"] = "a VM's scratch is always its own disk (a host file)"
        if self.config.cpuset:
            found["vcpu_pinning"] = list(self.config.cpuset)
        if self.config.cpu_quota:
            found["cpu_quota"] = self.config.cpu_quota
        if self.config.io_read_bps or self.config.io_write_bps:
            found["io_limit"] = "QEMU iotune on the scratch disk (/dev/vdb)"
        if self.sync is not None:
            found["clock_sync_uncertainty_ms"] = round(self.sync.uncertainty_s * 1e3, 3)
        return found


class KvmTier(Tier):
    name = "kvm"
    description = ("virtual machines through libvirt (KVM where it can boot a guest, else TCG "
                   "emulation, labelled); guest built from the bench image")
    packages = ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils", "dnsmasq-base",
                "libvirt-dev", "pkg-config")
    start_estimate_s = 60.0  # boot to a ready agent, then a clean shutdown, under TCG
    cache_devices = "guest"

    def cache_lab(self, instance: Instance, names: list[str],
                  log: Callable[[str], None]) -> Any:
        from bench.tiers.kvm.cachedisks import attach_cache_disks

        assert isinstance(instance, KvmInstance)
        return attach_cache_disks(instance, names, log)

    def __init__(self) -> None:
        self.uri = libvirtd.uri()
        self.boot_timeout = _env_float("BENCH_KVM_BOOT_TIMEOUT", 120.0)
        self.probe_timeout = _env_float("BENCH_KVM_PROBE_TIMEOUT", 20.0)
        self.shutdown_timeout = _env_float("BENCH_KVM_SHUTDOWN_TIMEOUT", 30.0)
        self.scratch_mb = int(_env_float("BENCH_KVM_SCRATCH_MB", 4096))
        self.default_memory_mb = int(_env_float("BENCH_KVM_MEMORY_MB", 1024))
        self.cmdline_extra = os.environ.get("BENCH_KVM_CMDLINE_EXTRA", "")
        self.shutdown_mode = os.environ.get("BENCH_KVM_SHUTDOWN", "clean")
        if self.shutdown_mode not in ("clean", "destroy"):
            raise BenchError(f"BENCH_KVM_SHUTDOWN={self.shutdown_mode!r} is not clean or destroy.",
                             "unset it (clean: `systemctl poweroff` in the guest) or set destroy.")
        cache = os.environ.get("BENCH_KVM_DISK_CACHE", "none")
        if cache not in CACHE_MODES:
            raise BenchError(f"BENCH_KVM_DISK_CACHE={cache!r} is not a QEMU cache mode.",
                             f"use one of: {', '.join(CACHE_MODES)}.")
        self.disk_cache: CacheMode = cache
        mode = os.environ.get("BENCH_KVM_ACCEL", "auto")
        if mode not in ("auto", "kvm", "tcg"):
            raise BenchError(f"BENCH_KVM_ACCEL={mode!r} is not auto, kvm or tcg.",
                             "unset it (auto) or set kvm or tcg.")
        self.accel_mode = cast(accel_mod.Mode, mode)
        self._conn: libvirt.virConnect | None = None
        self._seq = itertools.count(1)
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
        run_id = self.ctx.run_id
        self.network_name = f"{NETWORK_PREFIX}{run_id}"
        self.bridge = "bk" + hashlib.sha256(run_id.encode()).hexdigest()[:10]
        self.subnet = self._free_subnet()
        xml = domxml.network_xml(self.network_name, self.bridge, self.subnet)
        try:
            network = self.conn.networkDefineXML(xml)
            network.create()
        except libvirt.libvirtError as exc:
            self._remove(run_id)
            raise TierUnavailable(f"libvirt could not create network {self.network_name}: "
                                  f"{exc.get_error_message()}",
                                  "run `bench cleanup`; dnsmasq-base must be installed.") from exc

    def _free_subnet(self) -> IPv4Network:
        taken = [ip_network(f"{a.address}/{a.netmask}", strict=False)
                 for addrs in psutil.net_if_addrs().values() for a in addrs
                 if a.family.name == "AF_INET" and a.netmask]
        taken += _routes()
        for network in self.conn.listAllNetworks():
            with contextlib.suppress(libvirt.libvirtError, ValueError):
                taken += _network_subnets(network.XMLDesc())
        for candidate in SUBNETS:
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise TierUnavailable("No free 192.168.160-249.0/24 subnet for the guests' network.",
                              "run `bench cleanup` to remove old bench networks.")

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
        if hasattr(self, "ctx"):
            self._remove(self.ctx.run_id)
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
        return removed

    def support_memory_bytes(self) -> int | None:
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
        return libvirtd.pss_bytes(pids)

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


def lock_path(run_id: str) -> Path:
    return Path(os.environ.get("BENCH_KVM_LOCK_DIR", "/run/lock/bench-kvm")) / f"{run_id}.lock"


def hold_run_lock(run_id: str) -> IO[str]:
    """Lock the run for as long as this process lives (the kernel drops it if we die), so that
    `bench cleanup` in another shell never destroys the guests of a run that is still going."""
    path = lock_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 (held until finish())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BenchError(f"Another bench process is running run {run_id} (it holds {path}).",
                         "wait for it to finish, or stop it first.") from None
    return handle


def run_is_live(run_id: str) -> bool:
    path = lock_path(run_id)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _stamp_seconds(text: str) -> float | None:
    """bench-stamp's reading of the guest's CLOCK_MONOTONIC, in seconds."""
    for line in text.splitlines():
        if '"bench-stamp"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["monotonic_ns"]) / 1e9
    return None


def _parse_cpuset(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def _routes() -> list[IPv4Network]:
    """IPv4 routes of the host (/proc/net/route), to keep the guests' subnet clear of them."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            # addresses are hexadecimal in the host's (little-endian) byte order
            dest = IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            if int(mask):  # skip the default route: it overlaps everything
                found.append(IPv4Network(f"{dest}/{mask}", strict=False))
    return found


def _network_subnets(xml: str) -> list[IPv4Network]:
    found = []
    for ip in ET.fromstring(xml).iter("ip"):  # noqa: S314 (libvirt's own XML)
        address, netmask = ip.get("address"), ip.get("netmask")
        prefix = ip.get("prefix")
        if address and (netmask or prefix) and ":" not in address:
            found.append(IPv4Network(f"{address}/{netmask or prefix}", strict=False))
    return found
