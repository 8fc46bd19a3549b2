"""Egress rate limits with tc (iproute2 argv, never a shell): a tbf root qdisc on a link, in
the host's network namespace or another process's (entered with nsenter), its readback, and an
ifb device that carries a link's ingress so it can be shaped as egress (a VM's tap: what the
guest sends arrives there as ingress).

tbf counts whole Ethernet frames; TCP goodput through it is the rate x MSS / frame size.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from functools import cache

from bench.core import procs
from bench.core.errors import BenchError, CommandError

LATENCY = "50ms"
# above the largest GSO packet (64 KiB + headers): tbf never sends a packet bigger than its
# bucket, so a rate lowered while big packets wait in the queue would stall the link for good
MIN_BURST = 128 * 1024


class TcError(BenchError):
    """A qdisc, filter or ifb device could not be made."""


def in_netns(pid: int | None) -> list[str]:
    """argv prefix that runs a command in the network namespace of `pid` (None: the host's)."""
    return [] if pid is None else ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]


def _tc(prefix: list[str], *args: str) -> str:
    try:
        return procs.run([*prefix, "tc", *args], timeout=15).stdout
    except CommandError as exc:
        raise TcError(f"tc {' '.join(args)} failed: {exc.stderr.strip() or exc}",
                      "check that iproute2 is installed and the kernel has sch_tbf.") from exc


def burst_bytes(mbit: float) -> int:
    """10 ms at the rate, at least MIN_BURST (tbf needs a burst of at least rate / HZ)."""
    return max(MIN_BURST, int(mbit * 1e6 / 8 / 100))


def set_rate(link: str, mbit: float, pid: int | None = None) -> None:
    """Replace `link`'s root qdisc with a tbf at `mbit` (a change of a live limit too)."""
    _tc(in_netns(pid), "qdisc", "replace", "dev", link, "root", "tbf", "rate",
        f"{mbit:g}mbit", "burst", str(burst_bytes(mbit)), "latency", LATENCY)


def clear(link: str, pid: int | None = None) -> None:
    with contextlib.suppress(TcError):
        _tc(in_netns(pid), "qdisc", "del", "dev", link, "root")


def read_rate(link: str, pid: int | None = None) -> float | None:
    """The tbf rate on `link` in Mbit/s as the kernel holds it (None: no tbf)."""
    qdiscs = json.loads(_tc(in_netns(pid), "-j", "qdisc", "show", "dev", link) or "[]")
    for qdisc in qdiscs:
        if qdisc.get("kind") == "tbf" and qdisc.get("root"):
            return float(qdisc["options"]["rate"]) * 8 / 1e6
    return None


def redirect_to_ifb(link: str, ifb: str) -> None:
    """Make `ifb` and send everything arriving on `link` through it (ingress -> ifb egress)."""
    procs.run(["ip", "link", "add", ifb, "type", "ifb"], timeout=15)
    try:
        procs.run(["ip", "link", "set", ifb, "up"], timeout=15)
        _tc([], "qdisc", "replace", "dev", link, "handle", "ffff:", "ingress")
        _tc([], "filter", "replace", "dev", link, "parent", "ffff:", "protocol", "all", "prio",
            "1", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
            "dev", ifb)
    except BaseException:
        remove_ifb(link, ifb)
        raise


def remove_ifb(link: str | None, ifb: str) -> None:
    if link:
        with contextlib.suppress(TcError):
            _tc([], "qdisc", "del", "dev", link, "handle", "ffff:", "ingress")
    procs.run(["ip", "link", "del", ifb], timeout=15, check=False)


@cache
def has_police() -> bool:
    """Does this kernel have the tc police action (libvirt's outbound <bandwidth> needs it)?
    Probed by adding and deleting a standalone police action."""
    index = str(secrets.randbelow(1 << 20) + 1024)
    try:
        procs.run(["tc", "actions", "add", "action", "police", "rate", "1mbit", "burst", "10k",
                   "index", index], timeout=15)
    except (CommandError, OSError):
        return False
    procs.run(["tc", "actions", "del", "action", "police", "index", index], timeout=15,
              check=False)
    return True
