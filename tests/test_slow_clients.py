"""Slow clients against the real server: bounded bytes per client, closed with 1013 in time.

A client that asks for a lot of history and never reads holds at most about the byte limit
in the hub until the slow-client timeout closes it (with 1013, behind the bytes its socket
already holds, then cut off); another client on the same key keeps getting its updates.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from tests.harness import ServerProcess, WsClient, populated_server, same_key, seconds

MIB = 1024 * 1024
KEYS = [(name, interval) for name in ("AAA", "BBB", "CCC") for interval in ("1m", "3m", "5m")]
HANDSHAKE = (
    b"GET /websocket/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SLOW = re.compile(r"^candlewire_slow_client_disconnects_total (\S+)$", re.M)
CONFLATED = re.compile(r"^candlewire_updates_conflated_total (\S+)$", re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path_factory.mktemp("slow"),
        PROVIDERS="counting",
        OUTBOX_MAX_BYTES=str(MIB),
        SLOW_CLIENT_TIMEOUT="2",
    ) as running:
        yield running


def data(name: str, interval: str, count: int, stream: bool = False) -> dict[str, Any]:
    return {
        "type": "data",
        "source": "counting",
        "name": name,
        "interval": interval,
        "count": count,
        "stream": stream,
    }


def client_frame(payload: bytes) -> bytes:
    """A masked text frame (all-zero mask: the payload goes out as it is)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


def never_reading_client(server: ServerProcess, deflate: bool = False) -> socket.socket:
    """A raw WebSocket client with a 4 KiB receive buffer that reads only the handshake;
    with ``deflate``, one that negotiated permessage-deflate (as browsers do)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    sock.sendall(HANDSHAKE[:-2] + offer + b"\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head.lower()) == deflate, head
    return sock


def read_to_the_end(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything ``sock`` receives until the server closes it; and whether it did so in
    ``timeout`` seconds."""
    sock.settimeout(timeout)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(received), True
        except TimeoutError:
            break
        if not chunk:
            return bytes(received), True
        received += chunk
    return bytes(received), False


def server_frames(data: bytes, deflate: bool = False) -> list[Frame]:
    """The complete server frames at the start of ``data``, parsed (and with ``deflate``,
    decompressed) by websockets."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    extensions = [PerMessageDeflate(False, False, 15, 15)] if deflate else None
    while True:
        parse = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
        try:
            next(parse)
        except StopIteration as done:
            frames.append(done.value)
        except EOFError:
            return frames
        else:
            return frames  # a frame cut short: the connection was reset


def slow_disconnects(server: ServerProcess) -> float:
    match = SLOW.search(server.get("/metrics"))
    return float(match.group(1)) if match else 0.0


def conflated(server: ServerProcess) -> float:
    match = CONFLATED.search(server.get("/metrics"))
    assert match, "candlewire_updates_conflated_total is not in /metrics"
    return float(match.group(1))


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_a_never_reading_client_is_closed_with_1013_while_another_keeps_streaming(
    server: ServerProcess, deflate: bool
) -> None:
    hub = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    warm = await WsClient.open(server.ws_url, max_size=None)  # the bars in the cache first
    await warm.send(*(data(n, i, 10_000) for n, i in KEYS))
    for name, interval in KEYS:
        await warm.wait_for("data_init", same_key(name, interval), timeout=30)
    await warm.close()
    fast = await WsClient.open(server.ws_url)
    await fast.send(data("AAA", "1m", 5, stream=True))
    await fast.wait_for("data_update", same_key("AAA", "1m"))
    rss_before = hub.memory_info().rss
    kicked_before = slow_disconnects(server)
    conflated_before = conflated(server)

    stalled = never_reading_client(server, deflate)
    # Subscribed to the fast client's key, then 90 replies of about 1 MB each: 90 MB if the
    # hub queued them all.
    request = [data("AAA", "1m", 10_000, stream=True)]
    request += [data(n, i, 10_000) for _ in range(10) for n, i in KEYS]
    stalled.sendall(client_frame(json.dumps(request).encode()))
    asked_at = time.monotonic()
    gaps, peak_rss = [], 0
    mark, last = len(fast.messages), time.monotonic()
    while slow_disconnects(server) == kicked_before:
        assert time.monotonic() - asked_at < seconds(20), "the stalled client was not closed"
        await fast.wait_for("data_update", same_key("AAA", "1m"), after=mark)
        mark, now = len(fast.messages), time.monotonic()
        gaps.append(now - last)
        last = now
        peak_rss = max(peak_rss, hub.memory_info().rss)
    closed_after = time.monotonic() - asked_at

    received, closed = await asyncio.to_thread(read_to_the_end, stalled, seconds(10))
    stalled.close()
    frames = server_frames(received, deflate)
    assert closed, "the hub did not end the connection"
    assert frames, "nothing received"
    assert frames[-1].opcode is Opcode.CLOSE
    assert Close.parse(frames[-1].data).code == 1013
    # SLOW_CLIENT_TIMEOUT is 2 s, checked every second.
    assert closed_after < seconds(8)
    assert max(gaps) < seconds(1.0)
    # Bounded by the byte limit (1 MiB here) and one reply being built, not by the 90 MB.
    assert peak_rss - rss_before < 40 * MIB
    # While it was stalled, each update of AAA 1m (every 0.1 s) took the place of the last
    # in its outbox; they are counted, and still are once it was closed.
    assert conflated(server) >= conflated_before + 5
    mark = len(fast.messages)
    await fast.wait_for("data_update", same_key("AAA", "1m"), after=mark)
    await fast.close()


async def test_a_client_asking_for_more_than_the_limit_gets_every_reply_as_it_reads(
    server: ServerProcess,
) -> None:
    reader = await WsClient.open(server.ws_url, max_size=None)
    kicked_before = slow_disconnects(server)
    # About 20 MB of replies for a 1 MiB limit: paced by the reading, nobody closed.
    await reader.send(*(data(n, i, 10_000) for _ in range(2) for n, i in KEYS))
    after = 0
    for _ in range(2 * len(KEYS)):
        init = await reader.wait_for("data_init", after=after, timeout=30)
        after = next(i for i, m in enumerate(reader.messages) if m is init) + 1
    assert all(len(m["data"]) > 5000 for m in reader.of_type("data_init"))
    assert slow_disconnects(server) == kicked_before
    await reader.close()
