"""Frames the hub builds once, and the writers that put them on the socket.

The frames are checked by the websockets library's own parser; the direct writer is checked
end to end with clients that do and do not negotiate compression (both must receive the same
messages); the portable ASGI writer is checked with a stand-in WebSocket. Which writer a
connection gets is checked with the app served in-process under server.py's own uvicorn
configuration: the direct one, or the portable one when uvicorn's internals are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from backend.settings import load_settings
from backend.wire.frames import payload_of, payloads_of, text_frame
from backend.wire.outbox import Outbox
from backend.ws import endpoint, writers
from backend.ws.writers import AsgiWriter, DirectWriter, SocketWriter, writer_for
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    populate,
    populated_server,
    same_key,
    seconds,
)


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


def test_frames_joined_in_one_entry_split_back_into_their_payloads() -> None:
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 70_000, b'{"type":"indicator_update"}']
    joined = b"".join(text_frame(payload) for payload in payloads)
    assert payloads_of(joined) == payloads
    assert payloads_of(text_frame(b"x")) == [b"x"]


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


class _StandInWriter:
    """What FlushTurn uses of a DirectWriter: ``_flush`` and ``_label``."""

    def __init__(self, label: str, log: list[str], fail: bool = False) -> None:
        self._label = label
        self.log = log
        self.fail = fail

    def _flush(self) -> None:
        self.log.append(self._label)
        if self.fail:
            raise OSError("the socket went away")


async def test_writers_woken_in_one_turn_are_flushed_by_one_callback_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    turn = writers.FlushTurn.of(loop)
    assert writers.FlushTurn.of(loop) is turn  # one per loop
    log: list[str] = []
    scheduled: list[object] = []
    real_call_soon = loop.call_soon

    def counting_call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(callback)
        return real_call_soon(callback, *args, **kwargs)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign]
    try:
        for name in ("a", "b", "c"):
            turn.add(_StandInWriter(name, log, fail=name == "b"))  # type: ignore[arg-type]
    finally:
        loop.call_soon = real_call_soon  # type: ignore[method-assign]
    assert len(scheduled) == 1 and log == []  # nothing written before the loop's next turn
    with caplog.at_level("ERROR", logger="backend.ws.writers"):
        await asyncio.sleep(0)
    assert log == ["a", "b", "c"]  # a failing writer is logged; the others still write
    assert "b: writing to the socket failed" in caplog.text
    turn.add(_StandInWriter("d", log))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert log[-1] == "d"  # a later turn gets a callback of its own


def test_a_loops_flush_queue_goes_with_the_loop() -> None:
    loop = asyncio.new_event_loop()
    writers.FlushTurn.of(loop)
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None


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


@contextlib.asynccontextmanager
async def serving_in_process(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The app served in this process (real provider processes, a real socket) with
    server.py's uvicorn configuration; yields its WebSocket URL."""
    import server as entry

    env = base_env(tmp, PROVIDERS="counting", LOG_LEVEL="WARNING")
    assert populate(env).returncode == 0
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sock = entry.bind("127.0.0.1", 0)
    hub = uvicorn.Server(entry.uvicorn_config(load_settings()))
    serving = asyncio.get_running_loop().create_task(hub.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + seconds(30)
        while not hub.started:
            assert time.monotonic() < deadline and not serving.done(), "no server"
            await asyncio.sleep(0.05)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/websocket/"
    finally:
        hub.should_exit = True
        await asyncio.wait_for(serving, seconds(30))
        sock.close()


async def _writer_chosen_in_process(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> SocketWriter:
    """Open one real connection to the app served in-process, check that it is answered,
    and return the writer its endpoint chose."""
    chosen: list[SocketWriter] = []

    def spy(websocket: Any, outbox: Outbox, label: str) -> SocketWriter:
        chosen.append(writer_for(websocket, outbox, label))
        return chosen[-1]

    monkeypatch.setattr(endpoint, "writer_for", spy)
    async with serving_in_process(tmp, monkeypatch) as url:
        client = await WsClient.open(url)
        await client.send(_request("AAA", 3000))
        init = await client.wait_for("data_init", same_key("AAA", "1m"), timeout=30)
        assert len(init["data"]) == 3000
        await client.close()
    assert len(chosen) == 1
    return chosen[0]


async def test_under_server_py_uvicorn_config_the_direct_writer_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = await _writer_chosen_in_process(tmp_path, monkeypatch)
    assert isinstance(writer, DirectWriter)


async def test_when_uvicorns_protocol_module_cannot_be_imported_the_portable_writer_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers.sansio_protocol_class.cache_clear()
    # A uvicorn whose protocol module is not where this code looks (uvicorn itself still
    # finds its own): the guarded import fails.
    monkeypatch.setattr(writers, "UVICORN_PROTOCOL_MODULE", "uvicorn.protocols.websockets.gone")
    try:
        assert writers.sansio_protocol_class() is None
        writer = await _writer_chosen_in_process(tmp_path, monkeypatch)
    finally:
        writers.sansio_protocol_class.cache_clear()
    assert isinstance(writer, AsgiWriter)


def test_a_protocol_object_without_what_the_direct_writer_uses_gets_the_portable_one() -> None:
    protocol_class = writers.sansio_protocol_class()
    assert protocol_class is not None
    bare = object.__new__(protocol_class)  # an uvicorn whose protocol lacks those attributes
    socket = _StandInSocket()
    socket.scope[writers.SCOPE_KEY] = bare
    assert isinstance(writer_for(socket, Outbox(10), "test"), AsgiWriter)  # type: ignore[arg-type]
