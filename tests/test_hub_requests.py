"""Client requests through the real Hub (fake provider, no sockets): effects in the order
sent, replies of one kind in order, searches that say what they answer, bounded work."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from backend.errors import ProviderUnavailable
from backend.hub.clients import Client
from backend.hub.hub import Hub
from backend.model.bars import SeriesId
from tests.hub_fakes import (
    SOURCE,
    FakeClock,
    FakeSymbols,
    about,
    connect,
    make_hub,
    request,
    send,
    taken,
)

K1 = SeriesId(SOURCE, "AAA", "1m")
K2 = SeriesId(SOURCE, "BBB", "1m")


async def test_a_data_request_does_not_jump_ahead_of_the_unsubscribe_before_it() -> None:
    hub, _ = make_hub(FakeClock())
    client = connect(hub)
    await send(hub, client, request("data", K1))
    await send(hub, client, request("unsubscribe", K1), request("data", K2))
    await send(hub, client, request("unsubscribe", K2), request("data", K1))
    assert hub.subs.keys_of(client.id) == {K1}
    await send(hub, client, request("data", K2), request("unsubscribe", K2))
    assert hub.subs.keys_of(client.id) == {K1}


async def test_replies_about_one_key_come_in_the_order_of_the_requests() -> None:
    hub, _ = make_hub(FakeClock())
    client = connect(hub)
    await send(
        hub,
        client,
        request("data", K1),
        request("unsubscribe", K1),
        request("unsubscribe", K1),
        request("data", K1, stream=False),
    )
    kinds = [(m["type"], m.get("code")) for m in taken(client)]
    assert kinds == [
        ("data_init", None),
        ("unsubscribed", None),
        ("error", "not_subscribed"),
        ("data_init", None),
    ]


async def test_frames_take_effect_in_order_even_when_sent_back_to_back() -> None:
    hub, _ = make_hub(FakeClock())
    client = connect(hub)
    for _ in range(20):
        await send(hub, client, request("data", K1), settle=False)
        await send(hub, client, request("unsubscribe", K1), settle=False)
    await client.replies.idle()
    assert hub.subs.keys_of(client.id) == frozenset()
    assert [m["type"] for m in taken(client)] == ["data_init", "unsubscribed"] * 20


async def test_search_replies_come_in_order_and_echo_their_search() -> None:
    hub, _ = make_hub(FakeClock())
    symbols = hub.symbols
    assert isinstance(symbols, FakeSymbols)
    symbols.search_gates["A"] = asyncio.Event()
    client = connect(hub)
    await send(
        hub,
        client,
        {"type": "search_data", "search": "A"},
        {"type": "search_data", "search": "B"},
        settle=False,
    )
    await asyncio.sleep(0.01)
    assert taken(client) == []  # "B" is ready but waits for "A"
    symbols.search_gates["A"].set()
    await client.replies.idle()
    replies = taken(client)
    assert [(m["type"], m["search"]) for m in replies] == [
        ("search_data_done", "A"),
        ("search_data_done", "B"),
    ]
    assert [r["name"] for r in replies[1]["results"]] == ["BBB"]


async def test_a_slow_history_of_one_key_lets_other_keys_and_pings_through() -> None:
    """(The ping is a frame of its own: one in the data items' frame comes after their
    replies, protocols.md 1.12 (4), as the next test shows.)"""
    hub, provider = make_hub(FakeClock())
    provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    await send(hub, client, request("data", K1), request("data", K2), settle=False)
    await send(hub, client, {"type": "ping"}, settle=False)
    for _ in range(100):
        await asyncio.sleep(0)
    assert [(m["type"], about(m)) for m in taken(client)] == [
        ("pong", None),
        ("data_init", K2),
    ]
    provider.gates["AAA"].set()
    await client.replies.idle()
    assert [(m["type"], about(m)) for m in taken(client)] == [("data_init", K1)]


async def test_the_data_items_of_a_frame_are_answered_before_its_other_items() -> None:
    """protocols.md 1.12 (4): "process all data items of one frame before the other items
    of that frame". A search, a ping, a bad item, a history page of another key and an
    indicator search sent before a slow ``data`` in one frame answer after its
    ``data_init``; what the requests change still follows the order sent."""
    hub, provider = make_hub(FakeClock())
    gate = provider.gates["AAA"] = asyncio.Event()
    symbols = hub.symbols
    assert isinstance(symbols, FakeSymbols)
    client = connect(hub)
    await send(hub, client, request("data", K2))
    taken(client)
    frame = [
        {"type": "search_data", "search": "B"},
        {"type": "ping", "id": 7},
        {"type": "nonsense"},
        request("data_history", K2, end="2024-01-01 00:00:00", count=5),
        request("unsubscribe", K2),
        {"type": "search_indicators", "search": "rsi"},  # an extension: taken after
        request("data", K1),
    ]
    loop = asyncio.get_running_loop()
    intake = loop.create_task(hub.handle_frame(client, orjson.dumps(frame)))
    for _ in range(100):
        await asyncio.sleep(0)
    assert taken(client) == []  # everything waits for the data item's reply
    assert hub.subs.keys_of(client.id) == {K1}  # the effects did not wait
    gate.set()
    await intake
    await client.replies.idle()
    for _ in range(100):
        await asyncio.sleep(0)
    kinds = [m["type"] for m in taken(client)]
    assert kinds[0] == "data_init", kinds
    assert sorted(kinds[1:]) == sorted(
        [
            "search_data_done",
            "pong",
            "error",
            "data_history",
            "unsubscribed",
            "search_indicators_done",
        ]
    ), kinds


async def test_a_data_item_that_is_refused_is_still_answered_before_the_other_items() -> None:
    """A ``data`` item the parser refuses (a count of 0, a ``stream`` that is not a
    boolean, an interval nobody has, no ``name``) is still a data item of its frame: its
    ``error`` and empty ``data_init`` come before the frame's other replies (1.12 (4)).
    They came after the ``pong`` and ``search_indicators_done`` of the same frame (found
    by tests/test_model_protocol_frames.py)."""
    hub, _ = make_hub(FakeClock())
    client = connect(hub)
    no_name = {"type": "data", "source": SOURCE, "interval": "1m"}
    for bad in (
        request("data", K1, count=0),
        request("data", K1, stream="yes"),
        request("data", SeriesId(SOURCE, "AAA", "7m")),
        no_name,
    ):
        for other in ({"type": "ping", "id": 1}, {"type": "search_indicators", "search": ""}):
            await send(hub, client, other, bad)
            kinds = [m["type"] for m in taken(client)]
            assert kinds[:2] == ["error", "data_init"], (bad, kinds)
        await send(hub, client, {"type": "ping", "id": 1}, request("data", K2), bad)
        kinds = [m["type"] for m in taken(client)]
        assert kinds[-1] == "pong", (bad, kinds)


async def test_a_frame_of_data_items_alone_or_of_other_items_alone_is_not_held() -> None:
    hub, provider = make_hub(FakeClock())
    provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    await send(hub, client, request("data", K1), request("data", K2), settle=False)
    await send(hub, client, {"type": "search_data", "search": "B"}, {"type": "ping"}, settle=False)
    for _ in range(100):
        await asyncio.sleep(0)
    kinds = [m["type"] for m in taken(client)]
    assert sorted(kinds) == ["data_init", "pong", "search_data_done"], kinds
    provider.gates["AAA"].set()
    await client.replies.idle()
    assert [(m["type"], about(m)) for m in taken(client)] == [("data_init", K1)]


async def test_failed_data_inits_of_keys_a_client_does_not_hold_leave_nothing_behind() -> None:
    """The hub remembers a data_init's error code per (client, key) to send a provider's
    repeat of it once, and forgets it when the client lets the key go: a data_init of a key
    the client does not hold (``stream: false``) left it there for good, one entry per key
    asked, however many."""
    hub, provider = make_hub(FakeClock())

    async def failing(*args: object) -> list[tuple[int, float, float, float, float, float]]:
        raise ProviderUnavailable("down")

    provider.get_history = failing  # type: ignore[method-assign]
    client = connect(hub)
    await send(hub, client, request("data", K1, stream=False), request("data", K2, stream=False))
    assert [m.get("code") for m in taken(client) if m["type"] == "error"] == [
        "provider_unavailable"
    ] * 2
    assert hub.fanout._answered == {}


async def test_history_requests_in_flight_per_client_are_bounded_and_none_is_dropped() -> None:
    hub, provider = make_hub(FakeClock())
    gate = provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    page = request("data_history", K1, end="2024-01-01 00:00:00", count=10)
    frame = orjson.dumps([page] * 30)
    intake = asyncio.get_running_loop().create_task(hub.handle_frame(client, frame))
    for _ in range(100):
        await asyncio.sleep(0)
    assert not intake.done()  # reading waits: at most the bound is pending
    assert len(client.replies) == 8
    gate.set()
    await intake
    await client.replies.idle()
    assert [m["type"] for m in taken(client)] == ["data_history"] * 30


async def test_a_failing_reply_costs_one_answer_not_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, _ = make_hub(FakeClock())
    symbols = hub.symbols
    assert isinstance(symbols, FakeSymbols)

    async def broken(
        query: str, limit: int = 100, source: str | None = None
    ) -> list[dict[str, object]]:
        raise RuntimeError("index exploded")

    symbols.search = broken  # type: ignore[method-assign]
    client = connect(hub)
    with caplog.at_level(logging.ERROR):
        await send(hub, client, {"type": "search_data", "search": "A"}, {"type": "ping"})
    messages = taken(client)
    assert [(m["type"], m.get("code")) for m in messages] == [
        ("pong", None),
        ("error", "internal_error"),
        ("search_data_done", None),  # the empty answer a search waits for
    ]
    assert messages[1]["request"] == {"type": "search_data", "search": "A"}
    assert messages[2]["search"] == "A" and messages[2]["results"] == []
    assert hub.metrics.value("candlewire_internal_errors_total") == 1
    assert "index exploded" in caplog.text


async def test_a_failing_history_reply_is_an_error_that_echoes_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, _ = make_hub(FakeClock())

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("planner exploded")

    hub.planner.before = broken  # type: ignore[method-assign]
    client = connect(hub)
    page = request("data_history", K1, end="2024-01-01 00:00:00", count=10)
    with caplog.at_level(logging.ERROR):
        await send(hub, client, page)
    [error] = taken(client)
    assert error["type"] == "error" and error["code"] == "internal_error"
    assert error["request"] == page  # a client matching answers to requests can tell which
    assert "planner exploded" in caplog.text


def _sma(chart_id: str, key: SeriesId) -> dict[str, object]:
    column = {"source": key.source, "name": key.name, "interval": key.interval}
    return {
        "type": "indicator",
        "id": chart_id,
        "indicator": {"id": "talib.overlap.SMA", "type": "indicator"},
        "inputs": {"timeperiod": 3},
        "dataMap": {"close": column | {"value": f"{key}-close", "dataKey": "close"}},
        "count": 5,
        "stream": True,
    }


async def test_an_unsubscribe_sent_while_a_streamed_indicator_waits_for_its_bars_wins() -> None:
    """Effects follow the order sent: ``[indicator K]`` then ``[unsubscribe K]`` before the
    indicator was answered (its history still on its way) is answered ``unsubscribed`` and
    leaves nothing streaming. The indicator registered itself as live only when its answer
    ran, after the unsubscribe: ``not_subscribed``, and it streamed on (found by the
    protocol model test)."""
    hub, provider = make_hub(FakeClock())
    provider.history = [(60 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(1, 40)]
    provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    await send(hub, client, _sma("sma-AAA", K1), settle=False)
    await send(hub, client, request("unsubscribe", K1), settle=False)
    provider.gates["AAA"].set()
    await client.replies.idle()
    kinds = [m["type"] for m in taken(client)]
    assert kinds == ["indicator_init", "unsubscribed"], kinds
    assert hub.indicating.live.held_by(client.id) == []
    assert not hub.indicating.live.watches(K1)
    assert not hub.indicating._pending  # nothing kept for the request

    # a streamed indicator answered before the unsubscribe streams until it
    await send(hub, client, _sma("sma-AAA", K1))
    assert hub.indicating.live.held_by(client.id) == ["sma-AAA"]
    assert not hub.indicating._pending
    await send(hub, client, request("unsubscribe", K1))
    assert [m["type"] for m in taken(client)] == ["indicator_init", "unsubscribed"]
    assert hub.indicating.live.held_by(client.id) == []


async def test_an_unsubscribe_after_a_streamed_indicator_in_its_frame_takes_it_back() -> None:
    """``[indicator K, unsubscribe K]`` in one frame: in the order sent the indicator starts
    and is stopped. A frame's extensions are taken after its other items, so the unsubscribe
    found nothing (``not_subscribed``) and the indicator then streamed on. Now it is
    answered without streaming, and the unsubscribe is ``unsubscribed``. The other order
    (``[unsubscribe K, indicator K]``) still streams."""
    hub, provider = make_hub(FakeClock())
    provider.history = [(60 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(1, 40)]
    client = connect(hub)
    await send(hub, client, _sma("sma-AAA", K1), request("unsubscribe", K1))
    assert [m["type"] for m in taken(client)] == ["unsubscribed", "indicator_init"]
    assert hub.indicating.live.held_by(client.id) == []

    await send(hub, client, request("unsubscribe", K1), _sma("sma-AAA", K1))
    replies = taken(client)
    assert [(m["type"], m.get("code")) for m in replies] == [
        ("error", "not_subscribed"),
        ("indicator_init", None),
    ]
    assert hub.indicating.live.held_by(client.id) == ["sma-AAA"]


NEWEST = (60 * 39, 1.0, 2.0, 0.5, 1.7, 11.0)  # an update of the newest bar of the history


def _history_hub(**overrides: Any) -> tuple[Hub, Client]:
    hub, provider = make_hub(FakeClock(), **overrides)
    provider.history = [(60 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(1, 40)]
    return hub, connect(hub)


def _update(hub: Hub) -> None:
    """A provider batch with an update of ``AAA`` 1m."""
    hub.fanout.on_provider_events(SOURCE, [("AAA", "1m", NEWEST, False)])


def _update_after(hub: Hub, kind: bytes) -> None:
    """:func:`_update` right after the first reply of ``kind`` (``b"data_init"``, ...) is
    queued, before the key's next reply job runs: a provider batch that lands between
    two replies of the key."""
    send, send_frame = hub.send, hub.send_frame
    marker = b'"type":"' + kind + b'"'
    came: list[bool] = []

    def after(message: bytes) -> None:
        if marker in message and not came:
            came.append(True)
            asyncio.get_running_loop().call_soon(_update, hub)

    def spy_send(client: Client, message: bytes, slot: Any = None) -> None:
        send(client, message, slot)
        after(message)

    def spy_send_frame(client: Client, frame: bytes) -> None:
        send_frame(client, frame)
        after(bytes(frame))

    hub.send = spy_send  # type: ignore[method-assign]
    hub.send_frame = spy_send_frame  # type: ignore[method-assign]


async def _replies(hub: Hub, client: Client, *requests: dict[str, Any]) -> list[Any]:
    """The replies to one frame of ``requests`` and what a provider batch after them
    brings, (type, code) each."""
    await send(hub, client, *requests)
    for _ in range(10):
        await asyncio.sleep(0)
    replies = taken(client)
    _update(hub)
    replies += taken(client)
    return [(m["type"], m.get("code")) for m in replies]


async def test_a_data_update_waits_for_the_data_init_of_the_request_that_subscribed() -> None:
    """``[data K stream:false, data K]``: the second item subscribes. The first one's
    data_init, sent when the second had subscribed already, started the key's updates (the
    reply asked whether the client held the key as it was sent, not whether its own request
    subscribed): a bar arriving between the two data_inits came as a ``data_update`` before
    the data_init of the request that subscribed (README "Order of requests", protocols.md
    1.12 (5); found by tests/test_model_protocol_frames.py on a loaded machine). The same
    after a ``data`` refused with ``limit_reached``."""
    hub, client = _history_hub()
    _update_after(hub, b"data_init")
    replies = await _replies(hub, client, request("data", K1, stream=False), request("data", K1))
    assert replies == [("data_init", None), ("data_init", None), ("data_update", None)]

    hub, client = _history_hub(MAX_SUBSCRIPTIONS_PER_CLIENT=1)
    await send(hub, client, request("data", K2))
    taken(client)
    _update_after(hub, b"data_init")
    refused, unsubscribe = request("data", K1), request("unsubscribe", K2)
    replies = await _replies(hub, client, refused, unsubscribe, request("data", K1))
    assert replies == [
        ("error", "limit_reached"),
        ("data_init", None),
        ("data_init", None),
        ("unsubscribed", None),
        ("data_update", None),
    ]


async def test_no_data_update_between_the_unsubscribed_and_the_next_subscribing_data_init() -> None:
    """``[data K, unsubscribe K, data K]``: the key's updates stop when the unsubscribe is
    applied and start again with the third item's data_init. The first item's data_init,
    sent after the third had subscribed again, started them: a bar arriving after the
    ``unsubscribed`` came as a ``data_update`` before the data_init that subscribed
    again."""
    hub, client = _history_hub()
    _update_after(hub, b"unsubscribed")
    frame = (request("data", K1), request("unsubscribe", K1), request("data", K1))
    replies = await _replies(hub, client, *frame)
    assert replies == [
        ("data_init", None),
        ("unsubscribed", None),
        ("data_init", None),
        ("data_update", None),
    ]


@pytest.mark.parametrize("newer", [False, True], ids=["forming bar changed", "bar closed"])
async def test_a_data_init_waiting_for_a_slow_clients_room_carries_the_updates_of_meanwhile(
    newer: bool,
) -> None:
    """A data_init that waits for its client's room (the client reads slowly) is sent with
    the bars as they are when it goes out. It starts the client's updates only then: it went
    with the bars taken before the wait, and the live updates merged meanwhile reached the
    cache alone. The client kept the forming bar's older values, and a bar that closed
    meanwhile partial for good (the next update is of the newer bar)."""
    hub, provider = make_hub(FakeClock())
    t = int(time.time()) // 60 * 60
    provider.history = [(t - 60, 1.0, 1.0, 1.0, 1.0, 1.0), (t, 2.0, 2.0, 2.0, 2.0, 1.0)]
    client = connect(hub)
    room = asyncio.Event()

    async def until_below(limit: int) -> None:
        await room.wait()

    client.outbox.set_wake(None, buffered=lambda: 1 << 30, until_below=until_below)
    await send(hub, client, request("data", K1, count=5), settle=False)
    for _ in range(1000):
        if client.outbox.waiting_since is not None:
            break
        await asyncio.sleep(0)
    assert client.outbox.waiting_since is not None
    late = [("AAA", "1m", (t, 2.0, 3.0, 2.0, 3.0, 5.0), newer)]
    if newer:
        late.append(("AAA", "1m", (t + 60, 3.0, 3.0, 3.0, 3.0, 1.0), False))
    hub.fanout.on_provider_events(SOURCE, late)
    client.outbox.set_wake(None)
    room.set()
    await client.replies.idle()
    [init] = [m for m in taken(client) if m["type"] == "data_init"]
    closes = [point[f"{SOURCE}-AAA-1m-close"] for point in init["data"]]
    assert closes == ([1.0, 3.0, 3.0] if newer else [1.0, 3.0])


async def test_a_data_init_of_a_series_in_memory_is_sent_as_its_request_is_taken() -> None:
    """A page-load storm of a cached series: each ``data_init`` is answered while its frame
    is taken, with no reply job, and holds the bars a reply job sends."""
    hub, provider = make_hub(FakeClock())
    minute = int(time.time()) // 60 * 60
    provider.history = [(minute - 60 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(99, -1, -1)]
    first, second = connect(hub), connect(hub)
    await send(hub, first, request("data", K1, count=50))  # loads K1 and streams it
    by_job = taken(first)
    await send(hub, second, request("data", K1, count=50), settle=False)
    assert len(second.replies) == 0
    at_once = taken(second)
    assert [m["type"] for m in at_once] == ["data_init"]
    assert at_once[0]["data"] == by_job[0]["data"]
    assert len(at_once[0]["data"]) == 50


async def test_a_data_init_waits_its_turn_behind_a_reply_of_its_client_still_pending() -> None:
    """Not at once when the client has a reply pending (it may be before it in the key's
    lane): a ``data_history`` still fetching, then a ``data_init`` of the same key in memory,
    are answered in the order asked."""
    hub, provider = make_hub(FakeClock())
    client = connect(hub)
    await send(hub, client, request("data", K1, count=50))
    taken(client)
    provider.gates[K1.name] = gate = asyncio.Event()
    await send(
        hub,
        client,
        request("data_history", K1, end="2000-01-01 00:00:00", count=10),
        request("data", K1, count=50, stream=False),
        settle=False,
    )
    assert len(client.replies) >= 1
    gate.set()
    await client.replies.idle()
    assert [m["type"] for m in taken(client)] == ["data_history", "data_init"]


async def test_once_a_frame_held_the_loop_long_enough_its_data_inits_wait_their_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answering at once is bounded per frame (``AT_ONCE_SECONDS``): past it, a
    ``data_init`` of a series in memory goes through a reply job, with the same bars."""
    from backend.hub import requests as requests_module

    hub, provider = make_hub(FakeClock())
    minute = int(time.time()) // 60 * 60
    provider.history = [(minute - 60 * i, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(99, -1, -1)]
    first, second = connect(hub), connect(hub)
    await send(hub, first, request("data", K1, count=50))
    loaded = taken(first)
    monkeypatch.setattr(requests_module, "AT_ONCE_SECONDS", 0.0)
    await send(hub, second, request("data", K1, count=50), settle=False)
    assert len(second.replies) == 1
    await second.replies.idle()
    by_job = taken(second)
    assert [m["type"] for m in by_job] == ["data_init"]
    assert by_job[0]["data"] == loaded[0]["data"]
