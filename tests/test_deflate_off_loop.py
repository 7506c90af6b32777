"""Large frames to compressed (permessage-deflate) clients are compressed off the event loop.

Unit level, the direct writer over a stand-in transport and a real ``websockets`` server
connection whose deflate handshake was made in memory with a real client connection: a batch
of more than ``DEFLATE_ON_LOOP`` payload bytes is compressed in a worker thread, the
compressor is never used from two threads at once, the bytes written are exactly those
``websockets``' own ``send_text`` makes (the client connection decodes them, in order), small
frames stay on the loop, frames queued meanwhile wait behind the batch, the batch counts as
pending for back-pressure, and a client closed or lost meanwhile gets nothing more.

End to end, the real server: a compressed client gets 10,000-bar histories, many in a row
and between live updates, equal to what an uncompressed client gets, and clients that leave
in the middle of such a stream cost the server nothing but their connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from backend.wire.frames import text_frame
from backend.wire.outbox import Outbox
from backend.ws import writers
from backend.ws.writers import DirectWriter, LeanEvent
from tests.harness import ServerProcess, WsClient, eventually, populated_server, same_key

BIG = writers.DEFLATE_ON_LOOP * 4


def _payload(n: int, size: int) -> bytes:
    """A JSON text of about ``size`` bytes, numbered ``n``, that deflates like bars do."""
    bars = ",".join(
        f"[{1_700_000_000_000 + 60_000 * i},{100 + i % 97}.25,{i % 13}]"
        for i in range(size // 32 + 1)
    )
    return f'{{"type":"data_history","n":{n},"data":[{bars}]}}'.encode()


def _deflate_pair() -> tuple[ServerProtocol, ClientProtocol]:
    """A server connection and its client, open, with permessage-deflate negotiated as
    uvicorn offers it (both directions with context takeover)."""
    client = ClientProtocol(
        parse_uri("ws://127.0.0.1/websocket/"), extensions=[ClientPerMessageDeflateFactory()]
    )
    client.send_request(client.connect())
    server = ServerProtocol(
        extensions=[
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        ]
    )
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert server.extensions and client.extensions
    return server, client


class _Transport:
    """What the direct writer uses of an asyncio transport; records every write."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after the transport was closed"
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


class _Protocol:
    """What the direct writer uses of uvicorn's sansio protocol object."""

    def __init__(self, conn: ServerProtocol) -> None:
        self.conn = conn
        self.transport = _Transport()
        self.writable = LeanEvent(True)
        self.close_sent = False
        self.disconnected = False


class _EncodeSpy:
    """Wraps a connection's deflate encoder: records the thread and size of each data
    frame it compresses, fails on two uses at once, and can hold a frame of at least
    ``hold_from`` bytes until ``release`` is set."""

    def __init__(self, extension: PerMessageDeflate, hold_from: int | None = None) -> None:
        self.extension = extension
        self.real = extension.encode
        self.calls: list[tuple[int, int]] = []  # (thread id, payload bytes)
        self.active = 0
        self.overlaps = 0
        self.hold_from = hold_from
        self.holding = threading.Event()
        self.release = threading.Event()
        extension.encode = self  # type: ignore[method-assign]

    def __call__(self, frame: Frame) -> Frame:
        if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return self.real(frame)
        self.active += 1
        try:
            if self.active > 1:
                self.overlaps += 1
            self.calls.append((threading.get_ident(), len(frame.data)))
            if self.hold_from is not None and len(frame.data) >= self.hold_from:
                self.holding.set()
                assert self.release.wait(10), "never released"
            return self.real(frame)
        finally:
            self.active -= 1


def _decoded(client: ClientProtocol, written: list[bytes]) -> list[Frame]:
    """The frames the client reads from ``written`` (decompressed, in order)."""
    client.receive_data(b"".join(written))
    return [event for event in client.events_received() if isinstance(event, Frame)]


async def _writer(conn: ServerProtocol) -> tuple[DirectWriter, _Protocol, Outbox]:
    protocol = _Protocol(conn)
    outbox = Outbox(1000)
    writer = DirectWriter(protocol, outbox, "test")  # type: ignore[arg-type]
    outbox.set_wake(writer.wake, writer.buffered, writer.until_below)
    return writer, protocol, outbox


