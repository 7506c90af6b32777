"""The hub's fan-out stores live bars: a bar its provider marks ``final`` is written at once."""

from __future__ import annotations

from typing import Any

from backend.history.cache import BarCache
from backend.hub.fanout import Fanout
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.model.bars import Bar, SeriesId
from backend.runtime.clocks import Clocks

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
