"""Networking of the `ns` tier, like Docker's default bridge: one bridge per run with a /24 and
NAT to the outside, and one veth pair per container (host end on the bridge, `eth0` inside).

Links are made over netlink (pyroute2); NAT and forwarding rules with iptables argv, each
journaled before it is added (bench/tune/firewall.py). Every link carries the alias
`bench:<run-id>` and every rule the comment `bench:<run-id>`, so `cleanup` finds what a killed
run left.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.core import hostlock
from bench.core.errors import BenchError, CommandError
from bench.core.lazy import lazy
from bench.kernel import linuxns
from bench.tiers.ns.runtime.netlink import LOOPBACK_INDEX, PEER_INDEX, Netlink
from bench.tune import firewall, hostnet

if TYPE_CHECKING:
    import pyroute2
else:
    pyroute2 = lazy("pyroute2")


POOL = ipaddress.IPv4Network("10.213.0.0/16")  # carved into one /24 per run
LINK_PREFIX = "bn"


class NetworkError(BenchError):
    """The bridge, a veth pair or a NAT rule could not be made."""


def tag(run_id: str) -> str:
    """A short id for link names (at most 15 characters): 6 hex digits of the run id's hash."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:6]


def label(run_id: str) -> str:
    return f"bench:{run_id}"


@contextlib.contextmanager
def in_netns(ns_fd: int) -> Iterator[None]:
    """Run the block with this thread in another network namespace (setns is per thread)."""
    with open("/proc/thread-self/ns/net", "rb") as home:
        linuxns.setns(ns_fd, linuxns.CLONE_NEWNET)
        try:
            yield
        finally:
            linuxns.setns(home.fileno(), linuxns.CLONE_NEWNET)


def _rules(run_id: str | None) -> list[tuple[str, list[str]]]:
    """(table, rule) of every rule whose comment names the run (or any dead run)."""
    found = []
    for table in ("nat", "filter"):
        for words in firewall.listing(table):
            comment = words[words.index("--comment") + 1] if "--comment" in words else ""
            if comment == label(run_id) if run_id else (
                    comment.startswith("bench:")
                    and not hostlock.run_is_live(comment.removeprefix("bench:"))):
                found.append((table, words))
    return found