async def test_a_large_batch_is_compressed_in_a_thread_as_websockets_would_write_it() -> None:
    server, client = _deflate_pair()
    twin, _ = _deflate_pair()  # the same stream through websockets' own send_text
    spy = _EncodeSpy(server.extensions[0])  # type: ignore[arg-type]
    writer, protocol, outbox = await _writer(server)
    loop_thread = threading.get_ident()
    payloads = [b'{"type":"pong","id":1}', _payload(2, BIG), b'{"type":"data_update","n":3}']
    payloads += [_payload(4, 2 * BIG), b'{"type":"data_update","n":5}']
    for payload in payloads[:3]:
        outbox.push(text_frame(payload))
    await asyncio.sleep(0)  # the flush: the small one before the large one is written now
    assert len(protocol.transport.written) == 1
    assert writer.buffered() >= len(payloads[1])  # the batch in the thread counts as pending
    for payload in payloads[3:]:  # queued while the batch is compressed: they wait behind it
        outbox.push(text_frame(payload))
    await eventually(lambda: not outbox.nbytes and writer.buffered() == 0, 10, "all written")
    threads = [thread for thread, _ in spy.calls]
    assert [size for _, size in spy.calls] == [len(payload) for payload in payloads]
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread and threads[2] != loop_thread  # the large one and after
    assert threads[3] != loop_thread  # the next large batch too
    assert spy.overlaps == 0
    for payload in payloads:
        twin.send_text(payload)
    assert b"".join(protocol.transport.written) == b"".join(twin.data_to_send())
    frames = _decoded(client, protocol.transport.written)
    assert [frame.data for frame in frames] == payloads


async def test_small_frames_are_compressed_and_written_on_the_loop_in_the_same_turn() -> None:
    server, client = _deflate_pair()
    spy = _EncodeSpy(server.extensions[0])  # type: ignore[arg-type]
    _, protocol, outbox = await _writer(server)
    payloads = [f'{{"type":"data_update","n":{n}}}'.encode() for n in range(50)]
    for payload in payloads:
        outbox.push(text_frame(payload))
    await asyncio.sleep(0)
    assert len(protocol.transport.written) == 1
    assert {thread for thread, _ in spy.calls} == {threading.get_ident()}
    assert [frame.data for frame in _decoded(client, protocol.transport.written)] == payloads


async def test_many_medium_replies_in_one_batch_leave_the_loop_past_the_threshold() -> None:
    server, client = _deflate_pair()
    spy = _EncodeSpy(server.extensions[0])  # type: ignore[arg-type]
    writer, protocol, outbox = await _writer(server)
    medium = writers.DEFLATE_ON_LOOP // 3
    payloads = [_payload(n, medium) for n in range(12)]  # each under it, together 4 times
    for payload in payloads:
        outbox.push(text_frame(payload))
    await eventually(lambda: writer.buffered() == 0 and not outbox.nbytes, 10, "written")
    on_loop = [size for thread, size in spy.calls if thread == threading.get_ident()]
    assert sum(on_loop) < writers.DEFLATE_ON_LOOP
    assert [frame.data for frame in _decoded(client, protocol.transport.written)] == payloads


async def test_a_client_closed_while_its_batch_is_compressed_gets_nothing_after_the_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client = _deflate_pair()
    spy = _EncodeSpy(server.extensions[0], hold_from=writers.DEFLATE_ON_LOOP)  # type: ignore[arg-type]
    writer, protocol, outbox = await _writer(server)
    outbox.push(text_frame(_payload(1, BIG)))
    await eventually(spy.holding.is_set, 10, "the batch is being compressed")
    waiting = asyncio.get_running_loop().create_task(writer.until_below(0))
    outbox.push(text_frame(b'{"type":"data_update"}'))  # held behind the batch
    await asyncio.sleep(0.05)
    assert protocol.transport.written == [] and not waiting.done()
    with caplog.at_level("DEBUG", logger="backend.ws.writers"):
        writer.close(1013, "too slow")
        spy.release.set()
        await asyncio.wait_for(waiting, 10)  # a stopped writer keeps nobody waiting
        await eventually(lambda: writer._deflating is None, 10, "the batch came back")
        await asyncio.sleep(0.01)
    assert "failed" not in caplog.text
    frames = _decoded(client, protocol.transport.written)
    assert [frame.opcode for frame in frames] == [Opcode.CLOSE]  # the batch was dropped
    assert writer.buffered() == 0


@pytest.mark.parametrize("how", ["lost", "closed by the client"])
async def test_a_client_gone_while_its_batch_is_compressed_gets_nothing(how: str) -> None:
    server, client = _deflate_pair()
    spy = _EncodeSpy(server.extensions[0], hold_from=writers.DEFLATE_ON_LOOP)  # type: ignore[arg-type]
    writer, protocol, outbox = await _writer(server)
    outbox.push(text_frame(_payload(1, BIG)))
    await eventually(spy.holding.is_set, 10, "the batch is being compressed")
    if how == "lost":
        protocol.disconnected = True
    else:  # its close arrives: websockets answers it (uncompressed) and the transport closes
        client.send_close(1000)
        server.receive_data(b"".join(client.data_to_send()))
        protocol.transport.write(b"".join(server.data_to_send()))
        protocol.transport.closing = True
    written = list(protocol.transport.written)
    spy.release.set()
    await eventually(lambda: writer._deflating is None, 10, "the batch came back")
    outbox.push(text_frame(b'{"type":"data_update"}'))
    await asyncio.sleep(0.01)
    assert protocol.transport.written == written


