"""End to end (real server, real provider process, real sockets): resubscribes within the
linger, fast flips between keys, many subscribe cycles, and requests taking effect in the
order sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import harness
from tests.harness import ServerProcess, WsClient, populated_server, seconds

LINGER = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hub_order")
    with populated_server(
        tmp,
        PROVIDERS="counting",
        STREAM_LINGER_SECONDS=str(LINGER),
        CANDLEWIRE_TEST_PERIOD="0.05",
    ) as running:
        yield running


def req(kind: str, name: str, interval: str = "1m", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "source": "counting", "name": name, "interval": interval, **extra}


def key(name: str, interval: str = "1m") -> Any:
    return harness.same_key(name, interval)


async def updates_keep_coming(ws: WsClient, name: str, interval: str = "1m") -> None:
    """An update now, and another one after the linger has long passed."""
    await ws.wait_for("data_update", key(name, interval), timeout=3, after=len(ws.messages))
    await asyncio.sleep(LINGER * 1.5)
    await ws.wait_for("data_update", key(name, interval), timeout=3, after=len(ws.messages))


async def health_counts(server: ServerProcess, subscriptions: int) -> None:
    deadline = time.monotonic() + seconds(5)
    while server.get("/health")["subscriptions"] != subscriptions:
        assert time.monotonic() < deadline, server.get("/health")
        await asyncio.sleep(0.05)


def index_of(ws: WsClient, kind: str, name: str, interval: str = "1m", after: int = 0) -> int:
    for i, message in enumerate(ws.messages[after:], after):
        if message.get("type") == kind and key(name, interval)(message):
            return i
    raise AssertionError(f"no {kind} for {name} {interval}")


async def test_resubscribing_within_the_linger_keeps_updates_coming(
    server: ServerProcess, client: WsClient
) -> None:
    await client.send(req("data", "AAA", count=5))
    await client.wait_for("data_update", key("AAA"))
    await client.send(req("unsubscribe", "AAA"))
    await client.wait_for("unsubscribed", key("AAA"))
    await asyncio.sleep(0.3)
    mark = len(client.messages)
    await client.send(req("data", "AAA", count=5))
    await client.wait_for("data_init", key("AAA"), after=mark)
    await updates_keep_coming(client, "AAA")
    await health_counts(server, 1)


async def test_fast_flips_between_two_keys_keep_the_last_one_streaming(
    server: ServerProcess, client: WsClient
) -> None:
    await client.send(req("data", "BBB", "3m", count=5))
    await client.wait_for("data_update", key("BBB", "3m"))
    for pause in (0.3, 0.0):
        await client.send(req("unsubscribe", "BBB", "3m"), req("data", "CCC", "3m", count=5))
        await asyncio.sleep(pause)
        mark = len(client.messages)
        await client.send(req("unsubscribe", "CCC", "3m"), req("data", "BBB", "3m", count=5))
        await client.wait_for("data_init", key("BBB", "3m"), after=mark)
        await client.wait_for("unsubscribed", key("CCC", "3m"), after=mark)
    await updates_keep_coming(client, "BBB", "3m")
    gone = index_of(client, "unsubscribed", "CCC", "3m", after=mark)
    assert not [m for m in client.of_type("data_update", gone) if key("CCC", "3m")(m)]
    await health_counts(server, 1)


async def test_two_hundred_subscribe_cycles_then_data_still_streams(
    server: ServerProcess, client: WsClient
) -> None:
    for _ in range(200):
        await client.send(req("data", "CCC", "5m", count=2))
        await client.send(req("unsubscribe", "CCC", "5m"))
    await client.send(req("data", "CCC", "5m", count=2))
    deadline = time.monotonic() + seconds(30)
    while len(client.of_type("data_init")) < 201:
        assert time.monotonic() < deadline, len(client.of_type("data_init"))
        await asyncio.sleep(0.05)
    assert len(client.of_type("unsubscribed")) == 200
    await updates_keep_coming(client, "CCC", "5m")
    await health_counts(server, 1)


async def test_an_unsubscribe_then_data_in_one_frame_leaves_the_key_subscribed(
    server: ServerProcess, client: WsClient
) -> None:
    await client.send(req("data", "AAA", "15m", count=5))
    await client.wait_for("data_init", key("AAA", "15m"))
    mark = len(client.messages)
    await client.send(req("unsubscribe", "AAA", "15m"), req("data", "AAA", "15m", count=5))
    await client.wait_for("data_init", key("AAA", "15m"), after=mark)
    kinds = [m["type"] for m in client.messages[mark:] if key("AAA", "15m")(m)]
    # An update already on its way when the frame arrived may come first; after
    # ``unsubscribed`` nothing of the key comes before the new ``data_init``.
    first = kinds.index("unsubscribed")
    assert set(kinds[:first]) <= {"data_update"}
    assert kinds[first : first + 2] == ["unsubscribed", "data_init"]
    await updates_keep_coming(client, "AAA", "15m")
    await health_counts(server, 1)
    mark = len(client.messages)
    await client.send(req("data", "BBB", "15m", count=5), req("unsubscribe", "BBB", "15m"))
    await client.wait_for("unsubscribed", key("BBB", "15m"), after=mark)
    await health_counts(server, 1)


async def test_the_data_items_of_a_frame_are_answered_before_its_other_items(
    client: WsClient,
) -> None:
    """protocols.md 1.12 (4), through the real server: a search, a ping and a history page
    sent before a ``data`` (of a key nobody holds yet: its history comes from the provider
    process) in one frame answer after that ``data_init``."""
    mark = len(client.messages)
    await client.send(
        {"type": "search_data", "search": ""},
        {"type": "ping", "id": "p"},
        req("data_history", "BBB", "1h", end="2030-01-01 00:00:00", count=3),
        req("data", "CCC", "4h", count=5),
    )
    await client.wait_for("search_data_done", after=mark)
    await client.wait_for("pong", after=mark)
    await client.wait_for("data_history", key("BBB", "1h"), after=mark)
    kinds = [m["type"] for m in client.messages[mark:] if m["type"] != "data_update"]
    assert kinds[0] == "data_init", kinds
    assert sorted(kinds[1:]) == ["data_history", "pong", "search_data_done"], kinds


async def test_search_replies_come_in_the_order_sent_and_name_their_search(
    client: WsClient,
) -> None:
    texts = ["aaa", "b", "", "ccc", "zzz-nothing", "a"]
    for text in texts:
        await client.send({"type": "search_data", "search": text})
    deadline = time.monotonic() + seconds(10)
    while len(client.of_type("search_data_done")) < len(texts):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    replies = client.of_type("search_data_done")
    assert [r["search"] for r in replies] == texts
    assert replies[0]["results"][0]["name"] == "AAA"
    assert replies[4]["results"] == []
