"""The refill after a provider restart (``backend.hub.refill``), on a real hub over a fake
provider: the missed bars reach the key's clients in order, live updates that arrive during
the refill wait and follow, and a refill that leaves bars out (more than ``MAX_PUSHED``)
does not mark their span as known."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.errors import RateLimited
from backend.history import planner
from backend.hub import refill
from backend.hub.clients import Client
from backend.hub.hub import Hub
from backend.hub.refill import MAX_PUSHED
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from tests import harness
from tests.harness import eventually
from tests.hub_fakes import SOURCE, FakeProvider, connect, make_hub, request, send, taken

KEY = SeriesId(SOURCE, "AAA", "1m")
T0 = intervals.floor(int(time.time()), "1m") - 1000 * 60  # far enough in the past


def bars(first: int, n: int) -> list[Bar]:
    return [(first + 60 * i, 1.0, 2.0, 0.5, 1.0 + i, 1.0) for i in range(n)]


def updated(messages: list[dict[str, object]]) -> list[int]:
    return [
        intervals.parse_date(str(m["data"]["date"]))  # type: ignore[index]
        for m in messages
        if m["type"] == "data_update"
    ]


async def refills_done(hub: Hub) -> None:
    """Wait for the refills under way and those they started."""
    while hub.refills.tasks:
        await asyncio.gather(*hub.refills.tasks)


async def charted_then_restarted(missed: int) -> tuple[Hub, FakeProvider, Client]:
    """A hub with a client charting 5 bars up to ``T0``, its provider restarted with
    ``missed`` more bars in its history: (hub, provider, client), before ``Ready``."""
    hub, provider = make_hub()
    provider.history = bars(T0 - 4 * 60, 5)
    client = connect(hub)
    await send(hub, client, request("data", KEY, count=5))
    taken(client)
    provider.die()
    provider.spawn()
    provider.history = bars(T0, missed + 1)  # the bar the clients hold, then the missed ones
    return hub, provider, client


async def restarted_with(missed: int) -> tuple[list[int], object]:
    hub, _, client = await charted_then_restarted(missed)
    hub.on_provider_ready(SOURCE)
    await asyncio.gather(*hub.refills.tasks)
    return updated(taken(client)), hub.cache.peek(KEY)


async def test_the_missed_bars_reach_the_client_in_order_and_the_span_is_known() -> None:
    got, series = await restarted_with(10)
    assert got == [T0 + 60 * i for i in range(11)]
    assert series is not None and series.live
    assert series.coverage.span_at(T0 + 5 * 60) is not None


async def test_bars_left_out_of_a_long_refill_leave_their_span_unknown() -> None:
    """Marking it covered stored a hole: history would never have asked for those bars."""
    got, series = await restarted_with(MAX_PUSHED + 100)
    assert got == [T0 + 60 * i for i in range(101, MAX_PUSHED + 101)]
    assert series is not None and not series.live
    assert series.coverage.span_at(T0 + 50 * 60) is None


async def test_live_updates_during_the_refill_wait_and_follow_it() -> None:
    hub, provider, client = await charted_then_restarted(3)
    gate = provider.gates["AAA"] = asyncio.Event()
    hub.on_provider_ready(SOURCE)
    await eventually(lambda: provider.history_calls == 2, what="the refill's call at the gate")
    live = (T0 + 4 * 60, 1.0, 2.0, 0.5, 9.0, 1.0)
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, live, False)])
    assert updated(taken(client)) == []  # held while the refill runs
    gate.set()
    await refills_done(hub)  # the stream passed the answer's forming bar: refilled again
    assert updated(taken(client)) == [T0 + 60 * i for i in range(5)]


async def test_a_rate_limited_refill_does_not_skip_the_refills_queued_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refills queued behind a call that found the provider unavailable answer its error at
    once (a provider that answers no history would hold each for a timeout); a call refused
    for the pace (``RateLimited``, a 429) says nothing of the next ones: they are made, or
    their clients' charts kept a hole the history has bars for."""
    monkeypatch.setattr(refill, "AT_ONCE", 2)  # three keys: one waits for a turn
    hub, provider = make_hub()
    provider.history = bars(T0 - 4 * 60, 5)
    client = connect(hub)
    keys = [SeriesId(SOURCE, name, "1m") for name in ("AAA", "BBB", "CCC")]
    for key in keys:
        await send(hub, client, request("data", key, count=5))
    taken(client)
    provider.die()
    provider.spawn()
    calls: list[str] = []
    gate = asyncio.Event()

    async def fetch(key: SeriesId, since: int, count: int) -> list[Bar]:
        calls.append(key.name)
        await gate.wait()
        if key.name == "AAA":
            raise RateLimited("slow down", retry_after=0.1)
        return bars(since, 2)

    hub.refills.fetch = fetch
    hub.on_provider_ready(SOURCE)
    await eventually(lambda: calls == ["AAA", "BBB"], what="two calls, the third waiting")
    gate.set()
    await asyncio.gather(*hub.refills.tasks)
    assert sorted(calls) == ["AAA", "BBB", "CCC"]


