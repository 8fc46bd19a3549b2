"""Network: TCP request/response round-trip time with sockperf ping-pong, from its CSV log."""

from __future__ import annotations

import random
import time
import uuid

from pydantic import Field

from bench.core.errors import CommandError, ParseError
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Workload

HEADER = "packet, txTime(sec), rxTime(sec)"
QUANTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}


class SockperfParams(Params):
    seconds: int = Field(2, ge=1, le=3600,
                         description="whole seconds: the tool takes no fractions")
    msg_size: int = Field(64, ge=14, le=65000)


def parse_sockperf_log(text: str) -> list[Measurement]:
    """Round-trip times (us) from `--full-log` rows: packet, txTime, rxTime, latency."""
    rtts = []
    in_rows = False
    for line in text.splitlines():
        if line.startswith(HEADER):
            in_rows = True
            continue
        if in_rows:
            cells = line.split(",")
            if len(cells) < 3:
                break
            try:
                tx, rx = float(cells[1]), float(cells[2])
            except ValueError:
                break
            if rx > 0:
                rtts.append((rx - tx) * 1e6)
    if not rtts:
        raise ParseError("sockperf's full log holds no round trips.", "see raw/.")
    import numpy as np

    values = np.asarray(rtts)
    meta = {"observations": len(rtts)}
    found = [Measurement(metric="rtt_mean_us", value=float(values.mean()), unit="us",
                         direction="lower", metadata=meta)]
    for label, q in QUANTILES.items():
        found.append(Measurement(metric=f"rtt_{label}_us", value=float(np.percentile(values, q)),
                                 unit="us", direction="lower", metadata=meta))
    return found


class Sockperf(Workload[SockperfParams]):
    name = "network.sockperf"
    family = "network"
    headline = ("rtt_p50_us", "rtt_p99_us")
    description = "sockperf ping-pong over TCP: request/response round-trip time percentiles"
    params_model = SockperfParams
    tools = ("sockperf",)
    needs_peer = True

    def estimate_seconds(self, params: SockperfParams) -> float:
        return params.seconds + 1.0

    def run(self, ctx: RunContext, params: SockperfParams) -> list[Measurement]:
        assert ctx.peer is not None
        port = random.randint(30000, 39999)
        address = ctx.peer.address()  # listen only on the peer's own address, never on all
        server = ctx.peer.spawn(["sockperf", "server", "--tcp", "-i", address, "-p", str(port)])
        log = f"/tmp/sockperf-{uuid.uuid4().hex}.csv"
        argv = ["sockperf", "ping-pong", "--tcp", "-i", address, "-p", str(port),
                "-t", f"{params.seconds}", "-m", str(params.msg_size), "--full-log", log]
        try:
            while True:  # the server may still be binding: retry refused connections
                done = ctx.main().exec(argv, timeout=ctx.remaining())
                said = done.stdout + done.stderr
                if "ERROR" not in said:
                    break
                # sockperf exits 0 even on errors; they are in its output
                if "refused" not in said or ctx.remaining() < params.seconds + 1:
                    raise CommandError(argv, done.returncode, said)
                time.sleep(0.1)
        finally:
            server.stop()
        text = ctx.main().read_file(log).decode(errors="replace")
        ctx.save_raw("sockperf.csv", text)
        return parse_sockperf_log(text)
