"""The encoded-history cache without sockets: the series version that invalidates it, the
entries and their bytes under the cache's bound, and frames byte-identical to the uncached
encoder after any sequence of changes to the bars."""

from __future__ import annotations

import random
from typing import Any

import orjson

from backend.history.cache import BarCache, Series
from backend.history.encoded import BYTES_PER_BAR, MAX_WINDOWS, Encoded, EncodedWindows
from backend.history.planner import Answer
from backend.model.bars import Bar, SeriesId, WireKeys
from backend.wire import protocol
from backend.wire.frames import payload_of, text_frame
from tests.hub_fakes import FakeClock, make_hub

KEY = SeriesId("fake", "AAA", "1m")
DETAILS = {"source": "fake", "name": "AAA", "name_label": 'Ä \u2603 "quoted"', "type": "x"}
NAN, INF = float("nan"), float("inf")


def bar(t: int, close: float = 1.0, volume: float | None = 2.0) -> Bar:
    return (t, close - 0.5, close + 1.0, close - 1.0, close, volume)


def series_of(n: int, start: int = 60_000) -> Series:
    series = Series(KEY)
    series.merge([bar(start + 60 * i, 100.0 + i) for i in range(n)])
    return series


def uncached(kind: str, bars: list[Bar], wire: WireKeys, metadata: Any) -> bytes:
    return text_frame(protocol.series_message(kind, KEY, wire.datapoints(bars), metadata))


# ---------------------------------------------------------------- the version


def test_the_version_stays_when_only_the_newest_bar_changes_in_place() -> None:
    series = series_of(5)
    version = series.version
    series.upsert(bar(series.times[-1], 7.0))
    series.merge([bar(series.times[-1], 8.0)])
    series.merge([bar(t, 100.0 + i) for i, t in enumerate(series.times[:-1])])  # the same bars
    assert series.version == version
    assert series.bars[-1] == bar(series.times[-1], 8.0)


def test_every_other_change_to_the_bars_bumps_the_version() -> None:
    series = series_of(5)
    changes = [
        lambda: series.upsert(bar(series.times[-1] + 60)),  # a new bar
        lambda: series.upsert(bar(series.times[1], 55.0)),  # a closed bar corrected
        lambda: series.upsert(bar(series.times[0] + 30)),  # a bar inserted
        lambda: series.merge([bar(series.times[0] - 60)]),  # scroll-back history
        lambda: series.merge([bar(series.times[-1] + 60)]),  # a newer bar from a fetch
        lambda: series.merge([bar(series.times[2], 9.0), bar(series.times[-1], 9.0)]),
        lambda: series.drop_before(series.times[1]),  # retention
        lambda: series.trim(2),  # the memory bound
    ]
    for change in changes:
        version = series.version
        change()
        assert series.version > version


def test_upsert_still_says_whether_the_bar_is_the_newest() -> None:
    series = series_of(3)
    newest = series.times[-1]
    assert series.upsert(bar(newest, 2.0)) is True
    assert series.upsert(bar(newest + 60)) is True
    assert series.upsert(bar(newest - 30)) is False  # inserted before the newest
    assert series.upsert(bar(newest)) is False


def test_a_merge_that_loses_to_the_live_bar_or_to_memory_changes_nothing() -> None:
    series = series_of(5)
    series.live_seq = 3
    version, newest = series.version, series.bars[-1]
    series.merge([bar(series.times[-1], 1e6)], keep_newer_than_seq=1)
    series.merge([bar(series.times[2], 1e6)], keep_existing=True)
    assert series.version == version
    assert series.bars[-1] == newest


# ---------------------------------------------------------------- the entries


def entry(version: int, size: int, bars: list[Bar] | None = None) -> Encoded:
    bars = bars if bars is not None else [bar(60), bar(120)]
    return Encoded(
        version,
        len(bars),
        bars[0][0] if bars else None,
        bars[-1] if bars else None,
        b"x" * size,
        0,
        size,
    )


def test_an_entry_is_found_only_for_its_version_and_its_bars() -> None:
    windows = EncodedWindows()
    bars = [bar(60), bar(120)]
    windows.put("w", entry(3, 10, bars))
    assert windows.get("w", 3, bars) is not None
    assert windows.get("w", 4, bars) is None
    assert windows.get("w", 3, bars[:1]) is None
    assert windows.get("w", 3, [bar(0), bar(120)]) is None
    assert windows.get("other", 3, bars) is None