async def test_live_updates_held_during_a_refill_that_fails_unexpectedly_still_go_out() -> None:
    """A refill whose fetch raised something other than a provider's error dropped the live
    updates held meanwhile (the key's clients missed them until the next one)."""
    hub, _, client = await charted_then_restarted(3)
    gate = asyncio.Event()

    async def fetch(key: SeriesId, since: int, count: int) -> list[Bar]:
        await gate.wait()
        raise RuntimeError("a bug")

    hub.refills.fetch = fetch
    hub.on_provider_ready(SOURCE)
    await eventually(lambda: KEY in hub.refills.held, what="the refill under way")
    live = (T0 + 4 * 60, 1.0, 2.0, 0.5, 9.0, 1.0)
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, live, False)])
    assert updated(taken(client)) == []  # held while the refill runs
    gate.set()
    await asyncio.gather(*hub.refills.tasks)
    messages = taken(client)
    assert updated(messages) == [T0 + 4 * 60]
    assert any(m["type"] == "error" and m.get("code") == "internal_error" for m in messages)


# A restarted provider's stream and its answer to the refill race each other: the stream
# may send a state of a bar read before the answer (a replay whose first tick read its clock
# before loading its file), or start only after the answer's forming bar closed. Each test
# makes one such interleaving happen on purpose.


def forming(t: int) -> Bar:
    """A state of the bar at ``t`` read while it formed: its close is not ``bars``'s."""
    return (t, 1.0, 1.5, 0.9, 1.2, 0.5)


def sent_last(messages: list[dict[str, object]]) -> dict[int, dict[str, object]]:
    """The last data_update of each bar time (what the client's chart shows)."""
    last: dict[int, dict[str, object]] = {}
    for message in messages:
        if message["type"] == "data_update":
            data = message["data"]
            assert isinstance(data, dict)
            last[intervals.parse_date(str(data["date"]))] = data
    return last


async def answered(hub: Hub, client: Client, end: int, count: int) -> list[dict[str, object]]:
    await send(
        hub, client, request("data_history", KEY, end=intervals.format_date(end), count=count)
    )
    [history] = [m for m in taken(client) if m["type"] == "data_history"]
    data = history["data"]
    assert isinstance(data, list)
    return data


async def test_a_late_state_of_a_bar_the_refill_closed_changes_neither_the_chart_nor_history() -> (
    None
):
    """The stream's state of a bar read before the refill's answer came after it: it went
    into the cache as a correction of an older bar (not sent), and history served the bar
    half made while the client showed it closed (test_e2e_refill under load)."""
    hub, provider, client = await charted_then_restarted(3)
    hub.on_provider_ready(SOURCE)
    await asyncio.gather(*hub.refills.tasks)
    refilled = sent_last(taken(client))
    assert sorted(refilled) == [T0 + 60 * i for i in range(4)]
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, forming(T0 + 60), False)])
    assert taken(client) == []
    provider.history_calls = 0
    history = await answered(hub, client, T0 + 2 * 60, 3)
    assert provider.history_calls == 0  # from the cache the refill filled
    assert [refilled[intervals.parse_date(str(p["date"]))] for p in history] == history
    caught_up = (T0 + 3 * 60, 1.0, 2.0, 0.5, 4.5, 2.0)  # the stream reaches the answer's bar
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, caught_up, False)])
    assert KEY not in hub.fanout.catching_up
    assert updated(taken(client)) == [T0 + 3 * 60]


async def test_a_held_state_of_a_bar_the_refill_answer_closed_does_not_replace_it() -> None:
    """A state of a bar read before the refill's answer (which has the bar closed) came
    while the refill ran: it went out after the answer's bars in place of the closed one,
    and the bar's final values only reached the cache (a correction of an older bar)."""
    hub, provider, client = await charted_then_restarted(3)
    gate = provider.gates["AAA"] = asyncio.Event()
    calls = provider.history_calls
    hub.on_provider_ready(SOURCE)
    await eventually(lambda: provider.history_calls == calls + 1, what="the refill's call")
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, forming(T0 + 60), False)])
    gate.set()
    await asyncio.gather(*hub.refills.tasks)
    got = sent_last(taken(client))
    assert sorted(got) == [T0 + 60 * i for i in range(4)]
    history = await answered(hub, client, T0 + 2 * 60, 3)
    assert [got[intervals.parse_date(str(p["date"]))] for p in history] == history
    assert history[1]["fake-AAA-1m-close"] == 2.0  # bars(T0, 4)[1], not the held state


