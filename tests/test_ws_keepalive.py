"""WebSocket keep-alive pings: ``WS_PING_INTERVAL`` / ``WS_PING_TIMEOUT`` reach uvicorn.

A raw client (it sees every frame, where a WebSocket library answers pings out of sight)
gets pings at the configured interval from the real server; 0 turns pings off.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.model.intervals import INTERVALS
from backend.settings import load_settings
from tests.harness import populated_server, seconds

HANDSHAKE = (
    b"GET /websocket/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PING = 0x9


async def pings_within(port: int, wanted: int, timeout: float) -> list[float]:
    """Open a raw WebSocket and return the arrival times of the first ``wanted`` pings."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HANDSHAKE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        assert head.startswith(b"HTTP/1.1 101"), head
        arrivals: list[float] = []
        deadline = time.monotonic() + timeout
        while len(arrivals) < wanted:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(arrivals)} of {wanted} pings within {timeout:.1f} s"
            first, size = await asyncio.wait_for(reader.readexactly(2), left)
            payload = await reader.readexactly(size & 0x7F)  # pings are short, never masked
            if first & 0x0F == PING:
                arrivals.append(time.monotonic())
                # The pong: masked (all-zero key) with the ping's payload.
                writer.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
        return arrivals
    finally:
        writer.close()


def test_the_hub_pings_every_socket_at_ws_ping_interval(tmp_path: Path) -> None:
    with populated_server(
        tmp_path, PROVIDERS="counting", LOG_LEVEL="WARNING", WS_PING_INTERVAL="0.3"
    ) as server:
        port = int(server.url.rsplit(":", 1)[1])
        arrivals = asyncio.run(pings_within(port, 3, seconds(10)))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.15 <= gap <= seconds(3) for gap in gaps), gaps


@pytest.mark.parametrize(
    ("interval", "timeout", "expected"),
    [("0", "0", (None, None)), ("45", "30", (45.0, 30.0)), (None, None, (20.0, 20.0))],
)
def test_ws_ping_settings_become_uvicorns_keepalive(
    monkeypatch: pytest.MonkeyPatch,
    interval: str | None,
    timeout: str | None,
    expected: tuple[float | None, float | None],
) -> None:
    import server as entry

    for name, value in (("WS_PING_INTERVAL", interval), ("WS_PING_TIMEOUT", timeout)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    config = entry.uvicorn_config(load_settings())
    assert (config.ws_ping_interval, config.ws_ping_timeout) == expected


async def waits_for_slow_replies(url: str, requests: int) -> tuple[int, int | None]:
    """Ask ``requests`` histories of a symbol whose provider never answers (more than the
    client's reply slots; each of another interval, so that they wait side by side, not
    one after another), then send a ping frame, and read until every one is answered or
    the socket closes; the library answers the hub's pings. Returns the answers read and
    the close code."""
    answered = 0
    async with connect(url) as ws:
        await ws.send(
            json.dumps(
                [
                    {
                        "type": "data_history",
                        "source": "counting",
                        "name": "HANG",
                        "interval": INTERVALS[i],
                        "end": "2026-11-01 00:00:00",
                        "count": 10,
                    }
                    for i in range(requests)
                ]
            )
        )
        await ws.send(json.dumps([{"type": "ping"}]))  # a frame the hub reads after those
        try:
            while answered < requests:
                message = json.loads(await asyncio.wait_for(ws.recv(), seconds(60)))
                answered += message["type"] == "data_history"
        except ConnectionClosed:
            pass
        return answered, ws.close_code


def test_a_socket_whose_requests_wait_for_reply_slots_is_not_closed_as_unresponsive(
    tmp_path: Path,
) -> None:
    """While the hub waits for a reply slot it does not read the socket, so the client's
    pongs wait behind its requests: that wait must not close it with 1011 "keepalive ping
    timeout" (it did, after one ping interval and timeout, whatever the client did)."""
    with populated_server(
        tmp_path,
        PROVIDERS="counting",
        LOG_LEVEL="WARNING",
        WS_PING_INTERVAL="0.5",
        WS_PING_TIMEOUT="0.5",
        HISTORY_TIMEOUT="2",
    ) as server:
        answered, code = asyncio.run(waits_for_slow_replies(server.ws_url, 12))
    assert (answered, code) == (12, None)
