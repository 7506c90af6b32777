"""Latency stalls (issue 17): the hub's sockets disable Nagle's algorithm, a provider's batch
is dispatched in slices within a time budget, and the loop-stall probe measures, counts,
exposes and explains a stalled event loop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import socket
import time

import pytest

from backend.hub.metrics import Metrics
from backend.hub.stalls import StallProbe, verdict
from backend.runtime import supervisor
from backend.runtime.messages import encode_batch
from backend.runtime.supervisor import ProviderProcess
from backend.settings import load_settings
from server import GcPauses, bind
from tests.harness import eventually


async def test_the_hub_s_client_sockets_send_small_frames_at_once() -> None:
    """With Nagle's algorithm on, a frame written while the previous one is unacknowledged
    waits for the client's delayed ACK (up to 40 ms): asyncio turns it off only on sockets
    whose protocol is TCP, which the accepted sockets inherit from the listening one."""
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.BaseTransport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    listening = bind("127.0.0.1", 0)
    server = await loop.create_server(Keep, sock=listening)
    port = listening.getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: accepted, 5, "the connection")
        sock = accepted[0].get_extra_info("socket")
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_probe_measures_counts_and_logs_a_blocked_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    probe = StallProbe(period=0.005, log_over=0.03)
    probe.register(metrics)
    probe.start()
    try:
        await eventually(lambda: probe.ticks >= 2, 5, "the probe's first ticks")
        with caplog.at_level(logging.WARNING, logger="backend.hub.stalls"):
            blocked_until = time.perf_counter() + 0.06
            while time.perf_counter() < blocked_until:  # a callback holding the loop
                pass
            await eventually(lambda: probe.max_ever >= 0.05, 5, "the stall being measured")
    finally:
        await probe.stop()
    assert probe.counts[50] >= 1
    assert probe.recent.max() >= 0.05
    text = metrics.render()
    assert 'candlewire_loop_stalls_total{over_ms="50"}' in text
    shown = re.search(r"^candlewire_loop_stall_max_seconds (\S+)$", text, re.MULTILINE)
    assert shown is not None and float(shown.group(1)) >= 0.05
    assert "candlewire_loop_stall_own_max_ever_seconds" in text
    assert any("event loop stalled" in r.getMessage() for r in caplog.records)


def test_the_verdict_names_what_held_the_loop() -> None:
    assert verdict(0.04, loop_cpu=0.04, process_cpu=0.04, run_queue=0.0).startswith("a callback")
    assert verdict(0.04, loop_cpu=0.001, process_cpu=0.001, run_queue=0.039).startswith(
        "the machine"
    )
    assert verdict(0.04, loop_cpu=0.001, process_cpu=0.04, run_queue=0.0).startswith("another")
    assert verdict(0.04, loop_cpu=0.0, process_cpu=0.0, run_queue=0.0).startswith("a blocking")


def test_own_stalls_leave_out_the_time_spent_waiting_for_a_cpu() -> None:
    probe = StallProbe(period=0.01)
    probe.record(0.045, loop_cpu=0.001, process_cpu=0.001, run_queue=0.040)
    assert probe.max_ever == pytest.approx(0.045)
    assert probe.own_max_ever == pytest.approx(0.005)
    assert probe.counts == {5: 1, 10: 1, 20: 1, 50: 0, 100: 0}


def test_with_stall_logging_on_long_collections_are_logged_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pauses = GcPauses(log_over=1e-9)  # every pause is "long"
    with caplog.at_level(logging.WARNING, logger="candlewire.server"):
        pauses("start", {"generation": 2})
        pauses("stop", {"generation": 2, "collected": 7})
        GcPauses()("start", {"generation": 0})  # logging off: nothing
        GcPauses()("stop", {"generation": 0, "collected": 1})
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1
    assert "generation 2 collection" in logged[0] and "(7 unreachable)" in logged[0]


async def test_a_large_batch_is_dispatched_in_slices_with_the_writers_in_between() -> None:
    """A backlogged provider writes 500 bar updates at once; dispatching them all in one
    callback would hold the loop (and every client) for tens of ms when each one fans out."""
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def slow_sink(key: str, events: list[object]) -> None:
        order.append(f"events {events[0][2][0]}..{events[-1][2][0]}")  # type: ignore[index]
        loop.call_soon(order.append, "writers")  # what queueing frames to clients schedules
        until = time.perf_counter() + 0.002  # fan-out work: 2 ms per slice
        while time.perf_counter() < until:
            pass

    proc = ProviderProcess("p", "x:Y", load_settings(PROVIDERS="csv"), slow_sink, lambda k: None)
    reader, writer = multiprocessing.Pipe(duplex=False)
    bars = [("S", "1m", (t, 1.0, 1.0, 1.0, 1.0, float(t)), False) for t in range(500)]
    writer.send_bytes(encode_batch(bars))  # type: ignore[arg-type]
    proc._events = reader
    try:
        proc._drain()
        first_call = [o for o in order if o.startswith("events")]
        assert 1 <= len(first_call) <= 4  # 5 ms of budget, 2 ms per slice: not all ten
        await eventually(lambda: order.count("writers") == 10, 5, "every slice dispatched")
    finally:
        reader.close()
        writer.close()
    slices = [o for o in order if o.startswith("events")]
    size = supervisor.DISPATCH_SLICE
    assert slices == [f"events {a}..{a + size - 1}" for a in range(0, 500, size)]
    # the writers queued by a slice ran before the slices of a later wakeup
    assert order.index("writers") < order.index(slices[len(first_call)])