class Bridge:
    """The run's bridge, subnet and NAT; hands out veth pairs to containers."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.name = f"{LINK_PREFIX}{tag(run_id)}br"
        self.ipr = pyroute2.IPRoute()
        self.netlink = Netlink()
        self.subnet = self._free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.free = [str(h) for h in reversed(hosts[1:])]
        self.counter = 0
        self.forwarding = hostnet.Forwarding(f"ns-{run_id}")
        self.rules: firewall.RunRules | None = None
        self.index = 0

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for msg in self.ipr.get_addr(family=2):
            used.append(ipaddress.ip_interface(
                f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}").network)
        for msg in self.ipr.get_routes(family=2):
            dst = msg.get_attr("RTA_DST")
            if dst:
                used.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
        subnets: list[ipaddress.IPv4Network] = list(POOL.subnets(new_prefix=24))
        start = int(tag(self.run_id), 16) % len(subnets)
        for net in subnets[start:] + subnets[:start]:
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
        raise NetworkError(f"Every /24 of {POOL} is in use on this host.",
                           "run `bench cleanup` to remove old bench bridges.")

    def create(self) -> None:
        try:
            self.ipr.link("add", ifname=self.name, kind="bridge")
            index = self.index = self.ipr.link_lookup(ifname=self.name)[0]
            self.ipr.link("set", index=index, ifalias=label(self.run_id))
            self.ipr.addr("add", index=index, address=self.gateway,
                          prefixlen=self.subnet.prefixlen)
            self.ipr.link("set", index=index, state="up")
            self.forwarding.enable()  # journaled; restored when no bench user is left
            self.rules = firewall.RunRules("ns", self.run_id)  # each rule journaled first
            comment = ["-m", "comment", "--comment", label(self.run_id)]
            subnet = str(self.subnet)
            self.rules.add("nat", ["POSTROUTING", "-s", subnet, "!", "-o", self.name,
                                   "-j", "MASQUERADE", *comment])
            # only the run's own traffic: out of its bridge from its subnet, and back in only
            # as replies to connections its containers opened
            self.rules.add("filter", ["FORWARD", "-i", self.name, "-s", subnet, "-j", "ACCEPT",
                                      *comment], insert=True)
            self.rules.add("filter", ["FORWARD", "-o", self.name, "-d", subnet, "-m",
                                      "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j",
                                      "ACCEPT", *comment], insert=True)
        except Exception as exc:
            self.remove()
            raise NetworkError(f"Making the bridge {self.name} failed: {exc}",
                               "check that iproute2 and iptables work here (`bench doctor`).") \
                from exc

    def reserve(self) -> dict[str, Any]:
        """A name and an address for the next container's veth: `wire` makes the pair and
        `release` deletes it."""
        if not self.free:
            raise NetworkError(f"The bridge {self.name} has no free address left.",
                               "start fewer instances at once.")
        self.counter += 1
        return {"host_end": f"{LINK_PREFIX}{tag(self.run_id)}v{self.counter}",
                "master": self.index, "address": self.free.pop(),
                "prefixlen": self.subnet.prefixlen, "gateway": self.gateway}

    def wire(self, ns_fd: int, net: dict[str, Any]) -> None:
        """Give the network namespace `ns_fd` an `eth0` on the bridge, as `reserve` planned."""
        self.netlink.add_veth(net["host_end"], net["master"], "eth0", ns_fd)
        with in_netns(ns_fd):
            inner = Netlink()  # a socket stays in the namespace it was made in
        try:
            inner.add_address(PEER_INDEX, net["address"], net["prefixlen"])
            inner.link_up(PEER_INDEX)
            inner.link_up(LOOPBACK_INDEX)
            inner.add_default_route(net["gateway"])
        finally:
            inner.close()

    def release(self, host_end: str, address: str) -> None:
        """Delete the pair (deleting one end deletes both) and return the address."""
        with contextlib.suppress(OSError):
            self.netlink.delete_link(host_end)
        if address not in self.free:
            self.free.append(address)

    def remove(self) -> None:
        if self.rules is not None:
            self.rules.remove()
            self.rules = None
        for index in self.ipr.link_lookup(ifname=self.name):
            with contextlib.suppress(Exception):
                self.ipr.link("del", index=index)
        self.forwarding.release()
        self.ipr.close()
        self.netlink.close()


def _bench_links(run_id: str | None, spare_live: bool = False) -> list[tuple[int, str]]:
    """(index, name) of the run's links (every run's, for None): those named with its tag,
    the tags of every run being read off the bridges that carry a `bench:` alias."""
    with pyroute2.IPRoute() as ipr:
        links = [(msg["index"], msg.get_attr("IFLA_IFNAME") or "",
                  msg.get_attr("IFLA_IFALIAS") or "") for msg in ipr.get_links()]
    if run_id:
        tags = {tag(run_id)}
    else:
        tags = {name[len(LINK_PREFIX):-2] for _, name, alias in links
                if alias.startswith("bench:") and name.startswith(LINK_PREFIX)
                and name.endswith("br")
                and not (spare_live and hostlock.run_is_live(alias.removeprefix("bench:")))}
    return [(index, name) for index, name, _ in links
            if any(name.startswith(f"{LINK_PREFIX}{t}") for t in tags)]


def cleanup(run_id: str | None) -> list[str]:
    """Remove the veths, bridges and NAT rules a run (or every run) left behind: the rules its
    journal lists, and any rule carrying its comment (runs from before the journal)."""
    removed = firewall.recover("ns", run_id)
    for table, rule in _rules(run_id):
        with contextlib.suppress(CommandError, OSError):
            firewall.iptables("-t", table, "-D", *rule)
            removed.append(f"iptables -t {table} -D {shlex.join(rule)}")
    links = _bench_links(run_id, spare_live=True)
    with pyroute2.IPRoute() as ipr:
        for index, name in sorted(links, key=lambda link: link[1].endswith("br")):
            with contextlib.suppress(Exception):
                ipr.link("del", index=index)
                removed.append(f"link {name}")
    return removed + hostnet.recover()


def host_netns_id() -> str:
    return os.readlink("/proc/self/ns/net")
