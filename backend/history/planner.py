"""History planning: answer "the last N bars up to T" from memory, the store, or a provider.

For each request the planner walks back from the end through the covered spans of the
series (loaded from the :class:`BarStore` on first use); covered bars come from memory or are
read back from the store; where a span is missing it asks the provider for just that window,
records what the provider answered (also when it answered nothing), persists it, and goes on
until it has ``count`` bars or the provider has no older data. Requests on one key are
serialized, so identical concurrent misses share one provider call. A provider failure
returns what is known plus the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from backend.errors import ProviderError, StorageError
from backend.history.cache import MIN_TIME, BarCache, Series
from backend.history.store import BarStore
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.model.coverage import Coverage
from backend.runtime.clocks import Clocks

logger = logging.getLogger(__name__)

# fetch(key, start, end or None for "now", count) -> bars oldest first
Fetch = Callable[[SeriesId, int, int | None, int], Awaitable[list[Bar]]]
# persists(source) -> whether that provider's bars are kept in the store
Persists = Callable[[str], Awaitable[bool]]

TAIL_FRESH_SECONDS = 1.0
MAX_EMPTY_WINDOWS = 7
WIDEN_FACTOR = 4
# Bars a window walked back holds at least, whatever the count asked: the empty windows
# before "nothing older" reach MIN_WINDOW_BARS * 5,461 bars back (3 years of minutes). Sized
# by a count of 1 (the UDF nextTime probe, a short data_history), they reached 3.8 days of
# minute bars, and a pause of the data longer than that ended the history for good.
MIN_WINDOW_BARS = 300
LONGEST_MONTH = 32 * 86_400  # 31 days, and a daylight saving hour of a local calendar
MAX_FETCHES_PER_REQUEST = 16


@dataclass(slots=True)
class _Walk:
    """Where a walk back through a series stands (:meth:`HistoryPlanner._walk`)."""

    cursor: int  # the next bar time to account for, walking back
    count: int  # the bars wanted
    now: int
    collected: int = 0
    widen: int = 1  # how many times wider than the bars missing the next window is
    empties: int = 0  # empty windows in a row
    fetches: int = 0
    read_at: int | None = None  # the cursor whose span was last read back from the store


@dataclass(frozen=True, slots=True)
class _ReadBack:
    """Read the newest ``bars`` stored bars of the span from ``low`` back to memory."""

    low: int
    bars: int


@dataclass(frozen=True, slots=True)
class _FetchWindow:
    """Ask the provider for ``[start, cursor]``, at most ``window`` bars."""

    start: int
    window: int


@dataclass(frozen=True, slots=True)
class Answer:
    """The bars of a request; ``series`` and its ``version`` when they were taken, so the
    encoded frame of the same bars can be reused (:mod:`.encoded`)."""

    bars: list[Bar]
    error: ProviderError | StorageError | None = None
    series: Series | None = None
    version: int = 0
    live_seq: int = 0  # the series' live updates when the bars were taken
    latest: bool = False  # the newest ``count`` bars (a data_init), not those before a time
    count: int = 0

    def as_of_now(self) -> Answer:
        """The newest bars of the series as they are now, for an answer of the latest bars
        taken before an await: a data_init waiting for its client's room (a slow reader)
        starts that client's updates only once it is sent, and the live updates merged
        meanwhile reached only the cache. Sent as taken, the client missed them: a forming
        bar kept older values until its next update, and a bar that closed meanwhile kept
        its partial values for good."""
        series = self.series
        if series is None or not self.latest:
            return self
        if series.version == self.version and series.live_seq == self.live_seq:
            return self
        newest = series.newest  # the answer's end was "now or the newest bar, if later"
        if newest is None:
            return self
        return replace(
            self,
            bars=series.last_before(newest, self.count),
            version=series.version,
            live_seq=series.live_seq,
        )


class HistoryPlanner:
    """Plans and runs history requests against one :class:`BarCache` and its store."""

    def __init__(
        self,
        cache: BarCache,
        fetch: Fetch,
        clocks: Clocks,
        store: BarStore | None = None,
        persists: Persists | None = None,
    ) -> None:
        self.cache = cache
        self.fetch = fetch
        self.clocks = clocks
        self.store = store
        self.persists = persists
        self.after_request: Callable[[], None] | None = None  # e.g. the cache's memory bound
        self._locks: dict[SeriesId, asyncio.Lock] = {}

    async def latest(self, key: SeriesId, count: int, streaming: bool) -> Answer:
        """The latest ``count`` bars including the forming one (``data_init``)."""
        return await self.before(key, None, count, streaming)

    async def before(
        self, key: SeriesId, end: int | None, count: int, streaming: bool = False
    ) -> Answer:
        """The last ``count`` bars with open time <= ``end`` (None: now)."""
        try:
            return await self._before(key, end, count, streaming)
        finally:
            if self.after_request is not None:
                self.after_request()

    async def _before(self, key: SeriesId, end: int | None, count: int, streaming: bool) -> Answer:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            error: ProviderError | StorageError | None = None
            series = self.cache.get(key)
            try:
                await self._load(series, count)
            except (ProviderError, StorageError) as exc:
                error = exc
            # Only now: the first load of a series waits (``persists``) for its provider to
            # be ready, and a replaying provider reports its clocks as it starts. Read
            # before, "now" was the wall clock, and the tail of a CSV file replayed months
            # ahead of it was fetched from the wall time on: 470,000 bars for a data_init
            # of 5 sent while the server started (8 million at CSV_REPLAY_SPEED=1000).
            if error is None and self.clocks.missing(key.source, key.name):
                await self._probe_clock(key)
            now = self.clocks.now(key.source, key.name)
            end_t = now if end is None else end
            if error is None:
                try:
                    series.touch()
                    if self._needs_tail(series, now, end_t, streaming):
                        await self._fetch_tail(series, now, count, streaming)
                        # A replaying provider reports the clock of a file it found only
                        # now (dropped in while running) with its first answer for it: walk
                        # back from that clock, not from the wall time, which may be months
                        # past the file's rows (every window empty: "nothing older").
                        now = self.clocks.now(key.source, key.name)
                        end_t = now if end is None else end
                    await self._fill_back(series, min(end_t, now), count, now)
                except (ProviderError, StorageError) as exc:
                    error = exc
            # "now" includes a bar the provider already opened a little ahead of our clock.
            limit = max(now, series.newest or now) if end is None else end_t
            bars = series.last_before(limit, count)
            seq = series.live_seq
            return Answer(bars, error, series, series.version, seq, end is None, count)

    def answer_now(self, key: SeriesId, count: int, streaming: bool) -> Answer | None:
        """:meth:`latest`'s answer when memory holds all of it and no other request on the
        key is under way: at once, without a wait (a storm of ``data_init`` of a cached
        series costs no task each). None when :meth:`latest` must be awaited: the series to
        load, the provider's clock to learn, a tail or a window to fetch, stored bars to
        read back."""
        series = self.cache.peek(key)
        lock = self._locks.get(key)
        if series is None or not series.loaded or (lock is not None and lock.locked()):
            return None
        if self.clocks.missing(key.source, key.name):
            return None
        now = self.clocks.now(key.source, key.name)
        if self._needs_tail(series, now, now, streaming):
            return None
        if self._walk(series, _Walk(now, count, now)) is not None:
            return None
        series.touch()
        bars = series.last_before(max(now, series.newest or now), count)
        answer = Answer(bars, None, series, series.version, series.live_seq, True, count)
        if self.after_request is not None:
            self.after_request()
        return answer

    async def _probe_clock(self, key: SeriesId) -> None:
        """Ask the provider for the bar at the wall time and drop the answer: a replaying
        provider reports the clock of a file it finds now with it. Planned from the wall
        clock instead, the tail of a file replayed months ahead of it was fetched from the
        wall time on (400,000 bars for a data_init of 3 at CSV_REPLAY_SPEED=60). A failure
        is left to the request itself to meet and answer."""
        wall = int(time.time())
        with contextlib.suppress(ProviderError):
            await self.fetch(key, wall, wall, 1)

    def forget(self, key: SeriesId) -> None:
        """Drop the lock of an evicted series."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    # ------------------------------------------------------------------ loading

    async def _load(self, series: Series, count: int) -> None:
        if series.loaded:
            return
        series.persist = self.store is not None and (
            self.persists is None or await self.persists(series.key.source)
        )
        if self.store is not None and series.persist:
            try:
                snapshot = await self.store.load(series.key, count)
            except StorageError as exc:
                # A damaged or unreadable store must not cost the series its data: it is
                # served from its provider, in memory only (never read from or written to
                # the store again while it is cached), and said once in the log. Failing
                # the request instead failed every later one the same way.
                logger.error("%s; served from its provider without the bar store", exc)
                series.persist = False
                series.loaded = True
                return
            series.coverage = Coverage(snapshot.coverage)
            series.exhausted_before = snapshot.exhausted_before
            series.merge(snapshot.bars, keep_existing=True)
            if not snapshot.complete and snapshot.bars:
                series.floor = snapshot.bars[0][0]
        series.loaded = True

    async def _read_back(self, series: Series, low: int, cursor: int, need: int) -> None:
        """Bring the newest ``need`` stored bars of ``[low, cursor]`` below the floor to memory."""
        if self.store is None or cursor < low or need <= 0:
            return
        top = min(cursor, series.floor - 1)
        bars = await self.store.read(series.key, low, top, need)
        series.merge(bars, keep_existing=True)
        if top == series.floor - 1:
            # Only a read that reached the floor joins the bars in memory: one of an older
            # span (``cursor`` below the floor) leaves the stored bars between unread, and
            # lowering the floor past them would count them as in memory (a hole).
            series.floor = bars[0][0] if len(bars) == need else low

    # ------------------------------------------------------------------ the tail

    def _needs_tail(self, series: Series, now: int, end_t: int, streaming: bool) -> bool:
        step = intervals.nominal_seconds(series.key.interval)
        if end_t < now - _longest(series.key.interval) or _fresh(series):
            return False
        newest = series.newest
        if (
            streaming
            and newest is not None
            and _next_open(newest, series.key.interval, step) > now
            and series.coverage.span_at(newest - 1) is not None
        ):
            # The stored newest bar is still the current one and the stream that starts now
            # will update it: known up to it, no fetch (also right after a restart).
            series.tail_fetched_at = time.monotonic()
            return False
        return True

    async def _fetch_tail(self, series: Series, now: int, count: int, streaming: bool) -> None:
        step = intervals.nominal_seconds(series.key.interval)
        start = max(0, now - step * count)
        closed_end = series.coverage.end_before(now + 1)
        if closed_end is not None and closed_end + 1 > start:
            start = closed_end + 1
        epoch, seq = series.epoch, series.live_seq
        bars = self._not_future(series.key, await self.fetch(series.key, start, None, count), start)
        series.merge(bars, keep_newer_than_seq=seq)
        # The newest bar of a window that reaches "now" may still change: not covered.
        covered_to = bars[-1][0] - 1 if bars else now - _longest(series.key.interval)
        series.coverage.add(start, covered_to)
        series.tail_fetched_at = time.monotonic()
        # Known empty after the newest bar from here: the window's start, or the newest bar
        # of an answer that ends before it (a provider that answers the last ``count`` bars
        # whatever the start: nothing opened after them)
        series.tail_from = min(start, bars[-1][0]) if bars else start
        series.live = streaming and series.epoch == epoch
        self._persist(series, bars, forming_t=bars[-1][0] if bars else None)

    # ------------------------------------------------------------------ walking back

    async def _fill_back(self, series: Series, cursor: int, count: int, now: int) -> None:
        """Walk back from ``cursor`` until ``count`` bars are known or nothing older is,
        reading stored bars back and fetching the windows missing as :meth:`_walk` asks."""
        walk = _Walk(cursor, count, now)
        while (need := self._walk(series, walk)) is not None:
            if isinstance(need, _ReadBack):
                await self._read_back(series, need.low, walk.cursor, need.bars)
                continue
            bars = await self.fetch(series.key, need.start, walk.cursor, need.window)
            if not self._took(series, walk, need.start, bars):
                return

    def _walk(self, series: Series, walk: _Walk) -> _ReadBack | _FetchWindow | None:
        """Walk back through what memory holds, from ``walk.cursor``, until ``walk.count``
        bars are collected or nothing older is (None), or until the walk needs stored bars
        read back or a window fetched: then that (the caller does it and walks on)."""
        step = intervals.nominal_seconds(series.key.interval)
        count = walk.count
        while walk.collected < count and walk.cursor >= 0:
            cursor = walk.cursor
            if series.exhausted_before is not None and cursor < series.exhausted_before:
                return None
            newest = series.newest
            # Nothing opened after the newest bar: the fresh tail (or the stream since) says
            # so. Not when the tail's window started after it and found nothing (a quiet
            # stretch at the end: a market closed, a gap a stream missed): only that window
            # is known empty, and the bars before it are walked back to.
            known_from = None if newest is None else max(newest, series.tail_from)
            if known_from is not None and cursor >= known_from and _fresh(series):
                walk.collected += series.count_between(known_from, cursor)
                walk.cursor = known_from - 1
                continue
            span = series.coverage.span_at(cursor)
            if span is not None:
                if span[0] < series.floor and walk.read_at != cursor:
                    in_memory = series.count_between(max(span[0], series.floor), cursor)
                    missing = count - walk.collected - in_memory
                    if self.store is not None and missing > 0:
                        walk.read_at = cursor  # once per span, then counted as it is
                        return _ReadBack(span[0], missing)
                walk.collected += series.count_between(span[0], cursor)
                if series.exhausted_before is not None and span[0] <= series.exhausted_before:
                    return None
                walk.cursor = span[0] - 1
                continue
            if walk.fetches >= MAX_FETCHES_PER_REQUEST:
                logger.warning("%s: gave up after %d history fetches", series.key, walk.fetches)
                return None
            window = max(count - walk.collected, MIN_WINDOW_BARS) * walk.widen  # bars it can hold
            start = max(0, cursor - step * window + 1)
            lower = series.coverage.end_before(cursor)
            if lower is not None:
                start = max(start, lower + 1)
            # The window's size as the count: a provider that keeps at most ``count`` bars
            # (README's example) answers all of it, which is then recorded as covered.
            return _FetchWindow(start, window)
        return None

    def _took(self, series: Series, walk: _Walk, start: int, fetched: list[Bar]) -> bool:
        """Record the window ``[start, walk.cursor]`` the provider answered with ``fetched``;
        False when it says nothing older is there (the walk ends)."""
        cursor = walk.cursor
        bars = self._not_future(series.key, fetched, cursor)
        walk.fetches += 1
        series.merge(bars)
        # A window that reaches the present ends in a bar that may still change.
        reaches_now = cursor > walk.now - _longest(series.key.interval) and bool(bars)
        series.coverage.add(start, bars[-1][0] - 1 if reaches_now else cursor)
        if series.count_between(start, cursor) == 0:
            walk.empties += 1
            walk.widen *= WIDEN_FACTOR
            if walk.empties >= MAX_EMPTY_WINDOWS or start == 0:
                series.exhausted_before = start
                self._persist(series, [])
                return False
        else:
            walk.empties = 0
        self._persist(series, bars)
        if reaches_now:
            # Its last bar is counted but not covered: walk on from before it (or the
            # cursor, still not covered, was asked for again up to 16 times).
            walk.collected += series.count_between(bars[-1][0], cursor)
            walk.cursor = bars[-1][0] - 1
        return True

    def _not_future(self, key: SeriesId, bars: list[Bar], asked: int) -> list[Bar]:
        """``bars`` (oldest first) of a window asked up to ``asked`` (its end, or its start
        when it ends now) without strays far ahead of it, of the bars before them and of the
        provider's clock (:meth:`Clocks.far_ahead`: bad data; the chart would end in it and
        the live updates would look like corrections of older bars); logged."""
        if not bars or max(bar[0] for bar in bars) <= self.clocks.latest_open(key.source, key.name):
            return bars  # the usual reply: nothing past the clock, nothing to look at
        kept: list[Bar] = []
        for bar in bars:
            if not self.clocks.far_ahead(key, bar[0], kept[-1][0] if kept else asked):
                kept.append(bar)
        if len(kept) < len(bars):
            logger.warning(
                "%s: %d bars from the provider far past the others and its clock (%s): dropped",
                key,
                len(bars) - len(kept),
                intervals.format_date(self.clocks.now(key.source, key.name)),
            )
        return kept

    def _persist(self, series: Series, bars: list[Bar], forming_t: int | None = None) -> None:
        if self.store is None or not series.persist:
            return
        self.store.put_bars(series.key, bars, forming_t)
        self.store.put_coverage(series.key, series.coverage.spans(), series.exhausted_before)


def _longest(interval: str) -> int:
    """The longest a bar of ``interval`` lasts: the bar forming now opened less than this
    before now. A month's nominal 30.4 days fall short of a month of 31: on 31 March 20:00
    a window ending 1 March 05:00 did not count as reaching the forming bar, which was then
    recorded as known (and stored) with its values of that moment."""
    return LONGEST_MONTH if interval == "1M" else intervals.nominal_seconds(interval)


def _next_open(t: int, interval: str, step: int) -> int:
    """When the bar after the one opening at ``t`` opens, at the latest: a month is not
    ``step`` (30.4 days) long, and on the first days of a month after a shorter one (into 3
    March 10:00 after February) ``t + step`` took the month before as still forming. The 1st
    at 00:00 UTC is no later than a month an upstream opens at local midnight west of UTC."""
    if interval == "1M":
        return min(t + step, intervals.next_open(t, interval))
    return t + step


def _fresh(series: Series) -> bool:
    return series.live or time.monotonic() - series.tail_fetched_at < TAIL_FRESH_SECONDS


__all__ = ["MIN_TIME", "Answer", "HistoryPlanner"]
