"""The hub's upstream streams, driven through the real Hub with a fake provider and clock:
the linger, resubscribes, fast flips, provider restarts, and clients that leave early."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from backend.model.bars import Bar, SeriesId
from backend.runtime.messages import Notice, StartStreaming, StopStreaming, WireBar
from tests.hub_fakes import SOURCE, FakeClock, connect, make_hub, request, send, taken

K1 = SeriesId(SOURCE, "AAA", "1m")
K2 = SeriesId(SOURCE, "BBB", "1m")
BAR: Bar = (1_700_000_040, 1.0, 2.0, 0.5, 1.5, 10.0)


def bar_of(key: SeriesId) -> WireBar:
    return (key.name, key.interval, BAR, False)


def stops(commands: Sequence[object]) -> list[object]:
    return [c for c in commands if isinstance(c, StopStreaming)]


async def test_a_resubscribe_within_the_linger_keeps_the_stream_without_a_stop() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    client = connect(hub)
    await send(hub, client, request("data", K1))
    await send(hub, client, request("unsubscribe", K1))
    clock.advance(0.3)
    await send(hub, client, request("data", K1))
    clock.advance(10)
    assert provider.believes(K1) == {client.id}
    assert stops(provider.commands) == []
    assert provider.inner.hooks == [("first", "AAA", "1m")]
    taken(client)
    hub.on_provider_events(SOURCE, [bar_of(K1)])
    assert [m["type"] for m in taken(client)] == ["data_update"]


async def test_the_last_client_leaving_stops_the_stream_after_the_linger() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock, STREAM_LINGER_SECONDS=2.0)
    client = connect(hub)
    await send(hub, client, request("data", K1))
    await send(hub, client, request("unsubscribe", K1))
    clock.advance(1.9)
    assert provider.streaming() == {K1}
    clock.advance(0.2)
    assert provider.streaming() == set()
    assert provider.inner.hooks == [("first", "AAA", "1m"), ("last", "AAA", "1m")]
    assert clock.pending() == 0


async def test_a_client_joining_a_lingering_key_takes_it_over_without_a_gap() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    first, second = connect(hub), connect(hub)
    await send(hub, first, request("data", K1))
    await send(hub, first, request("unsubscribe", K1))
    await send(hub, second, request("data", K1))
    clock.advance(10)
    assert provider.believes(K1) == {second.id}
    assert provider.commands[-2:] == [
        StartStreaming(second.id, "AAA", "1m"),
        StopStreaming(first.id, "AAA", "1m"),
    ]
    assert provider.inner.hooks == [("first", "AAA", "1m")]


async def test_fast_flips_between_two_keys_leave_the_last_one_streaming() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    client = connect(hub)
    await send(hub, client, request("data", K1))
    for _ in range(3):
        await send(hub, client, request("unsubscribe", K1), request("data", K2))
        clock.advance(0.3)
        await send(hub, client, request("unsubscribe", K2), request("data", K1))
    clock.advance(10)
    assert hub.subs.keys_of(client.id) == {K1}
    assert provider.streaming() == {K1}
    assert provider.believes(K1) == {client.id}
    taken(client)
    hub.on_provider_events(SOURCE, [bar_of(K1), bar_of(K2)])
    assert [(m["type"], m["name"]) for m in taken(client)] == [("data_update", "AAA")]


async def test_two_hundred_subscribe_cycles_then_data_still_streams() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    client = connect(hub)
    for _ in range(200):
        await send(hub, client, request("data", K1, count=2), request("unsubscribe", K1))
    await send(hub, client, request("data", K1, count=2))
    clock.advance(10)
    assert provider.believes(K1) == {client.id}
    assert hub.health()["subscriptions"] == 1
    taken(client)
    hub.on_provider_events(SOURCE, [bar_of(K1)])
    assert [m["type"] for m in taken(client)] == ["data_update"]


async def test_a_provider_restart_replays_every_open_subscription() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    a, b = connect(hub), connect(hub)
    await send(hub, a, request("data", K1), request("data", K2))
    await send(hub, b, request("data", K1))
    provider.die()
    await send(hub, b, request("unsubscribe", K1), request("data", K2))  # while it is down
    provider.spawn()
    hub.on_provider_ready(SOURCE)
    assert provider.believes(K1) == {a.id}
    assert provider.believes(K2) == {a.id, b.id}
    clock.advance(10)
    assert provider.streaming() == {K1, K2}


async def test_a_key_lingering_when_the_provider_restarts_is_not_restarted() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    client = connect(hub)
    await send(hub, client, request("data", K1))
    await send(hub, client, request("unsubscribe", K1))
    provider.die()
    provider.spawn()
    hub.on_provider_ready(SOURCE)
    assert provider.streaming() == set()
    assert clock.pending() == 0
    await send(hub, client, request("data", K1))
    assert provider.believes(K1) == {client.id}


async def test_a_client_leaving_while_its_data_init_is_fetched_releases_the_key() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    await send(hub, client, request("data", K1), settle=False)
    for _ in range(100):
        if provider.history_calls:
            break
        await asyncio.sleep(0)
    assert provider.believes(K1) == {client.id}
    hub.remove_client(client)
    await client.replies.idle()
    provider.gates["AAA"].set()
    await asyncio.sleep(0)
    assert taken(client) == []
    assert hub.deliver == {}
    assert hub.health()["subscriptions"] == 0
    clock.advance(10)
    assert provider.streaming() == set()


async def test_a_live_grid_watching_a_then_b_then_a_keeps_a_streaming() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    grid = connect(hub)
    seen: list[SeriesId] = []

    class Listener:
        def on_bar(self, key: SeriesId, bar: object) -> None:
            seen.append(key)

    listener = Listener()
    hub.watch(grid, K1, listener)
    hub.unwatch(grid, K1)
    hub.watch(grid, K2, listener)
    clock.advance(0.2)
    hub.unwatch(grid, K2)
    hub.watch(grid, K1, listener)
    clock.advance(10)
    assert provider.streaming() == {K1}
    hub.on_provider_events(SOURCE, [bar_of(K1), bar_of(K2)])
    assert seen == [K1]


async def test_commands_queued_for_a_starting_provider_do_not_outlive_the_replay() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    client = connect(hub)
    provider.die()
    provider.spawn()  # not ready yet: what the hub sends now still reaches the new process
    await send(hub, client, request("data", K1))
    await send(hub, client, request("unsubscribe", K1))
    hub.on_provider_ready(SOURCE)
    clock.advance(10)
    assert provider.streaming() == set()


async def test_many_clients_on_one_key_each_cost_one_comparison_not_a_copy_of_all() -> None:
    clock = FakeClock()
    hub, provider = make_hub(clock)
    clients = [connect(hub) for _ in range(300)]
    copies = 0
    subscribers = hub.subs.subscribers

    def counted(key: SeriesId) -> frozenset[int]:
        nonlocal copies
        copies += 1
        return subscribers(key)

    hub.subs.subscribers = counted  # type: ignore[method-assign]
    for client in clients:
        await send(hub, client, request("data", K1))
    for client in clients[::2]:
        await send(hub, client, request("unsubscribe", K1))
    for client in clients[1::4]:
        hub.remove_client(client)
    assert copies <= 2  # the first subscriber; none per later change
    held = {c.id for c in clients[1::2]} - {c.id for c in clients[1::4]}
    assert provider.believes(K1) == held == set(hub.subs.subscribers(K1))
    assert len([c for c in provider.commands if isinstance(c, StartStreaming)]) == 300


async def test_a_polled_key_streams_for_a_while_after_each_poll_and_then_stops() -> None:
    """``Hub.watches`` (the UDF adapter's polls until now): each touch keeps the key
    streamed ``WATCH_SECONDS`` more; then the usual linger; a client's own subscription
    is not disturbed; past the limit a poll is not watched."""
    clock = FakeClock()
    hub, provider = make_hub(clock, STREAM_LINGER_SECONDS=2.0)
    watches = hub.watches
    assert watches.touch(K1)
    assert provider.streaming() == {K1}
    clock.advance(watches.seconds - 1)
    assert watches.touch(K1)  # polled again: another full period
    clock.advance(watches.seconds - 1)
    assert provider.streaming() == {K1}
    client = connect(hub)
    await send(hub, client, request("data", K1))
    clock.advance(2 + 2.1)  # the watch ends; the client still holds the key
    assert provider.streaming() == {K1}
    await send(hub, client, request("unsubscribe", K1))
    clock.advance(2.1)  # the linger
    assert provider.streaming() == set()
    assert len(watches) == 0
    watches.limit = 1
    assert watches.touch(K1)
    assert not watches.touch(K2)
    assert provider.streaming() == {K1}
    watches.stop()
    assert len(watches) == 0


async def test_a_provider_error_sent_before_the_data_init_reaches_the_client() -> None:
    """A provider's ``notify`` (a start_streaming that raised, say) comes while the
    client's data_init is still on its way: it went only to the clients already receiving
    updates, so that client never heard of it."""
    hub, provider = make_hub(FakeClock())
    provider.gates["AAA"] = asyncio.Event()
    client = connect(hub)
    await send(hub, client, request("data", K1), settle=False)
    for _ in range(100):
        if provider.history_calls:
            break
        await asyncio.sleep(0)
    assert provider.believes(K1) == {client.id}
    notice = Notice("AAA", K1.interval, "provider_error", "fake: start_streaming failed")
    hub.fanout.on_provider_events(SOURCE, [notice])
    provider.gates["AAA"].set()
    await client.replies.idle()
    errors = [m for m in taken(client) if m["type"] == "error"]
    assert [(m["code"], m["message"]) for m in errors] == [
        ("provider_error", "fake: start_streaming failed")
    ]
    assert errors[0]["request"] == {"source": SOURCE, "name": "AAA", "interval": K1.interval}