def test_entries_are_bounded_per_series_and_their_bytes_counted() -> None:
    windows = EncodedWindows()
    for i in range(MAX_WINDOWS + 2):
        windows.put(("w", i), entry(1, 100))
    assert len(windows) == MAX_WINDOWS
    assert windows.nbytes == 100 * MAX_WINDOWS
    assert windows.get(("w", 0), 1, [bar(60), bar(120)]) is None  # the least recently used
    windows.put(("w", 9), entry(2, 50))  # a newer version: the older entries are stale
    assert len(windows) == 1 and windows.nbytes == 50
    kept = windows.get(("w", 9), 2, [bar(60), bar(120)])
    assert kept is not None
    windows.replace_frame(("w", 9), kept, bar(120, 3.0), b"y" * 70)
    assert windows.nbytes == 70
    windows.clear()
    assert windows.nbytes == 0 and len(windows) == 0


def test_encoded_frames_count_against_the_cache_bound_and_go_with_their_series() -> None:
    cache = BarCache()
    old, new = cache.get(SeriesId("f", "OLD", "1m")), cache.get(SeriesId("f", "NEW", "1m"))
    for series in (old, new):
        series.merge([bar(60 * i) for i in range(10)])
    old.last_used, new.last_used = 1.0, 2.0
    old.encoded.put("w", entry(old.version, 100 * BYTES_PER_BAR))
    assert cache.memory() == 20 + 100
    assert cache.encoded_bytes() == 100 * BYTES_PER_BAR
    assert cache.enforce(50, set()) == [old.key]
    assert cache.memory() == 10 and cache.encoded_bytes() == 0


def test_a_streamed_series_over_the_bound_keeps_its_bars_but_not_its_frames() -> None:
    cache = BarCache()
    series = cache.get(KEY)
    series.merge([bar(60 * i) for i in range(10)])
    series.encoded.put("w", entry(series.version, 100 * BYTES_PER_BAR))
    assert cache.enforce(50, {KEY}) == []
    assert len(series.encoded) == 0 and len(series.times) == 2


# ---------------------------------------------------------------- frames on the wire


def test_the_pieces_make_the_same_bytes_as_the_uncached_encoder() -> None:
    odd = [(60, NAN, INF, -INF, None, None), (120, 1e308, -0.0, 5e-324, 1.0, 0.0)]
    for kind in ("candlestick", "line"):
        wire = WireKeys(KEY, kind)
        for bars in ([], odd[:1], odd, [bar(60 * i, i * 0.1) for i in range(1, 400)]):
            for metadata in (None, DETAILS):
                head = protocol.series_head("data_init", KEY, metadata)
                closed = protocol.datapoints_json(wire, bars[:-1])
                last = protocol.datapoints_json(wire, bars[-1:])
                frame, start, stop = protocol.series_frame((head, closed), len(bars) > 1, last)
                assert frame == uncached("data_init", bars, wire, metadata)
                assert frame[start:stop] == head + closed
                assert orjson.loads(payload_of(frame))["data"] == orjson.loads(
                    orjson.dumps(wire.datapoints(bars))
                )


class Frames:
    """Frames of one series through ``Requests.encoded_frame`` (a real hub, fake provider)."""

    def __init__(self, series: Series) -> None:
        self.hub, _ = make_hub(FakeClock())
        self.series = series
        self.wire = WireKeys(KEY, "candlestick")

    def answer(self, count: int, end: int | None = None) -> Answer:
        limit = end if end is not None else 2**62
        return Answer(self.series.last_before(limit, count), None, self.series, self.series.version)

    def frame(self, answer: Answer, kind: str = "data_init", end: int | None = None) -> bytes:
        metadata = DETAILS if kind == "data_init" else None
        got, _ = self.hub.requests.encoded_frame(kind, answer, self.wire, metadata, KEY, end)
        assert got == uncached(kind, answer.bars, self.wire, metadata)
        return got

    def count(self, how: str) -> float:
        return self.hub.metrics.value("candlewire_history_frames_total", frame=how)


def test_identical_requests_cost_one_encoding_and_a_forming_bar_one_datapoint() -> None:
    frames = Frames(series_of(300))
    first = frames.frame(frames.answer(300))
    assert frames.frame(frames.answer(300)) is first
    frames.series.upsert(bar(frames.series.times[-1], 1234.5))
    frames.frame(frames.answer(300))
    frames.frame(frames.answer(300))
    assert (frames.count("encoded"), frames.count("spliced"), frames.count("cached")) == (1, 1, 2)
    assert frames.hub.cache.encoded_bytes() == 0  # the series is not in the hub's cache...
    assert frames.series.encoded.nbytes > 300 * 100  # ...it keeps its own frames


