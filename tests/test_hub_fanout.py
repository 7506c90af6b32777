"""The hub's fan-out stores live bars: a bar its provider marks ``final`` is written at once."""

from __future__ import annotations

import time
from typing import Any

from backend.history.cache import BarCache
from backend.hub.fanout import Fanout
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.model.bars import Bar, SeriesId
from backend.runtime.clocks import Clocks
from backend.runtime.messages import Clock

KEY = SeriesId("fake", "AAA", "1m")
T = 1_700_000_040


class RecordingStore:
    def __init__(self) -> None:
        self.bars: list[Bar] = []

    def put_bars(self, key: SeriesId, bars: list[Bar], forming_t: int | None = None) -> None:
        self.bars.extend(bars)

    def put_coverage(self, *args: Any) -> None:
        pass


def fanout_with_a_loaded_series() -> tuple[Fanout, RecordingStore]:
    cache = BarCache()
    subs = Subscriptions()
    subs.add(1, KEY)
    store = RecordingStore()
    fanout = Fanout(
        cache,
        subs,
        Listeners(),
        Clocks(),
        Metrics(),
        store,
        lambda client, why: None,  # type: ignore[arg-type]
    )
    series = cache.get(KEY)
    series.loaded = True
    series.persist = True
    return fanout, store


def bar(t: int, close: float) -> Bar:
    return (t, close, close, close, close, 1.0)


def test_a_forming_bar_is_not_stored_until_the_next_bar_closes_it() -> None:
    fanout, store = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 2.0), False)])
    assert store.bars == []
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T + 60, 3.0), False)])
    assert store.bars == [bar(T, 2.0)]


def test_a_bar_the_provider_marks_final_is_stored_at_once() -> None:
    fanout, store = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 2.0), True)])
    assert store.bars == [bar(T, 2.0)]


def test_a_correction_of_an_older_bar_is_stored() -> None:
    fanout, store = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T + 60, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 5.0), False)])
    assert store.bars == [bar(T, 5.0)]


def test_a_stray_bar_far_ahead_is_dropped_and_the_real_updates_still_count() -> None:
    """One kline dated ten years ahead used to become the newest bar: every real update
    after it looked like a correction of an older bar and was never sent."""
    fanout, store = fanout_with_a_loaded_series()
    now = int(time.time()) // 60 * 60
    fanout.on_provider_events("fake", [("AAA", "1m", bar(now - 60, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(now + 10 * 365 * 86400, 9.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(now, 2.0), False)])
    series = fanout.cache.get(KEY)
    assert series.newest == now and series.bars[-1] == bar(now, 2.0)
    assert store.bars == [bar(now - 60, 1.0)]  # closed by the real next bar, not the stray
    dropped = fanout.metrics.counters[
        ("candlewire_future_bars_dropped_total", (("source", "fake"),))
    ]
    assert dropped == 1


def dropped_as_bad(fanout: Fanout) -> float:
    return fanout.metrics.counters.get(
        ("candlewire_bad_bars_dropped_total", (("source", "fake"),)), 0
    )


def test_a_live_bar_decades_behind_the_newest_is_dropped_not_merged() -> None:
    """A hostile provider's live bar dated 1969 used to be merged as a correction of an
    older bar: it was stored and showed in every data_init of the key."""
    fanout, store = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(-86400, 7.0), False)])
    series = fanout.cache.get(KEY)
    assert series.times == [T] and store.bars == []
    assert dropped_as_bad(fanout) == 1
    # A correction of the bar that just closed, or of one an hour back, is still taken.
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T + 60, 2.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.5), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T - 3600, 0.5), False)])
    assert series.times == [T - 3600, T, T + 60]
    assert dropped_as_bad(fanout) == 1


def test_a_provider_catching_up_after_a_long_outage_is_not_judged_far_behind() -> None:
    """After an outage of more than a day, a provider publishes the bars since it stopped,
    then re-sends them (a corrected close among them): those are within what the series
    holds, not decades back, and were dropped as bad data."""
    fanout, _ = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    catch_up = [T + 60 * i for i in range(1, 3 * 1440)]  # three days of bars
    for t in catch_up:
        fanout.on_provider_events("fake", [("AAA", "1m", bar(t, 2.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(catch_up[0], 3.0), True)])  # a fix
    series = fanout.cache.get(KEY)
    assert series.bars[1] == bar(catch_up[0], 3.0)
    assert dropped_as_bad(fanout) == 0


def test_a_bar_timed_in_milliseconds_or_beyond_any_date_is_dropped_and_the_batch_goes_on() -> None:
    """Its date could not be written: the far-ahead log line raised, the hub's reader of the
    batch failed, and the batch's later events were lost."""
    fanout, _ = fanout_with_a_loaded_series()
    fanout.on_provider_events(
        "fake",
        [
            ("AAA", "1m", bar(T * 1000, 5.0), False),
            ("AAA", "1m", bar(10**20, 6.0), False),
            ("AAA", "1m", bar(T, 1.0), False),
        ],
    )
    assert fanout.cache.get(KEY).times == [T]
    assert dropped_as_bad(fanout) == 2


def test_a_live_bar_with_its_high_below_its_low_is_dropped() -> None:
    fanout, store = fanout_with_a_loaded_series()
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", (T, 1.0, 0.5, 2.0, 1.5, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", (T + 60, 1.0, 0.5, 2.0, 1.5, 1.0), False)])
    series = fanout.cache.get(KEY)
    assert series.bars == [bar(T, 1.0)] and store.bars == []
    assert dropped_as_bad(fanout) == 2
    # Open and close outside the range are not judged: some feeds move them alone.
    fanout.on_provider_events("fake", [("AAA", "1m", (T, 3.0, 2.0, 1.0, 0.5, 1.0), False)])
    assert series.bars == [(T, 3.0, 2.0, 1.0, 0.5, 1.0)]


def test_a_stream_that_really_moved_far_ahead_is_followed_after_three_updates() -> None:
    fanout, _ = fanout_with_a_loaded_series()
    now = int(time.time()) // 60 * 60
    ahead = now + 30 * 86400
    fanout.on_provider_events("fake", [("AAA", "1m", bar(now, 1.0), False)])
    for i, t in enumerate((ahead, ahead, ahead + 60)):
        fanout.on_provider_events("fake", [("AAA", "1m", bar(t, 2.0 + i), False)])
    assert fanout.cache.get(KEY).newest == ahead + 60


def test_a_fast_clock_moving_a_bar_at_a_time_is_followed_past_the_wall_clock() -> None:
    """A fake exchange whose clock runs at 60x is hours ahead of ours after a few minutes:
    its bars still come one after the other, and every one is taken."""
    fanout, _ = fanout_with_a_loaded_series()
    start = int(time.time()) // 60 * 60 + 5 * 86400  # already days ahead of the wall clock
    for i in range(5):
        fanout.on_provider_events("fake", [("AAA", "1m", bar(start + 60 * i, 1.0), False)])
    assert fanout.cache.get(KEY).newest == start + 240


def test_a_replaying_provider_is_judged_by_its_own_clock() -> None:
    fanout, _ = fanout_with_a_loaded_series()
    ahead = int(time.time()) + 365 * 86400  # the replay runs a year ahead, at 60x
    fanout.clocks.set("fake", Clock(None, time.time(), ahead, 60.0))
    fanout.on_provider_events("fake", [("AAA", "1m", bar(T, 1.0), False)])
    fanout.on_provider_events("fake", [("AAA", "1m", bar(ahead // 60 * 60, 1.0), False)])
    assert fanout.cache.get(KEY).newest == ahead // 60 * 60  # years after T, not past its clock
