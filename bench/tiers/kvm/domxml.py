"""libvirt XML for the kvm tier's domains and networks, built with ElementTree (never by string
formatting of user input). Every domain carries <metadata> naming the bench run and role, which
is how `cleanup` recognises ours."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

METADATA_NS = "urn:x-bench:kvm:1"
METADATA_PREFIX = "bench"
CacheMode = Literal["none", "writethrough", "writeback", "directsync", "unsafe", "default"]
CACHE_MODES: tuple[CacheMode, ...] = ("none", "writethrough", "writeback", "directsync",
                                      "unsafe", "default")
QUOTA_PERIOD_US = 100_000


@dataclass(frozen=True)
class DomainConfig:
    name: str
    domain_type: Literal["kvm", "qemu"]
    run_id: str
    role: str
    vcpus: int
    memory_mb: int
    kernel: Path
    initrd: Path
    cmdline: str
    console_log: Path
    root_disk: Path | None = None  # qcow2 overlay
    scratch_disk: Path | None = None  # raw file on the host's file system
    disk_cache: CacheMode = "none"
    network: str | None = None
    cpuset: tuple[int, ...] = ()
    cpu_quota: float | None = None  # in CPUs, for all vCPUs together (fractional limits)
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None
    memory_max_mb: int | None = None  # above memory_mb: RAM behind a virtio balloon (switches)
    net_kbytes: int | None = None  # libvirt <bandwidth> outbound average, KiB/s (tc police)
    agent: bool = True
    dac_label: str = "+0:+0"  # +uid:+gid QEMU runs as (bench.tiers.kvm.qemuuser)
    host_cpu: bool = True  # under KVM: the host's CPU (host-passthrough), else QEMU's default

    @property
    def io_mode(self) -> str:
        """io='native' needs O_DIRECT, i.e. a cache mode that bypasses the host's page cache."""
        return "native" if self.disk_cache in ("none", "directsync") else "threads"


TCG_CPU_MODEL = "Nehalem"


def vcpu_quota_us(cpus: float, vcpus: int) -> int:
    """The CFS quota of each vCPU thread for `cpus` CPUs over `vcpus` vCPUs in all."""
    return max(1000, round(cpus / vcpus * QUOTA_PERIOD_US))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _disk(devices: ET.Element, path: Path, fmt: str, target: str, cache: str, io: str,
          read_bps: int | None = None, write_bps: int | None = None,
          read_iops: int | None = None, write_iops: int | None = None) -> ET.Element:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, cache=cache, io=io, discard="unmap")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus="virtio")
    limits = {"read_bytes_sec": read_bps, "write_bytes_sec": write_bps,
              "read_iops_sec": read_iops, "write_iops_sec": write_iops}
    if any(limits.values()):
        tune = _sub(disk, "iotune")
        for tag, value in limits.items():
            if value:
                _sub(tune, tag, str(value))
    return disk


def disk_xml(path: Path, target: str, readonly: bool = False, cache: str = "none",
             **iotune: int | None) -> str:
    """A raw virtio disk to hot-plug into a running domain (attachDeviceFlags). A file on
    tmpfs cannot be opened with O_DIRECT: give it cache="writeback"."""
    io = "native" if cache in ("none", "directsync") else "threads"
    disk = _disk(ET.Element("devices"), path, "raw", target, cache, io, **iotune)
    if readonly:
        _sub(disk, "readonly")
    return ET.tostring(disk, encoding="unicode")



