"""The history planner against a fake provider with gaps: exact counts, no refetching."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from backend.errors import ProviderUnavailable
from backend.history.cache import BarCache
from backend.history.planner import Fetch, HistoryPlanner
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.runtime.clocks import Clocks
from backend.runtime.messages import Clock

KEY = SeriesId("fake", "ACME", "1h")
NOW = intervals.parse_date("2026-03-06 15:30:00")  # a Friday afternoon
LISTED = intervals.parse_date("2026-01-05 00:00:00")


def session_bar(t: int) -> Bar | None:
    """Hourly bars from 09:00 to 16:00 UTC on weekdays only, after listing."""
    weekday = (t // 86400 + 3) % 7  # 0 = Monday
    hour = t % 86400 // 3600
    if t < LISTED or weekday >= 5 or not 9 <= hour <= 16:
        return None
    return (t, 1.0, 2.0, 0.5, 1.5, 10.0)


class FakeProvider:
    def __init__(self, fail: bool = False, future: bool = False) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.fail = fail
        self.future = future  # every reply ends with a bar a year ahead (bad upstream data)
        self.now = NOW  # the upstream's present: no bar opens after it

    async def fetch(self, key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        self.calls.append((start, end))
        await asyncio.sleep(0.01)
        if self.fail:
            raise ProviderUnavailable("upstream down")
        stop = self.now if end is None else min(end, self.now)
        first = intervals.floor(start, "1h")
        if first < start:
            first += 3600
        bars = [session_bar(t) for t in range(first, stop + 1, 3600)]
        if self.future:
            bars.append((NOW + 365 * 86400, 9.0, 9.0, 9.0, 9.0, 9.0))
        return [bar for bar in bars if bar is not None]


def planner(provider: FakeProvider) -> HistoryPlanner:
    clocks = Clocks()
    clocks.set("fake", Clock(None, origin_wall=0.0, origin_data=NOW, speed=0.0))
    return HistoryPlanner(BarCache(), provider.fetch, clocks)


async def test_latest_returns_exactly_count_bars_across_nights_and_weekends() -> None:
    provider = FakeProvider()
    answer = await planner(provider).latest(KEY, 100, streaming=False)
    times = [bar[0] for bar in answer.bars]
    assert len(times) == 100
    assert times == sorted(times)
    assert times[-1] == intervals.parse_date("2026-03-06 15:00:00")
    assert all(session_bar(t) is not None for t in times)


async def test_bars_past_the_providers_clock_are_dropped_from_history() -> None:
    """A reply row a year ahead used to end the chart, and no live update followed it."""
    answer = await planner(FakeProvider(future=True)).latest(KEY, 20, streaming=False)
    times = [bar[0] for bar in answer.bars]
    assert len(times) == 20
    assert times[-1] == intervals.parse_date("2026-03-06 15:00:00")
    assert answer.series.newest == times[-1]


async def test_a_repeated_history_request_is_answered_from_the_cache() -> None:
    provider = FakeProvider()
    plan = planner(provider)
    end = intervals.parse_date("2026-03-02 12:00:00")
    first = await plan.before(KEY, end, 50)
    calls = len(provider.calls)
    second = await plan.before(KEY, end, 50)
    assert second.bars == first.bars
    assert len(provider.calls) == calls


async def test_empty_spans_are_not_fetched_twice() -> None:
    provider = FakeProvider()
    plan = planner(provider)
    end = intervals.parse_date("2026-01-10 00:00:00")  # the first week after listing
    answer = await plan.before(KEY, end, 500)
    assert len(answer.bars) == 40  # five days of eight bars: all there is
    calls = len(provider.calls)
    again = await plan.before(KEY, end, 500)
    assert again.bars == answer.bars
    assert len(provider.calls) == calls


async def test_history_before_the_first_bar_is_empty() -> None:
    provider = FakeProvider()
    answer = await planner(provider).before(KEY, LISTED - 86400, 10)
    assert answer.bars == []
    assert answer.error is None


async def test_fifty_concurrent_identical_requests_make_one_provider_call() -> None:
    provider = FakeProvider()
    plan = planner(provider)
    answers = await asyncio.gather(*(plan.latest(KEY, 6, streaming=True) for _ in range(50)))
    assert len(provider.calls) == 1
    assert all(answer.bars == answers[0].bars for answer in answers)


async def test_concurrent_requests_across_gaps_share_the_calls_of_one_request() -> None:
    alone = FakeProvider()
    await planner(alone).latest(KEY, 60, streaming=True)
    shared = FakeProvider()
    plan = planner(shared)
    await asyncio.gather(*(plan.latest(KEY, 60, streaming=True) for _ in range(50)))
    assert len(shared.calls) == len(alone.calls)


async def test_a_failing_provider_gives_an_error_and_what_the_cache_has() -> None:
    provider = FakeProvider(fail=True)
    answer = await planner(provider).latest(KEY, 20, streaming=False)
    assert answer.bars == []
    assert isinstance(answer.error, ProviderUnavailable)


@pytest.mark.parametrize("count", [1, 8, 9, 300])
async def test_counts_are_exact_for_any_size(count: int) -> None:
    answer = await planner(FakeProvider()).latest(KEY, count, streaming=False)
    assert len(answer.bars) == count


async def test_a_quiet_stretch_after_the_newest_bar_held_does_not_hide_the_bars_before_it() -> None:
    """A series held up to Friday 10:00 (the bar then forming) and asked for again on
    Saturday: the tail of the last 3 hours is empty (the weekend), and the planner took that
    fresh tail as saying nothing opened after 10:00 either. It answered 08:00-10:00, the
    10:00 bar as it was while forming, and the bars of Friday afternoon were never fetched
    (a gap a stream missed, or a server stopped in a session, looked the same)."""
    provider = FakeProvider()
    clocks = Clocks()
    plan = HistoryPlanner(BarCache(), provider.fetch, clocks)
    friday = intervals.parse_date("2026-03-06 10:30:00")
    provider.now = friday
    clocks.set("fake", Clock(None, origin_wall=0.0, origin_data=friday, speed=0.0))
    first = await plan.latest(KEY, 5, streaming=False)
    assert first.bars[-1][0] == intervals.parse_date("2026-03-06 10:00:00")
    assert first.series is not None
    first.series.tail_fetched_at = 0.0  # later: that tail is not fresh any more
    saturday = intervals.parse_date("2026-03-07 12:00:00")
    provider.now = saturday
    clocks.set("fake", Clock(None, origin_wall=0.0, origin_data=saturday, speed=0.0))
    answer = await plan.latest(KEY, 3, streaming=False)
    assert [intervals.format_date(bar[0]) for bar in answer.bars] == [
        "2026-03-06 14:00:00",
        "2026-03-06 15:00:00",
        "2026-03-06 16:00:00",
    ]


async def test_a_small_count_does_not_end_the_history_at_a_pause_of_a_few_days() -> None:
    """A ``data_history`` of 1 minute bar (as the UDF ``nextTime`` probe asks) ending 11 days
    into a pause of the data: the empty windows walked back were sized by the count (1 to
    4,096 minutes: 3.8 days in all), and after 7 of them the series was marked as having
    nothing older for good: this and every later request before the pause, of any count,
    got no bars."""
    key = SeriesId("fake", "ACME", "1m")
    session = range(LISTED + 9 * 3600, LISTED + 16 * 3600, 60)  # one day of minutes, then none

    async def minutes(key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        stop = NOW if end is None else min(end, NOW)
        return [(t, 1.0, 2.0, 0.5, 1.5, 1.0) for t in session if start <= t <= stop]

    plan = planner(FakeProvider())
    plan.fetch = minutes
    in_the_pause = LISTED + 11 * 86400
    assert [bar[0] for bar in (await plan.before(key, in_the_pause, 1)).bars] == [session[-1]]
    answer = await plan.before(key, in_the_pause, 300)
    assert [bar[0] for bar in answer.bars] == list(session[-300:])


def month_fetch(now: list[int]) -> Fetch:
    """Month bars up to ``now[0]``, the forming one with the hours traded so far as volume."""

    async def months(key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        stop = now[0] if end is None else min(end, now[0])
        bars: list[Bar] = []
        t = intervals.floor(start, "1M")
        t = t if t >= start else intervals.next_open(t, "1M")
        while t <= stop:
            hours = (min(intervals.next_open(t, "1M"), now[0]) - t) / 3600
            bars.append((t, 1.0, 2.0, 0.5, 1.5, hours))
            t = intervals.next_open(t, "1M")
        return bars

    return months


def month_planner(
    now: list[int], calls: list[int] | None = None
) -> tuple[HistoryPlanner, Callable[[str], None]]:
    """A planner of month bars, and a function that moves its clock (and the upstream's);
    the start of every provider call goes to ``calls``."""
    clocks = Clocks()
    months = month_fetch(now)

    async def fetch(key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        if calls is not None:
            calls.append(start)
        return await months(key, start, end, count)

    def at(text: str) -> None:
        now[0] = intervals.parse_date(text)
        clocks.set("fake", Clock(None, origin_wall=0.0, origin_data=now[0], speed=0.0))

    return HistoryPlanner(BarCache(), fetch, clocks), at


async def test_a_month_bar_is_not_taken_as_forming_in_the_first_days_of_the_next_month() -> None:
    """A month counted as 43,800 minutes (30.4 days): a streamed data_init on 2 March, whose
    newest bar held was February's (fetched forming on 27 February), took February's bar as
    the forming one until 3 March 10:00 and answered it with its values of the 27th and
    without March's bar."""
    key = SeriesId("fake", "ACME", "1M")
    plan, at = month_planner([0])
    at("2026-02-27 12:00:00")
    first = await plan.latest(key, 3, streaming=False)
    assert first.series is not None
    first.series.tail_fetched_at = 0.0  # later: that tail is not fresh any more
    at("2026-03-02 12:00:00")
    answer = await plan.latest(key, 3, streaming=True)
    assert [(intervals.format_date(bar[0]), bar[5]) for bar in answer.bars] == [
        ("2026-01-01 00:00:00", 31 * 24.0),
        ("2026-02-01 00:00:00", 28 * 24.0),
        ("2026-03-01 00:00:00", 36.0),
    ]


async def test_a_month_bar_forming_late_in_a_long_month_is_not_stored_as_closed() -> None:
    """On 31 March 20:00 a page ending 1 March 05:00 was not taken as reaching the present
    (``now - 30.4 days`` is 1 March 10:00): March's bar, forming, was counted as known, and
    in April the tail was fetched from after it: March kept its values of the 31st."""
    key = SeriesId("fake", "ACME", "1M")
    plan, at = month_planner([0])
    at("2026-03-31 20:00:00")
    page = await plan.before(key, intervals.parse_date("2026-03-01 05:00:00"), 1)
    assert [bar[5] for bar in page.bars] == [30 * 24 + 20.0]
    assert page.series is not None
    page.series.tail_fetched_at = 0.0
    at("2026-04-02 00:00:00")
    answer = await plan.latest(key, 2, streaming=False)
    assert [(intervals.format_date(bar[0]), bar[5]) for bar in answer.bars] == [
        ("2026-03-01 00:00:00", 31 * 24.0),
        ("2026-04-01 00:00:00", 24.0),
    ]


async def test_a_page_ending_in_the_last_month_before_the_forming_one_asks_the_provider_twice() -> (
    None
):
    """On 31 March 20:00 a page ending 28 February (in the last 32 days: it may hold the
    forming bar) ends in a bar not counted as known: the walk went on from the page's end,
    still not known, and asked the provider for that month 16 times over."""
    calls: list[int] = []
    plan, at = month_planner([0], calls)
    at("2026-03-31 20:00:00")
    key = SeriesId("fake", "ACME", "1M")
    page = await plan.before(key, intervals.parse_date("2026-02-28 12:00:00"), 1)
    assert [(intervals.format_date(bar[0]), bar[5]) for bar in page.bars] == [
        ("2026-02-01 00:00:00", 28 * 24.0)
    ]
    assert len(calls) <= 2  # the tail, and the window of the page


async def test_an_answer_held_in_memory_is_given_at_once_and_equals_the_awaited_one() -> None:
    """``answer_now``: None while the series needs its provider (not loaded, its tail no
    longer fresh, more bars than memory holds), else ``latest()``'s answer, no call made."""
    provider = FakeProvider()
    plan = planner(provider)
    assert plan.answer_now(KEY, 100, streaming=False) is None  # not loaded
    awaited = await plan.latest(KEY, 100, streaming=False)
    calls = len(provider.calls)
    now = plan.answer_now(KEY, 100, streaming=False)
    assert now is not None
    assert (now.bars, now.version, now.latest) == (awaited.bars, awaited.version, True)
    fewer = plan.answer_now(KEY, 60, streaming=False)
    assert fewer is not None and fewer.bars == awaited.bars[-60:]
    assert plan.answer_now(KEY, 5000, streaming=False) is None  # older bars to fetch
    series = plan.cache.peek(KEY)
    assert series is not None
    series.tail_fetched_at -= 60  # the tail is stale: to be fetched again first
    assert plan.answer_now(KEY, 100, streaming=False) is None
    assert len(provider.calls) == calls