def test_a_new_bar_scroll_back_and_other_windows_are_never_served_stale() -> None:
    frames = Frames(series_of(50))
    series = frames.series
    frames.frame(frames.answer(20))
    series.upsert(bar(series.times[-1] + 60, 77.0))  # a new bar closes the forming one
    assert frames.frame(frames.answer(20)).count(b'"date"') == 20
    series.merge([bar(series.times[0] - 60 * i, 5.0) for i in range(30, 0, -1)])  # scroll-back
    frames.frame(frames.answer(80))
    frames.frame(frames.answer(20))
    end = series.times[40]
    frames.frame(frames.answer(10, end), "data_history", end)
    frames.frame(frames.answer(10, end + 60), "data_history", end + 60)
    assert frames.count("cached") == 0


def test_an_answer_taken_before_a_change_gets_its_own_bars_and_is_not_cached() -> None:
    frames = Frames(series_of(30))
    series = frames.series
    before = frames.answer(10)
    series.upsert(bar(series.times[-1] + 60))
    after = frames.answer(10)
    frames.frame(after)
    frames.frame(before)  # encoded from its own bars, the newer entry stays
    frames.frame(after)
    assert frames.count("cached") == 1


def test_random_changes_never_make_a_frame_differ_from_the_uncached_encoder() -> None:
    rng = random.Random(17)
    frames = Frames(series_of(40))
    series = frames.series
    for _ in range(600):
        t_new, t_old = series.times[-1], series.times[0]
        t_any = rng.choice(series.times)
        value = rng.choice([rng.uniform(1, 2), NAN, None, 1.0])
        match rng.randrange(8):
            case 0 | 1:
                series.upsert(bar(t_new, value or 1.0, value))  # the forming bar
            case 2:
                series.upsert(bar(t_new + 60, rng.uniform(1, 2)))
            case 3:
                series.upsert(bar(t_any, rng.uniform(1, 2)))
            case 4:
                series.merge([bar(t_old - 60 * i) for i in range(rng.randrange(1, 5), 0, -1)])
            case 5:
                series.merge([bar(t, 1.0) for t in series.times[-3:]])
            case 6:
                series.merge([bar(t_new, 1.0), bar(t_new + 60, 2.0)], keep_newer_than_seq=0)
            case _:
                pass
        count = rng.choice([1, 5, 20, 200])
        frames.frame(frames.answer(count))
        frames.frame(frames.answer(count))  # the same request again: from the cache
        end = rng.choice(series.times)
        frames.frame(frames.answer(count, end), "data_history", end)
    assert frames.count("cached") >= 600


def test_the_running_totals_stay_exact_through_every_writer() -> None:
    rng = random.Random(5)
    cache = BarCache()
    keys = [SeriesId("f", name, "1m") for name in ("A", "B", "C", "D")]

    def exact() -> tuple[int, int]:
        series = [cache.peek(k) for k in keys]
        return (
            sum(len(s.times) for s in series if s is not None),
            sum(s.encoded.nbytes for s in series if s is not None),
        )

    for step in range(400):
        series = cache.get(rng.choice(keys))
        series.touch()
        t = 60 * rng.randrange(0, 200)
        match rng.randrange(7):
            case 0:
                series.upsert(bar(t, rng.uniform(1, 2)))
            case 1:
                series.merge([bar(t + 60 * i) for i in range(rng.randrange(1, 30))])
            case 2:
                series.drop_before(t)
            case 3:
                series.trim(rng.randrange(0, 20))
            case 4:
                series.encoded.put(("w", step % 6), entry(series.version, rng.randrange(1, 5000)))
            case 5:
                cache.enforce(rng.randrange(50, 400), {keys[0]})
            case _:
                evicted = cache.peek(keys[1])
                if rng.random() < 0.1:
                    cache.evict_idle(0.0, {keys[0]})  # recounts too: checked before, after
                if evicted is not None and cache.peek(keys[1]) is None:
                    evicted.merge([bar(10**6)])  # an answer in flight writes to it
        bars, nbytes = exact()
        assert cache.memory() == bars + -(-nbytes // BYTES_PER_BAR)
        assert cache.encoded_bytes() == nbytes


def test_merging_anywhere_gives_what_a_merge_of_everything_gives() -> None:
    rng = random.Random(11)
    series = series_of(30)
    reference = dict(zip(series.times, series.bars, strict=True))
    for _ in range(300):
        start = 60 * rng.randrange(0, 60)
        bars = [bar(start + 60 * i, rng.uniform(1, 2)) for i in range(rng.randrange(1, 8))]
        keep = rng.random() < 0.3
        series.merge(bars, keep_existing=keep)
        for b in bars:
            if not (keep and b[0] in reference):
                reference[b[0]] = b
        assert series.times == sorted(reference)
        assert series.bars == [reference[t] for t in series.times]
        assert series.ledger.bars == len(series.times)
