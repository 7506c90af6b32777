"""Latency stalls (issue 17): the hub's sockets disable Nagle's algorithm, and the loop-stall
probe measures, counts, exposes and explains a stalled event loop."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import pytest

from backend.hub.metrics import Metrics
from backend.hub.stalls import StallProbe, verdict
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