async def test_a_stream_that_starts_after_the_refilled_forming_bar_closed_refills_it() -> None:
    """The refill's answer ends in the bar forming then; the new stream's first update was
    of the next bar: the refilled bar counted as one the stream had shown, so its clients
    and the cache kept it half made (and any bar between was a hole)."""
    hub, provider, client = await charted_then_restarted(3)
    hub.on_provider_ready(SOURCE)
    await asyncio.gather(*hub.refills.tasks)
    taken(client)
    closed = (T0 + 3 * 60, 1.0, 2.0, 0.5, 7.0, 3.0)  # the forming bar's final values
    provider.history = [closed, *bars(T0 + 4 * 60, 2)]
    first = (T0 + 5 * 60, 1.0, 2.0, 0.5, 2.0, 1.0)  # two bars on: one closed between
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, first, False)])
    await asyncio.gather(*hub.refills.tasks)
    got = sent_last(taken(client))
    assert sorted(got) == [T0 + 3 * 60, T0 + 4 * 60, T0 + 5 * 60]
    assert got[T0 + 3 * 60]["fake-AAA-1m-close"] == 7.0


async def test_a_provider_whose_history_lags_its_stream_is_refilled_once_more_not_forever() -> None:
    """The stream passed the answer's newest bar before the refill was done: refilled once
    more from that bar (it may have closed unseen), and no more when that answer lags the
    stream again (a provider whose history has no forming bar would be asked at every bar)."""
    hub, provider, client = await charted_then_restarted(3)
    gate = provider.gates["AAA"] = asyncio.Event()
    calls = provider.history_calls
    hub.on_provider_ready(SOURCE)
    await eventually(lambda: provider.history_calls == calls + 1, what="the refill's call")
    for n in (4, 5):
        live = (T0 + n * 60, 1.0, 2.0, 0.5, 9.0, 1.0)
        hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, live, False)])
    gate.set()
    await asyncio.wait_for(refills_done(hub), harness.seconds(10))
    assert provider.history_calls == calls + 2
    assert updated(taken(client)) == [T0 + 60 * i for i in range(6)]
    live = (T0 + 6 * 60, 1.0, 2.0, 0.5, 9.0, 1.0)
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, live, False)])
    assert not hub.refills.tasks
    assert updated(taken(client)) == [T0 + 6 * 60]


async def test_a_bar_closed_by_another_clients_data_init_during_the_refill_reaches_the_chart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client charts the bar forming when the provider died. After the restart, another
    client's data_init fetched the tail before the refill answered: the bar closed and the
    next one went into the cache unsent, the refill's final values of the bar (no longer
    the newest) were not sent either, and the first chart kept the bar half made for good
    (test_binance_client_model under load: one bar of a chart differed from the exchange's
    kline after the provider was killed just before it closed)."""
    monkeypatch.setattr(planner, "TAIL_FRESH_SECONDS", 0.0)  # its tail is not fresh any more
    hub, provider = make_hub()
    provider.history = bars(T0 - 4 * 60, 5)
    client = connect(hub)
    await send(hub, client, request("data", KEY, count=5))
    hub.on_provider_events(SOURCE, [(KEY.name, KEY.interval, forming(T0), False)])
    assert updated(taken(client)) == [T0]
    provider.die()
    provider.spawn()
    provider.history = bars(T0, 2)  # T0 closed meanwhile (close 1.0), T0 + 60 forming
    gate = asyncio.Event()
    answer = hub.refills.fetch

    async def fetch(key: SeriesId, since: int, count: int) -> list[Bar]:
        await gate.wait()
        return await answer(key, since, count)

    hub.refills.fetch = fetch
    hub.on_provider_ready(SOURCE)
    other = connect(hub)
    await send(hub, other, request("data", KEY, count=5))
    [init] = [m["data"] for m in taken(other) if m["type"] == "data_init"]
    assert isinstance(init, list)
    assert [intervals.parse_date(str(b["date"])) for b in init[-2:]] == [T0, T0 + 60]
    gate.set()
    await refills_done(hub)
    got = sent_last(taken(client))
    assert sorted(got) == [T0, T0 + 60]
    assert got[T0]["fake-AAA-1m-close"] == 1.0  # bars(T0, 2)[0], not forming(T0)'s 1.2
    assert updated(taken(other)) == [T0 + 60]  # its chart ends later: nothing to go back to
