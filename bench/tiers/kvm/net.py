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
from bench.tune import firewall, hostnet

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy("libvirt")


NETWORK_PREFIX = "bench-kvm-"
SUBNETS = [IPv4Network(f"192.168.{n}.0/24") for n in range(160, 250)]
# libvirt's own chains (iptables backend), made on the first network start of a daemon's life
LIBVIRT_CHAINS = [("filter", "INPUT", "LIBVIRT_INP"), ("filter", "OUTPUT", "LIBVIRT_OUT"),
                  ("filter", "FORWARD", "LIBVIRT_FWO"), ("filter", "FORWARD", "LIBVIRT_FWI"),
                  ("filter", "FORWARD", "LIBVIRT_FWX"), ("nat", "POSTROUTING", "LIBVIRT_PRT"),
                  ("mangle", "POSTROUTING", "LIBVIRT_PRT")]
LIBVIRT_DAEMONS = ("libvirtd", "virtnetworkd")


def libvirt_chains() -> list[firewall.Chain]:
    return [firewall.Chain(binary, *chain) for binary in firewall.BINARIES
            for chain in LIBVIRT_CHAINS]


class RunNetwork:
    """The run's NAT network, with the host settings it changes journaled first (bench/tune):
    net.ipv4.ip_forward, which libvirt turns on for a NAT network and never back, the
    firewall rules libvirt adds for the network's bridge and subnet (`bench cleanup` removes
    both after a kill, once the network is destroyed), and libvirt's own chains if this
    network's start creates them (removed once libvirtd is gone: bench/tune/firewall.py)."""

    def __init__(self, conn: libvirt.virConnect, run_id: str) -> None:
        self.conn = conn
        self.run_id = run_id
        self.name = f"{NETWORK_PREFIX}{run_id}"
        self.bridge = "bk" + hashlib.sha256(run_id.encode()).hexdigest()[:10]
        self.subnet: IPv4Network | None = None
        self.forwarding = hostnet.Forwarding(f"kvm-{run_id}")
        self.rules: firewall.RunRules | None = None

    def create(self) -> None:
        self.subnet = subnet = free_subnet(self.conn)
        self.forwarding.enable()  # before libvirt does it, unjournaled
        self.rules = firewall.RunRules("kvm", self.run_id)
        self.rules.watch(self.bridge, str(subnet))
        self.rules.watch_chains(libvirt_chains(), LIBVIRT_DAEMONS)
        network = self.conn.networkDefineXML(domxml.network_xml(self.name, self.bridge, subnet))
        network.create()
        self.rules.adopt()

    def release(self) -> list[str]:
        """After the network is destroyed: rules libvirt left, and forwarding, if no other user
        needs it."""
        removed = self.rules.remove() if self.rules is not None else []
        self.rules = None
        return removed + self.forwarding.release()


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
