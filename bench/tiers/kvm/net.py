"""The kvm tier's per-run NAT network: a libvirt network on a subnet nobody else uses."""

from __future__ import annotations

import contextlib
import hashlib
import xml.etree.ElementTree as ET
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from bench.core.errors import TierUnavailable
from bench.core.lazy import lazy
from bench.tiers.kvm import domxml

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy("libvirt")


NETWORK_PREFIX = "bench-kvm-"
SUBNETS = [IPv4Network(f"192.168.{n}.0/24") for n in range(160, 250)]


def make_network(conn: libvirt.virConnect, run_id: str) -> tuple[str, str, IPv4Network]:
    """Define and start the run's NAT network; (network name, bridge, subnet)."""
    name = f"{NETWORK_PREFIX}{run_id}"
    bridge = "bk" + hashlib.sha256(run_id.encode()).hexdigest()[:10]
    subnet = free_subnet(conn)
    network = conn.networkDefineXML(domxml.network_xml(name, bridge, subnet))
    network.create()
    return name, bridge, subnet


def free_subnet(conn: libvirt.virConnect) -> IPv4Network:
    taken = [ip_network(f"{a.address}/{a.netmask}", strict=False)
             for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family.name == "AF_INET" and a.netmask]
    taken += _routes()
    for network in conn.listAllNetworks():
        with contextlib.suppress(libvirt.libvirtError, ValueError):
            taken += _network_subnets(network.XMLDesc())
    for candidate in SUBNETS:
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise TierUnavailable("No free 192.168.160-249.0/24 subnet for the guests' network.",
                          "run `bench cleanup` to remove old bench networks.")


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
