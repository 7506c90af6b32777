"""What an idle connection keeps: uvicorn's per-connection objects given back after the
handshake (``backend.ws.writers.release_handshake``, ``backend.access.frontdoor``).

The app is served in-process under server.py's own uvicorn configuration with real
connections: after the upgrade, the HTTP protocol object is gone without a garbage
collection, the handshake's request and response are released, the receive queue is a
:class:`LeanQueue`, and the connection still reads every frame and closes as before.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from backend.access import frontdoor
from backend.access.identity import Identity, current
from backend.access.subscriptions import SubscriptionQuota
from backend.access.tiers import Tiers
from backend.settings import Settings
from backend.wire.outbox import Outbox
from backend.ws import endpoint, writers
from backend.ws.writers import DirectWriter, LeanEvent, LeanQueue, SocketWriter, writer_for
from tests.harness import WsClient, eventually, same_key, seconds
from tests.test_socket_writer import serving_in_process


def _request(name: str, count: int) -> dict[str, Any]:
    return {"type": "data", "source": "counting", "name": name, "interval": "1m", "count": count}


async def test_lean_queue_is_a_fifo_whose_get_waits_and_survives_cancellation() -> None:
    queue = LeanQueue()
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    waiting = asyncio.get_running_loop().create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(waiting, seconds(5)) == "a"
    assert queue.qsize() == 1 and await queue.get() == "b"
    cancelled = asyncio.get_running_loop().create_task(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.put_nowait("c")  # nobody waits: kept for the next reader
    assert queue.get_nowait() == "c" and queue.empty()


async def test_lean_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    event = LeanEvent()
    assert not event.is_set()
    loop = asyncio.get_running_loop()
    waiters = [loop.create_task(event.wait()) for _ in range(3)]
    gone = loop.create_task(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), seconds(5)) == [True] * 3
    assert await event.wait()  # set: returns at once
    event.clear()
    again = loop.create_task(event.wait())
    await asyncio.sleep(0)
    assert not again.done()
    event.set()
    assert await asyncio.wait_for(again, seconds(5))


async def test_after_the_upgrade_uvicorns_leftovers_are_given_back_and_the_socket_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocols: list[Any] = []
    chosen: list[SocketWriter] = []
    http_objects: list[weakref.ref[Any]] = []

    def spy(websocket: Any, outbox: Outbox, label: str) -> SocketWriter:
        protocols.append(websocket.scope.get(writers.SCOPE_KEY))
        chosen.append(writer_for(websocket, outbox, label))
        return chosen[-1]

    upgrade = frontdoor.GuardedHttp.handle_websocket_upgrade

    def spy_upgrade(self: frontdoor.GuardedHttp) -> None:
        http_objects.append(weakref.ref(self))
        upgrade(self)

    monkeypatch.setattr(endpoint, "writer_for", spy)
    monkeypatch.setattr(frontdoor.GuardedHttp, "handle_websocket_upgrade", spy_upgrade)
    async with serving_in_process(tmp_path, monkeypatch) as url:
        gc.disable()  # what is freed must go by reference counting alone
        try:
            client = await WsClient.open(url)
            await client.send(_request("AAA", 5))
            first = await client.wait_for("data_init", same_key("AAA", "1m"), timeout=30)
            assert len(http_objects) == 1
            assert http_objects[0]() is None  # the HTTP protocol object went at the upgrade
        finally:
            gc.enable()
        (protocol,) = protocols
        assert protocol.request is None and protocol.response is None
        assert isinstance(protocol.queue, LeanQueue)
        assert isinstance(protocol.writable, LeanEvent) and protocol.writable.is_set()
        # frames still arrive through the lean queue, in order, and are answered
        await client.send(_request("BBB", 7))
        await client.send(_request("CCC", 9))
        second = await client.wait_for("data_init", same_key("BBB", "1m"), timeout=30)
        third = await client.wait_for("data_init", same_key("CCC", "1m"), timeout=30)
        assert (len(first["data"]), len(second["data"]), len(third["data"])) == (5, 7, 9)
        await client.close()
        # the close reached the endpoint through the queue: it ended and stopped its writer
        (writer,) = chosen
        assert isinstance(writer, DirectWriter)
        deadline = asyncio.get_running_loop().time() + seconds(10)
        while not (protocol.disconnected and writer._stopped):
            assert asyncio.get_running_loop().time() < deadline, "the connection never ended"
            await asyncio.sleep(0.02)


def test_subscription_quota_counts_linearly_with_connections_behind_one_address() -> None:
    quota = SubscriptionQuota(Tiers(Settings(MAX_SUBSCRIPTIONS_PER_CALLER=6_000)))
    held: dict[int, int] = {}
    calls = 0

    def count(connection: int) -> int:
        nonlocal calls
        calls += 1
        return held.get(connection, 0)

    quota.count = count
    token = current.set(Identity(client="203.0.113.9", address="203.0.113.9"))
    try:
        for connection in range(5_000):  # 5,000 sockets behind one NAT, one key each
            assert quota.admit(connection) is None
            held[connection] = 1
        assert calls < 10 * 5_000  # linear (a sum over all connections per admission: 12.5M)
        for connection in range(4_000):  # most of them leave
            del held[connection]
        for connection in range(5_000, 10_000):  # others come: within the limit again
            assert quota.admit(connection) is None
            held[connection] = 1
        assert len(quota.connections["203.0.113.9"]) < 2 * 6_000  # the closed are forgotten
        refused = quota.admit(10_000)  # 6,000 held: the limit holds exactly
        assert refused is not None and "6000" in refused
    finally:
        current.reset(token)


def _waiting_chain(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines a task is suspended in, outermost first (each one a frame kept)."""
    chain: list[str] = []
    awaited: Any = task.get_coro()
    while hasattr(awaited, "cr_code"):
        chain.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return chain


async def test_an_idle_connection_waits_in_few_frames_and_keeps_no_handshake_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scopes: list[dict[str, Any]] = []

    def spy(websocket: Any, outbox: Outbox, label: str) -> SocketWriter:
        scopes.append(websocket.scope)
        return writer_for(websocket, outbox, label)

    monkeypatch.setattr(endpoint, "writer_for", spy)
    async with serving_in_process(tmp_path, monkeypatch) as url:
        client = await WsClient.open(url, additional_headers={"X-Forwarded-For": "203.0.113.7"})
        await client.send(_request("AAA", 5))
        await client.wait_for("data_init", same_key("AAA", "1m"), timeout=30)
        (scope,) = scopes
        # the handshake's headers, subprotocols and denial extension were given back
        assert scope["headers"] == () and scope["subprotocols"] == ()
        assert "extensions" not in scope
        # uvicorn's protocol object keeps its attributes in a dict sized to fit
        attributes = vars(scope[writers.SCOPE_KEY])
        assert sys.getsizeof(attributes) <= sys.getsizeof(dict(attributes))
        # uvicorn's proxy headers still applied (127.0.0.1 is a trusted proxy by default)
        assert scope["client"][0] == "203.0.113.7"

        def connection_chain() -> list[str]:
            for task in asyncio.all_tasks():
                chain = _waiting_chain(task)
                if chain and chain[0].endswith(".run_asgi"):
                    return chain
            return []

        await eventually(lambda: "Frames.__anext__" in connection_chain(), 10, "an idle read")
        chain = connection_chain()
        # the server's task, the entrance, the endpoint, its frame reader, uvicorn's receive
        assert chain[:5] == [
            "WebSocketsSansIOProtocol.run_asgi",
            "Entrance.__call__",
            "serve_connection",
            "Frames.__anext__",
            "WebSocketsSansIOProtocol.receive",
        ]
        # frames still arrive and are answered; the close still ends the connection
        await client.send(_request("BBB", 7))
        second = await client.wait_for("data_init", same_key("BBB", "1m"), timeout=30)
        assert len(second["data"]) == 7
        await client.close()
        await eventually(lambda: not connection_chain(), 10, "the connection's end")
