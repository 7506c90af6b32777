"""A client that leaves while its requests still wait is let go at once (the real server).

A socket whose frame holds more history requests than may be pending at once
(``MAX_REPLIES_IN_FLIGHT``) pauses its reading until a reply finishes. When the client
left meanwhile (its TCP connection aborted), the hub went on serving the rest of the frame
and the frames still queued, one history timeout after another, for a client nobody could
answer: the client stayed counted, its subscriptions streamed, and its key's connection
slot stayed taken (``MAX_CONNECTIONS_PER_CLIENT``), so the key was locked out for minutes.
Now the hub lets the client go as soon as its connection is lost.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from backend.api import openbb_widgets
from backend.hub.clients import Replies
from tests.harness import ServerProcess, WsClient, base_env, populate, seconds

KEY = "departed-clients-test-key-0123456789"
HANG = {"type": "data", "source": "counting", "name": "HANG", "interval": "1m", "count": 10}


class KeyedServer(ServerProcess):
    """The harness's server, its own requests carrying the key."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"X-API-Key": KEY})
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("departed")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="token",
        API_KEYS=KEY,
        MAX_CONNECTIONS_PER_CLIENT="1",
        HISTORY_TIMEOUT="30",  # each waiting HANG request holds a reply slot this long
        WS_PING_INTERVAL="1",  # a lost connection is noticed within about a second
    )
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp / "server.log") as running:
        yield running


def history_calls(server: ServerProcess, name: str) -> int:
    log = Path(server.env["CANDLEWIRE_TEST_LOG"])
    return log.read_text().count(f"history {name} ") if log.exists() else 0


async def test_a_client_that_leaves_with_requests_waiting_frees_its_connection_at_once(
    server: ServerProcess,
) -> None:
    url = f"{server.ws_url}?token={KEY}"
    first = await WsClient.open(url)
    await first.send(*[HANG] * 12)  # more than may be pending: the hub's reading pauses
    deadline = time.monotonic() + seconds(10)
    while history_calls(server, "HANG") == 0:  # the frame was read, its first reply waits
        assert time.monotonic() < deadline, "the provider was never asked for HANG"
        await asyncio.sleep(0.05)
    first.connection.transport.abort()  # gone, without a close frame
    await first.close()

    # The key may hold one connection: a new one opens once the departed one is let go
    # (it was held until every waiting request had timed out, 30 s each).
    started = time.monotonic()
    while True:
        try:
            second = await WsClient.open(url)
            break
        except InvalidStatus as refused:
            assert refused.response.status_code == 429
            assert time.monotonic() - started < seconds(10), "the departed client is still held"
            await asyncio.sleep(0.2)
    try:
        await second.send({"type": "ping", "id": "after"})
        await second.wait_for("pong", lambda m: m.get("id") == "after")
        assert server.get("/health")["clients"] == 1
    finally:
        await second.close()


async def test_jobs_submitted_after_the_replies_are_cancelled_are_dropped() -> None:
    """The reader of a departed client may be waiting for a slot when it is removed: the
    job it then submits is not run (its client is gone)."""
    replies = Replies(1, "client 1")
    release = asyncio.Event()
    ran: list[str] = []

    async def blocking() -> None:
        ran.append("first")
        await release.wait()

    async def second() -> None:
        ran.append("second")

    await replies.submit("lane", blocking)
    waiting = asyncio.get_running_loop().create_task(replies.submit("lane", second))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no slot: the reader waits
    replies.cancel()  # the client left
    await asyncio.wait_for(waiting, seconds(5))
    await replies.idle()
    assert ran == ["first"] and len(replies) == 0


async def test_a_live_grid_socket_that_leaves_while_a_symbol_set_loads_is_let_go_at_once(
    server: ServerProcess,
) -> None:
    """The OpenBB live grid's socket applies one params message at a time, each waiting for
    its symbols' rows (up to HISTORY_TIMEOUT for a provider that does not answer); one
    that left stayed counted, its symbols streaming, until the queued messages were done."""
    base = server.url.replace("http://", "ws://")
    grid = await WsClient.open(f"{base}{openbb_widgets.GRID_WS_PATH}?token={KEY}")
    before = history_calls(server, "HANG")
    for _ in range(3):
        await grid.send_raw(json.dumps({"params": {"symbol": "counting:HANG"}}))
    deadline = time.monotonic() + seconds(10)
    while history_calls(server, "HANG") == before:  # the first set waits for HANG's rows
        assert time.monotonic() < deadline, "the provider was never asked for HANG"
        await asyncio.sleep(0.05)
    grid.connection.transport.abort()  # gone, without a close frame
    await grid.close()
    started = time.monotonic()
    while server.get("/health")["clients"] != 0:
        assert time.monotonic() - started < seconds(10), "the departed grid is still held"
        await asyncio.sleep(0.2)
