"""How the hub reads its sockets (``backend/ws/reading.py``), against the real server.

uvicorn stopped reading a socket after every message and started again once the hub took
it: two selector changes per request for a client that waits for each answer. The hub now
pauses a socket's reading only behind a message still waiting for the reader, or a large
one, and counts the pauses in ``/metrics``. A client that sends many requests at once is
still held back, and every request is still answered, in order.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest

from tests.harness import ServerProcess, WsClient, populated_server, seconds
from tests.test_slow_clients import client_frame, never_reading_client, server_frames

PAUSES = re.compile(r"^candlewire_read_pauses_total (\S+)$", re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(tmp_path_factory.mktemp("reading"), PROVIDERS="counting") as running:
        yield running


def pauses(server: ServerProcess) -> float:
    match = PAUSES.search(server.get("/metrics"))
    assert match is not None, "no candlewire_read_pauses_total in /metrics"
    return float(match.group(1))


def pongs_in(data: bytes) -> list[int | str]:
    return [
        json.loads(frame.data)["id"]
        for frame in server_frames(data)
        if frame.data.startswith(b'{"type":"pong"')
    ]


def pongs_after(sock: socket.socket, data: bytes, count: int) -> list[int | str]:
    """Send ``data`` and read until ``count`` pongs came (or 10 s): their ids, in order."""
    sock.sendall(data)
    sock.settimeout(seconds(10))
    received = b""
    while len(pongs_in(received)) < count:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return pongs_in(received)


async def test_a_client_that_waits_for_each_answer_never_pauses_the_read(
    server: ServerProcess,
) -> None:
    before = pauses(server)
    client = await WsClient.open(server.ws_url)
    try:
        for i in range(200):
            await client.send({"type": "ping", "id": i})
            await client.wait_for("pong", lambda m, i=i: m.get("id") == i)  # type: ignore[misc]
    finally:
        await client.close()
    assert pauses(server) == before


def test_requests_sent_at_once_are_held_back_and_all_answered_in_order(
    server: ServerProcess,
) -> None:
    before = pauses(server)
    sock = never_reading_client(server)
    try:
        count = 500
        frames = b"".join(
            client_frame(json.dumps([{"type": "ping", "id": i}]).encode()) for i in range(count)
        )
        # one write: the hub reads them all at once
        assert pongs_after(sock, frames, count) == list(range(count))
    finally:
        sock.close()
    assert pauses(server) > before  # the reader fell behind: the socket waited for it


def test_a_large_message_pauses_the_read_until_it_is_taken(server: ServerProcess) -> None:
    before = pauses(server)
    sock = never_reading_client(server)
    try:
        # one frame of 100 padded pings (about 75 KB): over LARGE_MESSAGE
        requests = [{"type": "ping", "id": i, "pad": "x" * 700} for i in range(100)]
        frame = client_frame(json.dumps(requests).encode())
        assert pongs_after(sock, frame, len(requests)) == [r["id"] for r in requests]
    finally:
        sock.close()
    assert pauses(server) == before + 1
