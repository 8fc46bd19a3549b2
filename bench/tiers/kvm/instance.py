"""A guest of the kvm tier: boot, readiness, commands through the agent, stop."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.core import procs
from bench.core.errors import BenchError, TierUnavailable
from bench.core.lazy import lazy
from bench.core.procs import Completed
from bench.kernel import sysmount
from bench.tiers.base import (
    Instance,
    InstanceSpec,
    SwitchChange,
    host_memory,
)
from bench.tiers.kvm import clock, domxml, guestpids, libvirtd, qemuuser
from bench.tiers.kvm.agent import Agent, AgentError, GuestProcess, completed
from bench.tiers.kvm.console import console_tail, stamp_seconds
from bench.tiers.kvm.domxml import DomainConfig
from bench.tiers.kvm.limits import GuestLimits, net_kbytes, shaper, shaper_note
from bench.tiers.kvm.limits import tap_of as limits_tap

if TYPE_CHECKING:
    import libvirt

    from bench.tiers.kvm.tier import KvmTier
else:
    libvirt = lazy("libvirt")


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
        self.pids_group = False  # the spec's pids limit, applied inside the guest
        self.live = GuestLimits(self)
        self.config = self._config()
        self.qemu = qemuuser.ROOT

    @property
    def agent(self) -> Agent:
        if self.domain is None:
            raise AgentError(f"Guest {self.name} is not running.", "start it first.")
        return Agent(self.domain)

    def _config(self) -> DomainConfig:
        """Limits as domain XML; with switches planned (spec.ceiling): vCPUs for the largest
        CPU limit, RAM up to the largest memory limit behind a balloon at the starting one."""
        limits, top = self.spec.limits, self.spec.ceiling or self.spec.limits
        cpuset = tuple(_parse_cpuset(limits.cpuset)) if limits.cpuset else ()
        host_cpus = len(cpuset) if cpuset else (os.cpu_count() or 1)
        most = max(limits.cpus or 0, top.cpus or 0)
        vcpus = max(1, math.ceil(most)) if limits.cpus else host_cpus
        quota = limits.cpus if limits.cpus and limits.cpus < vcpus else None
        memory = limits.memory_mb or self.tier.default_memory_mb
        police = limits.net_mbit is not None and shaper() == "libvirt-bandwidth"
        cmdline = " ".join(filter(None, [self.tier.guest.cmdline, self.tier.cmdline_extra]))
        return DomainConfig(
            name=self.name, domain_type=self.tier.acceleration.domain_type,
            run_id=self.tier.ctx.run_id, role=self.spec.role, vcpus=vcpus,
            memory_mb=limits.memory_mb or self.tier.default_memory_mb,
            kernel=self.tier.guest.kernel, initrd=self.tier.guest.initrd, cmdline=cmdline,
            console_log=self.console, root_disk=self.overlay, scratch_disk=self.scratch,
            disk_cache=self.tier.disk_cache, network=self.tier.network_name, cpuset=cpuset,
            cpu_quota=quota, io_read_bps=limits.io_read_bps, io_write_bps=limits.io_write_bps,
            io_read_iops=limits.io_read_iops, io_write_iops=limits.io_write_iops,
            memory_max_mb=top.memory_mb if (top.memory_mb or 0) > memory else None,
            net_kbytes=net_kbytes(limits.net_mbit) if police and limits.net_mbit else None)

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
        self.console.touch()
        guest = self.tier.guest
        own = [self.overlay, self.scratch, self.console]
        self.qemu = qemuuser.choose([guest.disk, guest.kernel, guest.initrd], own)
        for path in own:  # the files only: the directory stays root's
            self.qemu.give(path)
        self.config = dataclasses.replace(self.config, dac_label=self.qemu.label)
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
        ceiling = self.spec.ceiling
        self.live.start_network(self.spec.limits.net_mbit,
                                ceiling is not None and ceiling.net_mbit is not None)
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
        if self.spec.limits.pids:
            guestpids.make(self.agent, self.spec.limits.pids)
            self.pids_group = True
        if self.spec.command is None:
            self._wait_address(deadline)
            self.phases.mark("network_ready")
            self._sync_clock()
        else:
            self.phases.mark("exec_call")
            self._command_pid = self.agent.start(self._inside(list(self.spec.command)))

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
    def _inside(self, argv: list[str]) -> list[str]:
        return guestpids.inside(argv) if self.pids_group else argv

    def exec(self, argv: list[str], timeout: float) -> Completed:
        return self.agent.run(self._inside(argv), timeout)

    def spawn(self, argv: list[str]) -> GuestProcess:
        pid = self.agent.start(["setsid", *self._inside(argv)])
        return GuestProcess(self.agent, argv, pid)

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
        stamp = stamp_seconds(done.stdout)
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
        self.live.stop_network()
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

    def _switch_one(self, limit: str, value: Any) -> SwitchChange:
        return self.live.switch_one(limit, value)

    def read_limits(self) -> dict[str, Any]:
        found = self.live.read()
        if self.pids_group:
            found["pids"] = guestpids.read(self.agent)
        return found

    def memory_seen_mb(self) -> float | None:
        return self.live.guest_memtotal_mb()

    def cpu_seconds(self) -> float | None:
        """The vCPU threads' CPU time (what the per-vCPU quota caps; QEMU's own threads are
        not charged), from /proc on the host."""
        return self.live.vcpu_seconds()

    def host_clock(self, monotonic_s: float) -> float | None:
        """The guest's own clock, through the offset measured when it became ready."""
        return self.sync.to_host(monotonic_s) if self.sync is not None else None

    def host_link(self) -> str | None:
        """The host side of the guest's NIC (its tap): what the host sends the guest leaves
        through it."""
        return self.live.tap or (limits_tap(self.domain) if self.domain else None)

    def memory_bytes(self) -> int | None:
        """The QEMU process's proportional set size: what the guest costs the host."""
        if not self.pid:
            return None
        used = host_memory([self.pid])
        return used.pss if used.processes else None

    def memory_report(self) -> dict[str, int]:
        """libvirt's memory stats in bytes (`libvirt_actual`, `libvirt_rss`; the guest's own
        view, `libvirt_unused` and the rest, only with a balloon that reports them); `usage`
        is what libvirt reports the guest uses on the host, its QEMU RSS."""
        found: dict[str, int] = {}
        if self.domain is not None:
            with contextlib.suppress(libvirt.libvirtError):
                found |= {f"libvirt_{key}": value * 1024 for key, value
                          in self.domain.memoryStats().items() if key != "last_update"}
        if "libvirt_rss" in found:
            found["usage"] = found["libvirt_rss"]
        return found

    def host_memory_counter(self, counter: str) -> str | None:
        """Guest memory of every kind (its page cache and slab too) is QEMU's anonymous
        memory on the host, charged when the guest first touches a page: the QEMU process's
        PSS holds it, free of the other processes' churn in the host's counters."""
        return None

    def host_pids(self) -> set[int] | None:
        return {self.pid} if self.pid else None

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
            "qemu_user": self.qemu.name + (f" ({self.qemu.reason})" if self.qemu.reason else ""),
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
        if self.config.io_read_bps or self.config.io_write_bps or self.config.io_read_iops \
                or self.config.io_write_iops:
            found["io_limit"] = "QEMU iotune on the scratch disk (/dev/vdb)"
        if self.config.memory_max_mb:
            found["memory_balloon"] = f"virtio, up to {self.config.memory_max_mb} MB"
        if self.pids_group:
            found["pids_limit"] = guestpids.HOW
        if self.live.net_shaper:
            found["net_shaper"] = shaper_note(self.live.net_shaper)
            found["network_path"] += f" (egress shaped: {self.live.net_shaper})"
        if self.sync is not None:
            found["clock_sync_uncertainty_ms"] = round(self.sync.uncertainty_s * 1e3, 3)
        return found



def _parse_cpuset(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus

