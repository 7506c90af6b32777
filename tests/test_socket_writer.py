"""Frames the hub builds once, and the writers that put them on the socket.

The frames are checked by the websockets library's own parser; the direct writer is checked
end to end with clients that do and do not negotiate compression (both must receive the same
messages); the portable ASGI writer is checked with a stand-in WebSocket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from backend.wire.frames import payload_of, text_frame
from backend.wire.outbox import Outbox
from backend.ws.writers import AsgiWriter, writer_for
from tests.harness import ServerProcess, WsClient, populated_server, same_key


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_a_prebuilt_frame_is_one_text_frame_to_a_real_parser(size: int) -> None:
    payload = json.dumps({"type": "data_update", "pad": "é" * (size // 2)}).encode()[:size]
    frame = text_frame(payload)
    reader = StreamReader()
    reader.feed_data(frame)
    parse = Frame.parse(reader.read_exact, mask=False)  # how a client reads a server frame
    with pytest.raises(StopIteration) as done:  # the whole frame is there: parsed at once
        next(parse)
    event = done.value.value
    assert not reader.buffer  # and nothing after it
    assert event.opcode is Opcode.TEXT
    assert event.fin
    assert event.data == payload
    assert payload_of(frame) == payload


class _StandInSocket:
    """What AsgiWriter uses of Starlette's WebSocket: ``scope`` and ``send_text``."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        await asyncio.sleep(0)
        self.sent.append(text)


async def test_without_uvicorn_the_portable_writer_sends_every_frame_in_order() -> None:
    socket = _StandInSocket()
    outbox = Outbox(100)
    writer = writer_for(socket, outbox, "test")  # type: ignore[arg-type]
    assert isinstance(writer, AsgiWriter)
    outbox.push(text_frame(b'{"n":1}'))
    outbox.push(text_frame(b'{"n":2}'), ("k", 1))
    outbox.push(text_frame(b'{"n":3}'), ("k", 1))  # replaces n=2, still unsent
    for _ in range(20):
        await asyncio.sleep(0)
    outbox.push(text_frame(b'{"n":4}'))
    for _ in range(20):
        await asyncio.sleep(0)
    writer.stop()
    assert socket.sent == ['{"n":1}', '{"n":3}', '{"n":4}']


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(tmp_path_factory.mktemp("writer"), PROVIDERS="counting") as running:
        yield running


def _request(name: str, count: int) -> dict[str, Any]:
    return {"type": "data", "source": "counting", "name": name, "interval": "1m", "count": count}


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_clients_with_and_without_compression_get_whole_messages(
    server: ServerProcess, compression: str | None
) -> None:
    client = await WsClient.open(server.ws_url, compression=compression)
    try:
        negotiated = client.connection.protocol.extensions
        assert bool(negotiated) == (compression is not None)
        # 5,000 bars: a frame over 64 KiB (8-byte length); then small live updates.
        await client.send(_request("AAA", 5000), _request("BBB", 10))
        big = await client.wait_for("data_init", same_key("AAA", "1m"))
        assert len(big["data"]) == 5000
        await client.wait_for("data_init", same_key("BBB", "1m"))
        await client.wait_for("data_update", same_key("AAA", "1m"))
        await client.wait_for("data_update", same_key("BBB", "1m"))
        await client.send({"type": "ping", "id": 7})
        pong = await client.wait_for("pong")
        assert pong["id"] == 7
    finally:
        await client.close()
