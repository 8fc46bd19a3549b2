"""The few rtnetlink requests a container's start needs, over a raw NETLINK_ROUTE socket.

They sit on a container start's critical path, where a netlink library's overhead would cost
more than the requests themselves: one RTM_NEWLINK makes the veth pair with its host end on the
bridge (up) and its peer inside the container; four more give the peer its address, bring it
and loopback up and add the default route.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTN_UNICAST = 1
LOOPBACK_INDEX = 1  # lo is always index 1 in a new network namespace
PEER_INDEX = 2  # the container's eth0: the next free index of its new namespace


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(kind: int, name: str) -> bytes:
    return _attr(kind, name.encode() + b"\0")


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


class Netlink:
    """One NETLINK_ROUTE socket, bound to the network namespace it was opened in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, body: bytes, flags: int = 0) -> None:
        """Send one request and wait for its acknowledgement; raise OSError on a refusal."""
        self.seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind,
                             NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if msg_type == NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, f"netlink request {kind}: {os.strerror(-error)}")
                    return
                offset += max(length + (-length % 4), 16)

    def add_veth(self, host_end: str, master: int, peer: str, peer_netns_fd: int) -> None:
        """A veth pair: `host_end` here, enslaved to `master` and up; `peer` (index 2, down: the
        kernel refuses to bring a peer up while it is made) in the namespace `peer_netns_fd`."""
        peer_info = (_ifinfo(PEER_INDEX) + _name(IFLA_IFNAME, peer)
                     + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)))
        linkinfo = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        body = (_ifinfo(0, IFF_UP, IFF_UP) + _name(IFLA_IFNAME, host_end)
                + _attr(IFLA_MASTER, struct.pack("=I", master)) + _attr(IFLA_LINKINFO, linkinfo))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def delete_link(self, name: str) -> bool:
        """Delete the link `name` (for a veth: both ends); False if there was none."""
        try:
            self.request(RTM_DELLINK, _ifinfo() + _name(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def link_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, _ifinfo(index, IFF_UP, IFF_UP))

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        packed = ipaddress.IPv4Address(address).packed
        body = (struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, 0, index)
                + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed))
        self.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, gateway: str) -> None:
        body = (struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                            0, RTN_UNICAST, 0)
                + _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed))
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)
