"""Putting a guest's clock on the host's: start-up phases that happen inside a VM.

A guest has its own CLOCK_MONOTONIC, which starts near zero when its kernel starts keeping time.
`bench-stamp` prints that clock, and the kernel's console lines carry `[ seconds ]` stamps on
(nearly) the same clock. To place them on the host's CLOCK_MONOTONIC we measure the offset
between the two clocks the way NTP does, over the agent: the host reads its clock (h0), asks
the agent to read the guest's /proc/timer_list (whose header, `now at N nsecs`, is the guest's
CLOCK_MONOTONIC when the file is generated), and reads its clock again (h1). The guest's
reading happened between h0 and h1, so

    offset = (h0 + h1) / 2 - guest_now        (host seconds - guest seconds)
    uncertainty = (h1 - h0) / 2

and of a few such round trips the one with the smallest round trip wins. A guest moment g then
happened at host time g + offset. Two consequences worth knowing:
- the guest's clock is synchronised once per measurement, right after the stamp was printed,
  so the stamp's error is the uncertainty above (milliseconds under TCG);
- `kernel_started` is guest time zero carried back over the whole boot, so it also carries any
  rate difference between the guest's clock and the host's over that span (the guest kernel
  calibrates its own clock at boot; under TCG this is where the error is largest).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

NOW_RE = re.compile(r"^now at (\d+) nsecs", re.MULTILINE)
STAMP_RE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
# console lines that mark boot phases (printk stamps are guest seconds since its kernel began)
CONSOLE_EVENTS = {
    "initramfs_started": re.compile(r"Run /init as init process"),
    "init_started": re.compile(r"systemd\[1\]: systemd \d+"),
}


@dataclass(frozen=True)
class ClockSync:
    offset_s: float  # host monotonic - guest monotonic
    uncertainty_s: float
    rounds: int

    def to_host(self, guest_s: float) -> float:
        return guest_s + self.offset_s


def timer_list_now(text: str) -> float:
    """The guest's CLOCK_MONOTONIC (seconds) from the header of /proc/timer_list."""
    found = NOW_RE.search(text)
    if found is None:
        raise ValueError("no 'now at ... nsecs' line in /proc/timer_list")
    return int(found.group(1)) / 1e9


def sync(read_guest_now: Callable[[], float], rounds: int = 3,
         clock: Callable[[], float] = time.monotonic) -> ClockSync:
    """Estimate host - guest from `rounds` round trips of `read_guest_now` (the tightest wins)."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        h0 = clock()
        guest_now = read_guest_now()
        h1 = clock()
        half = (h1 - h0) / 2
        if best is None or half < best[1]:
            best = ((h0 + h1) / 2 - guest_now, half)
    assert best is not None
    return ClockSync(best[0], best[1], rounds)


def console_events(text: str) -> dict[str, float]:
    """Guest seconds of boot events on the serial console: the kernel's first line, the start
    of the initramfs and the start of systemd in the real root."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = STAMP_RE.match(line.strip("\r"))
        if match is None:
            continue
        stamp, message = float(match.group(1)), match.group(2)
        found.setdefault("kernel_started", stamp)
        for name, pattern in CONSOLE_EVENTS.items():
            if name not in found and pattern.search(message):
                found[name] = stamp
    return found
