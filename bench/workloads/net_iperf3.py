"""Network: TCP throughput with iperf3 `-J` between a server instance and a client instance."""

from __future__ import annotations

import json
import random
import time
from typing import ClassVar

from pydantic import Field

from bench.core.errors import CommandError, ParseError
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Series, Workload


class Iperf3Params(Params):
    seconds: int = Field(3, ge=1, le=3600,
                         description="whole seconds: the tool takes no fractions")
    parallel: int = Field(1, ge=1, le=128)
    reverse: bool = False


def parse_iperf3_json(text: str) -> list[Measurement]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"iperf3 output is not JSON: {exc}", "see raw/.") from exc
    if data.get("error"):
        raise ParseError(f"iperf3 reported: {data['error']}", "see raw/.")
    end = data["end"]
    sent, received = end["sum_sent"], end["sum_received"]
    meta = {"retransmits": sent.get("retransmits"), "seconds": received.get("seconds"),
            "version": data.get("start", {}).get("version")}
    found = [Measurement(metric="throughput_Gbps", value=received["bits_per_second"] / 1e9,
                         unit="Gbit/s", direction="higher", metadata=meta)]
    # iperf3 leaves retransmits out where it cannot count them (not Linux, UDP): absent, not 0
    if sent.get("retransmits") is not None:
        found.append(Measurement(metric="retransmits", value=float(sent["retransmits"]),
                                 unit="segments", direction="lower", metadata=meta))
    return found


def parse_iperf3_intervals(text: str, reverse: bool = False) -> list[tuple[float, float]]:
    """`-J -i 1 --get-server-output`: (seconds since start, Mbit/s over that interval) on the
    receiver's side, timed by the receiver's clock. The sender's side is lumpy at low rates
    (it counts 128 KiB writes, which a full socket buffer lets through in bursts: 16.7 and
    20.9 Mbit/s alternate under a 20 Mbit/s shaper) and, in a guest, timed by the guest's
    clock; what arrives is what the limit let through."""
    data = json.loads(text)
    if not reverse:  # the client sent: the server received
        data = data.get("server_output_json") or {}
        if not data:
            raise ParseError("iperf3 gave no server output (--get-server-output)",
                             "use iperf3 >= 3.1 on both ends; see raw/.")
    return [(float(i["sum"]["end"]), i["sum"]["bits_per_second"] / 1e6)
            for i in data.get("intervals", []) if i["sum"].get("seconds", 0) > 0.5]


class Iperf3(Workload[Iperf3Params]):
    name = "network.iperf3"
    family = "network"
    headline = ("throughput_Gbps",)
    description = "iperf3 -J: TCP throughput from a client instance to a server instance"
    params_model = Iperf3Params
    tools = ("iperf3",)
    needs_peer = True
    series_metric: ClassVar[dict[str, str] | None] = {"net_mbit": "throughput_Mbps"}

    def estimate_seconds(self, params: Iperf3Params) -> float:
        return params.seconds + 0.8

    def run(self, ctx: RunContext, params: Iperf3Params) -> list[Measurement]:
        return parse_iperf3_json(self._run(ctx, params, []))

    def before_series(self, ctx: RunContext, params: Iperf3Params) -> None:
        ctx.main().exec(["iperf3", "--version"], timeout=ctx.remaining())  # a warm start

    def run_series(self, ctx: RunContext, params: Iperf3Params) -> Series:
        out = self._run(ctx, params, ["-i", "1", "--get-server-output"])
        found = parse_iperf3_json(out)
        return Series({"throughput_Mbps": parse_iperf3_intervals(out, params.reverse)},
                      {"throughput_Mbps": "Mbit/s"}, found, found[0].metadata.get("seconds"))

    def _run(self, ctx: RunContext, params: Iperf3Params, extra: list[str]) -> str:
        assert ctx.peer is not None
        port = random.randint(20000, 29999)
        address = ctx.peer.address()  # listen only on the peer's own address, never on all
        # -J on the server too: with --get-server-output the client then carries the server's
        # intervals as JSON (server_output_json), not as text
        server = ctx.peer.spawn(["iperf3", "-s", "-J", "-B", address, "-p", str(port)])
        try:
            argv = ["iperf3", "-c", address, "-p", str(port), "-J",
                    "-t", f"{params.seconds}", "-P", str(params.parallel), *extra]
            if params.reverse:
                argv.append("-R")
            while True:  # the server may still be binding: retry refused connections
                try:
                    done = ctx.main().exec(ctx.tool(argv), timeout=ctx.remaining())
                except CommandError as exc:
                    if "refused" not in exc.stderr + str(exc) or ctx.remaining() < params.seconds:
                        raise
                    time.sleep(0.1)
                    continue
                # iperf3 exits 0 even when it cannot connect; the error is in its JSON
                if '"error"' in done.stdout and "refused" in done.stdout \
                        and ctx.remaining() > params.seconds + 1:
                    time.sleep(0.1)
                    continue
                break
        finally:
            server.stop()
        ctx.save_raw("iperf3.json", done.stdout)
        return done.stdout