async def test_at_most_deflate_threads_batches_are_compressed_at_once() -> None:
    pairs = [_deflate_pair() for _ in range(writers.DEFLATE_THREADS + 3)]
    running = [0, 0]  # now, most
    lock = threading.Lock()
    overlap = threading.Event()  # never set: each compression takes 0.2 s longer

    def counting(spy: _EncodeSpy) -> Callable[[Frame], Frame]:
        def encode(frame: Frame) -> Frame:
            with lock:
                running[0] += 1
                running[1] = max(running)
            overlap.wait(0.2)
            with lock:
                running[0] -= 1
            return spy.real(frame)

        return encode

    outboxes = []
    for server, _ in pairs:
        extension: Any = server.extensions[0]
        extension.encode = counting(_EncodeSpy(extension))
        writer, _protocol, outbox = await _writer(server)
        outbox.push(text_frame(_payload(0, BIG)))
        outboxes.append((writer, outbox))
    await eventually(
        lambda: all(not box.nbytes and w._deflating is None for w, box in outboxes),
        20,
        "all written",
    )
    assert running[1] == writers.DEFLATE_THREADS


# End to end ------------------------------------------------------------------------------

HISTORY_BARS = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(tmp_path_factory.mktemp("deflate"), PROVIDERS="counting") as running:
        yield running


def _history(name: str, end: int) -> dict[str, Any]:
    return {
        "type": "data_history",
        "source": "counting",
        "name": name,
        "interval": "1m",
        "end": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end)),
        "count": HISTORY_BARS,
    }


def _live(name: str) -> dict[str, Any]:
    return {"type": "data", "source": "counting", "name": name, "interval": "1m", "count": 5}


def _ends(n: int) -> list[int]:
    """``n`` end times in the past (bars that no longer change), all different."""
    hour = int(time.time()) // 3600 * 3600
    return [hour - 86_400 - 3_600 * k for k in range(n)]


async def _histories(ws: WsClient, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replies to ``requests`` sent in one frame, by key and first bar (they are
    answered as their histories come, not in order)."""
    mark = len(ws.messages)
    await ws.send(*requests)
    await eventually(
        lambda: len(ws.of_type("data_history", after=mark)) == len(requests), 60, "histories"
    )
    replies = ws.of_type("data_history", after=mark)
    return sorted(replies, key=lambda reply: (reply["name"], reply["data"][0]["date"]))


async def test_a_compressed_client_gets_large_histories_between_updates_as_a_plain_one(
    server: ServerProcess,
) -> None:
    plain = await WsClient.open(server.ws_url, max_size=None, compression=None)
    packed = await WsClient.open(server.ws_url, max_size=None, compression="deflate")
    try:
        assert packed.connection.protocol.extensions and not plain.connection.protocol.extensions
        for ws in (plain, packed):
            await ws.send(_live("BBB"), _live("CCC"))
            await ws.wait_for("data_update", same_key("CCC", "1m"), timeout=20)
        requests = [_history(name, end) for end in _ends(6) for name in ("AAA", "BBB")]
        for _ in range(3):  # many in a row, each round 12 histories of 10,000 bars
            updates = len(packed.of_type("data_update"))
            expected = await _histories(plain, requests)
            got = await _histories(packed, requests)
            assert all(len(reply["data"]) == HISTORY_BARS for reply in got)
            assert got == expected
            await packed.wait_for("data_update", after=len(packed.messages) - 1, timeout=20)
            assert len(packed.of_type("data_update")) > updates
        await packed.send({"type": "ping", "id": 9})
        assert (await packed.wait_for("pong", timeout=20))["id"] == 9
    finally:
        await plain.close()
        await packed.close()


async def test_compressed_clients_leaving_mid_stream_leave_the_server_serving(
    server: ServerProcess,
) -> None:
    requests = [_history("AAA", end) for end in _ends(10)]
    for round_ in range(5):
        leaving = await WsClient.open(server.ws_url, max_size=None, compression="deflate")
        await leaving.send(_live("BBB"), *requests)
        if round_ % 2:  # gone after the first large reply, or before any
            await leaving.wait_for("data_history", timeout=30)
        if round_ == 4:  # without a close handshake
            leaving.connection.transport.abort()
        await leaving.close()
    staying = await WsClient.open(server.ws_url, max_size=None, compression="deflate")
    try:
        [reply] = await _histories(staying, requests[:1])
        assert len(reply["data"]) == HISTORY_BARS
    finally:
        await staying.close()
    log = await asyncio.to_thread(server.log_path.read_text)
    assert "Traceback" not in log and "compressing frames failed" not in log
