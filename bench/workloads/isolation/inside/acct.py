"""Make known amounts of memory inside an instance, for the accounting check.

  acct.py anon MB MARKER HOLD_S                 allocate and touch MB of anonymous memory,
                                                create MARKER, hold it for HOLD_S
  acct.py write PATH MB FSYNC                   write MB to PATH (1 MiB blocks); FSYNC=1 then
                                                fsyncs it (clean page cache), 0 leaves it dirty
  acct.py slab DIR FILES SOCKETS MARKER HOLD_S  create FILES empty files in DIR (dentries and
                                                inodes) and SOCKETS socket pairs, create
                                                MARKER, hold the sockets for HOLD_S
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

MiB = 1 << 20
PAGE = 4096


def _ready(marker: str, hold_s: float) -> None:
    with open(marker, "w") as fh:
        fh.write("ready\n")
    time.sleep(hold_s)


def anon(mb: int, marker: str, hold_s: float) -> None:
    held = []
    for _ in range(mb):
        block = bytearray(MiB)
        block[::PAGE] = b"\x01" * (MiB // PAGE)
        held.append(block)
    _ready(marker, hold_s)


def write(path: str, mb: int, fsync: bool) -> dict[str, object]:
    block = os.urandom(MiB)
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(mb):
            os.write(fd, block)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return {"path": path, "mb": mb, "fsync": fsync, "seconds": time.monotonic() - start}


def slab(directory: str, files: int, sockets: int, marker: str, hold_s: float) -> None:
    os.makedirs(directory, exist_ok=True)
    for index in range(files):
        os.close(os.open(os.path.join(directory, f"f{index}"), os.O_WRONLY | os.O_CREAT, 0o644))
    pairs = [socket.socketpair() for _ in range(sockets)]
    _ready(marker, hold_s)
    for a, b in pairs:
        a.close()
        b.close()


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "anon":
        anon(int(args[0]), args[1], float(args[2]))
    elif mode == "write":
        print(json.dumps(write(args[0], int(args[1]), args[2] == "1")))
    elif mode == "slab":
        slab(args[0], int(args[1]), int(args[2]), args[3], float(args[4]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