def domain_xml(cfg: DomainConfig) -> str:
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    dom = ET.Element("domain", type=cfg.domain_type)
    _sub(dom, "name", cfg.name)
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{METADATA_NS}}}instance", {"run": cfg.run_id, "role": cfg.role})
    _sub(dom, "memory", str(max(cfg.memory_mb, cfg.memory_max_mb or 0)), unit="MiB")
    _sub(dom, "currentMemory", str(cfg.memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(cfg.vcpus), placement="static")
    if cfg.cpuset or cfg.cpu_quota:
        tune = _sub(dom, "cputune")
        for index in range(cfg.vcpus) if cfg.cpuset else ():
            _sub(tune, "vcpupin", vcpu=str(index), cpuset=str(cfg.cpuset[index % len(cfg.cpuset)]))
        if cfg.cpuset:
            _sub(tune, "emulatorpin", cpuset=",".join(str(c) for c in cfg.cpuset))
        if cfg.cpu_quota:  # per vCPU thread: QEMU's own threads are not charged to the guest
            _sub(tune, "period", str(QUOTA_PERIOD_US))
            _sub(tune, "quota", str(vcpu_quota_us(cfg.cpu_quota, cfg.vcpus)))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64")
    _sub(os_, "kernel", str(cfg.kernel))
    _sub(os_, "initrd", str(cfg.initrd))
    _sub(os_, "cmdline", cfg.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    # KVM: the host's CPU as it is. TCG: Nehalem (x86-64-v2: SSE4.2, POPCNT), the baseline of
    # today's binaries (NumPy 2.4 wheels die with SIGILL on QEMU's default qemu64); not
    # `-cpu max`, whose AVX2 emulation in QEMU 7.2 broke systemd and mount in guests here.
    if cfg.domain_type == "kvm" and cfg.host_cpu:
        _sub(dom, "cpu", mode="host-passthrough")
    elif cfg.domain_type == "qemu":
        cpu = _sub(dom, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", TCG_CPU_MODEL, fallback="forbid")
    _sub(dom, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    if cfg.root_disk is not None:
        _disk(devices, cfg.root_disk, "qcow2", "vda", cfg.disk_cache, cfg.io_mode)
    if cfg.scratch_disk is not None:
        _disk(devices, cfg.scratch_disk, "raw", "vdb", cfg.disk_cache, cfg.io_mode,
              cfg.io_read_bps, cfg.io_write_bps, cfg.io_read_iops, cfg.io_write_iops)
    if cfg.network is not None:
        nic = _sub(devices, "interface", type="network")
        _sub(nic, "source", network=cfg.network)
        _sub(nic, "model", type="virtio")
        if cfg.net_kbytes:  # outbound = what the guest sends (tc police on the tap's ingress)
            bandwidth = _sub(nic, "bandwidth")
            _sub(bandwidth, "outbound", average=str(cfg.net_kbytes),
                 burst=str(max(64, cfg.net_kbytes // 100)))
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(cfg.console_log))
    _sub(serial, "target", port="0")
    if cfg.agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if cfg.memory_max_mb and cfg.memory_max_mb > cfg.memory_mb:  # switches: a balloon
        _sub(devices, "memballoon", model="virtio")
    else:
        _sub(devices, "memballoon", model="none")  # guest RAM stays what the limit says
    # a static label: QEMU runs as the user bench chose and gave the run's files to, and
    # libvirt need not chown anything back and forth
    label = _sub(dom, "seclabel", type="static", model="dac", relabel="no")
    _sub(label, "label", cfg.dac_label)
    return ET.tostring(dom, encoding="unicode")


def domain_metadata(xml: str) -> dict[str, str] | None:
    """The run and role a domain's XML names, or None if it is not one of ours."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt's own XML)
    except ET.ParseError:
        return None
    found = root.find(f"metadata/{{{METADATA_NS}}}instance")
    return dict(found.attrib) if found is not None else None


def network_xml(name: str, bridge: str, subnet: IPv4Network) -> str:
    """A NAT network with DHCP: guests reach each other and the host, and nothing else needs
    to be routed to them."""
    hosts = list(subnet.hosts())
    net = ET.Element("network")
    _sub(net, "name", name)
    _sub(net, "forward", mode="nat")
    _sub(net, "bridge", name=bridge, stp="off", delay="0")
    ip = _sub(net, "ip", address=str(hosts[0]), netmask=str(subnet.netmask))
    dhcp = _sub(ip, "dhcp")
    _sub(dhcp, "range", start=str(hosts[9]), end=str(hosts[-2]))
    return ET.tostring(net, encoding="unicode")
