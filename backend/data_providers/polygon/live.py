"""Forming bars of the streamed Polygon keys: a REST seed merged with the live per-second
aggregates.

Owns, per subscribed key ``(ticker, interval)``, the bar being formed and its lifecycle::

    PENDING --first aggregate x--> SEEDING --REST has reached x--------------> LIVE
       ^                            |    ^                                       |
       |                            |    +-- recheck --+                         |
       |                            +--REST trails x--> TRAILING                 |
       +---- reconnect, seed failure ---------------------------------------------+

A bar built live must equal the bar REST returns later, with no second lost or counted
twice. The stream is subscribed first (``add`` watches the ticker) and only carries what
happens after that, so its aggregates, from the first one (second ``x``) on, are buffered
while a worker thread fetches the seed from REST: the seconds REST has from ``x``'s minute
on, whose last one (second ``r``) is how far REST has got. Everything before ``r`` comes from
REST (whole days, minutes and seconds: :func:`.bars.seed_pieces` of ``r``, and the closed
bars since the key's resume point). Second ``r`` itself may still be forming in REST's
answer, and the stream has it whole (``r >= x``), so the buffered aggregates from ``r`` on
are folded on top, and every later aggregate folds in as it comes. An aggregate at or before
the last second folded is late (a frame after a newer second of its ticker): it is folded in
at its place in time when it is one the bars lack (not REST's, before ``r``, nor one the
stream gave already, within :data:`LATE_SECONDS`) and its bar is the forming one (published
again) or the bar that closed last (published again, final); otherwise it is dropped.

REST may trail the stream (its index catches up a moment after the feed). When REST has not
reached ``x`` yet, the seconds between ``r`` and ``x`` are missing from both, so the key is
TRAILING: its bar is published from the seed up to ``x`` and the stream (provisional), its
aggregates are still kept, and the seed is fetched again, on the first aggregate at least
:data:`RECHECK_SECONDS` later, until REST has reached ``x`` (at most :data:`MAX_RECHECKS`
times); then the bars since the bucket before ``x`` are published again from REST and the
key is LIVE.

After a reconnect, every key of that market goes back to PENDING with its current bar as the
resume point: the bars since then are fetched at once (:meth:`LiveBars._refresh`, so charts
see the gap filled), and the next seed fetches them again and replaces the bar in progress
with REST's once REST has caught up with the stream; closed bars are published
``final=True``.

A seed that fails puts its key back to PENDING, seeded again on an aggregate after 2 s,
doubling to 60 s; its clients are notified at the first failure of a run (and when the
error changes), not at every retry.

Also counts keys per ticker: the first key of a ticker watches it on the stream, the last one
unwatches it. Thread-safe: hooks (control thread), aggregates (stream thread) and workers
share one lock; REST calls run outside it. Owns no sockets.
"""

from __future__ import annotations

import enum
import logging
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from threading import Lock
from typing import NamedTuple, Protocol

from backend.data_providers.polygon.bars import (
    Market,
    advance,
    bucket_start,
    fold_bars,
    fold_late,
    market_of,
    previous_bucket,
    seed_pieces,
    timespan,
)
from backend.data_providers.polygon.wire import LiveAgg
from backend.errors import CandlewireError, ProviderUnavailable, UnknownSymbol
from backend.model.bars import Bar

logger = logging.getLogger(__name__)

OPEN_END = 7 * 86_400  # "up to now": REST windows end this far past the wall clock
RETRY_FIRST, RETRY_MAX = 2.0, 60.0  # seconds between failed seeds of one key
RECHECK_SECONDS = 1.0  # between seeds of a key while REST trails the stream
MAX_RECHECKS = 30  # then the key goes live with what REST has
LATE_SECONDS = 120  # a streamed second this far behind the newest one folded is dropped


class Fetch(Protocol):
    """``PolygonRest.aggregates``: bars opening in ``[start, end]``, oldest first."""

    def __call__(
        self, ticker: str, multiplier: int, timespan: str, start: int, end: int
    ) -> list[Bar]: ...


class Sink(Protocol):
    """Where bars and notices go (the provider)."""

    def publish_bar(self, ticker: str, interval: str, bar: Bar, final: bool) -> None: ...
    def notify(self, symbol: str, interval: str, code: str, message: str) -> None: ...


class Watcher(Protocol):
    """The stream (``PolygonStreams``): which tickers to receive aggregates of."""

    def watch(self, ticker: str) -> None: ...
    def unwatch(self, ticker: str) -> None: ...


class _Seen:
    """Which of the last :data:`LATE_SECONDS` seconds were folded: a ring of seconds, each
    in the slot of its remainder (a slot holding a second is the proof), in fixed memory."""

    __slots__ = ("_ring",)

    def __init__(self) -> None:
        self._ring = array("q", [-1]) * LATE_SECONDS

    def add(self, second: int) -> None:
        self._ring[second % LATE_SECONDS] = second

    def has(self, second: int) -> bool:
        return self._ring[second % LATE_SECONDS] == second


class _State(enum.Enum):
    PENDING = "pending"
    SEEDING = "seeding"
    TRAILING = "trailing"
    LIVE = "live"


@dataclass(slots=True, eq=False)
class _Key:
    ticker: str
    interval: str
    market: Market
    state: _State = _State.PENDING
    generation: int = 0  # bumped whenever in-flight work about this key must be dropped
    bar: Bar | None = None
    folded: int | None = None  # the last second folded into the bars
    # Late seconds: the first second not from REST (`cut`), the streamed seconds folded
    # within LATE_SECONDS, the first and last second in `bar`, and the bar closed last
    # with its first and last second.
    floor: int | None = None
    seen: _Seen = field(default_factory=_Seen)
    span: tuple[int, int] | None = None
    closed: tuple[Bar, int, int] | None = None
    resume_from: int | None = None
    first: int | None = None  # the first streamed second REST has not been seen to cover
    buffer: list[Bar] = field(default_factory=list)  # streamed seconds from `first` on
    rechecks: int = 0
    failures: int = 0
    told: str = ""  # the error code clients were told of in this run of failed seeds
    retry_at: float = 0.0


class _Seed(NamedTuple):
    """What REST said: the closed bars since the resume point, the bar up to ``cut``."""

    cut: int  # the first second not taken from REST
    caught_up: bool  # REST reached the stream's first second
    missed: list[Bar]
    bar: Bar | None


class LiveBars:
    """The forming bars of every subscribed key; see the module docstring."""

    def __init__(
        self,
        fetch: Fetch,
        sink: Sink,
        watcher: Watcher,
        executor: Executor,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._sink = sink
        self._watcher = watcher
        self._executor = executor
        self._wall, self._clock = wall, clock
        self._lock = Lock()
        self._tickers: dict[str, dict[str, _Key]] = {}  # ticker -> interval -> key

    # ------------------------------------------------------------------ subscriptions

    def add(self, ticker: str, interval: str) -> None:
        """Start forming bars of ``(ticker, interval)``; ``KeyError`` for an unknown interval."""
        timespan(interval)
        with self._lock:
            keys = self._tickers.setdefault(ticker, {})
            if interval in keys:
                return
            keys[interval] = _Key(ticker, interval, market_of(ticker))
            if len(keys) == 1:
                self._watcher.watch(ticker)

    def remove(self, ticker: str, interval: str) -> None:
        """Stop forming bars of ``(ticker, interval)``; drops its in-flight work."""
        with self._lock:
            keys = self._tickers.get(ticker, {})
            key = keys.pop(interval, None)
            if key is None:
                return
            key.generation += 1
            if not keys:
                del self._tickers[ticker]
                self._watcher.unwatch(ticker)

    def keys(self, market: Market | None = None) -> list[tuple[str, str]]:
        """The subscribed ``(ticker, interval)`` keys (of one market)."""
        with self._lock:
            return [
                (key.ticker, key.interval)
                for keys in self._tickers.values()
                for key in keys.values()
                if market in (None, key.market)
            ]

    # ------------------------------------------------------------------ stream events

    def on_aggregates(self, aggs: Iterable[LiveAgg]) -> None:
        """Fold live aggregates (oldest first) into the keys of their tickers."""
        by_ticker: dict[str, list[Bar]] = {}
        for agg in aggs:
            by_ticker.setdefault(agg.ticker, []).append(agg.bar)
        with self._lock:
            for ticker, bars in by_ticker.items():
                for key in self._tickers.get(ticker, {}).values():
                    self._take(key, bars)

    def on_reconnected(self, market: Market) -> None:
        """The stream of ``market`` reconnected: re-seed its keys and fetch what was missed."""
        with self._lock:
            keys = [k for ks in self._tickers.values() for k in ks.values() if k.market == market]
            for key in keys:
                if key.bar is not None:
                    key.resume_from = min(key.bar[0], key.resume_from or key.bar[0])
                key.generation += 1
                key.state, key.bar, key.folded, key.retry_at = _State.PENDING, None, None, 0.0
                key.first, key.buffer = None, []
                key.floor, key.seen, key.span, key.closed = None, _Seen(), None, None
                if key.resume_from is not None:
                    self._executor.submit(self._refresh, key, key.generation)

    def _take(self, key: _Key, bars: list[Bar]) -> None:
        match key.state:
            case _State.LIVE:
                self._fold(key, bars)
            case _State.TRAILING:
                key.buffer.extend(bars)
                self._fold(key, bars)
                if self._clock() >= key.retry_at:
                    self._start_seed(key)
            case _State.SEEDING:
                key.buffer.extend(bars)
            case _State.PENDING if self._clock() >= key.retry_at:
                key.first, key.buffer, key.rechecks = min(map(_start, bars)), list(bars), 0
                self._start_seed(key)

    def _start_seed(self, key: _Key) -> None:
        assert key.first is not None
        key.state = _State.SEEDING
        self._executor.submit(self._seed, key, key.generation, key.first)

    def _fold(self, key: _Key, bars: list[Bar]) -> None:
        """Fold the streamed seconds after the last one folded; publish what changed.

        The seconds are folded in time order, each once: one frame (a JSON array) may carry
        a ticker's seconds out of order, or the same second twice, and folding them as they
        came would give the bar the close (or open) of an earlier second, or count a
        second's volume twice. A second that repeats one already folded keeps the first.
        A second older than the last one folded is late (:meth:`_fold_late`).
        """
        fresh: list[Bar] = []
        last = key.folded
        for second in sorted(bars, key=_start):
            if last is None or second[0] > last:
                fresh.append(second)
                last = second[0]
            elif key.folded is not None and second[0] <= key.folded:
                self._fold_late(key, second)
        if not fresh:
            return
        open_at = None if key.bar is None else key.bar[0]
        span, ended = key.span, None  # of the forming bar; of the bar closed last on the way
        for second in fresh:
            start = bucket_start(key.market, key.interval, second[0])
            if open_at is not None and start < open_at:
                continue
            if open_at is None or start > open_at:
                ended = None if open_at is None or span is None else (open_at, span)
                open_at, span = start, (second[0], second[0])
            else:
                span = (second[0] if span is None else span[0], second[0])
        closed, bar = advance(key.market, key.interval, key.bar, fresh)
        if closed and ended is not None and closed[-1][0] == ended[0]:
            key.closed = (closed[-1], *ended[1])
        key.span = span
        key.folded = fresh[-1][0]
        for second in fresh:
            key.seen.add(second[0])
        self._publish(key, closed, bar)

    def _publish(self, key: _Key, closed: list[Bar], bar: Bar | None) -> None:
        for done in closed:
            self._sink.publish_bar(key.ticker, key.interval, done, True)
        if bar is not None and bar != key.bar:
            self._sink.publish_bar(key.ticker, key.interval, bar, False)
        key.bar = bar

    def _fold_late(self, key: _Key, second: Bar) -> None:
        """Fold a late second (older than the last one folded) in at its place: into the
        forming bar (published again) or the bar closed last (published again, final). One
        before the seed's cut (REST's), one the stream gave already, or one further back is
        dropped."""
        at = second[0]
        assert key.folded is not None
        if key.floor is None or at < key.floor or key.seen.has(at):
            return
        if at <= key.folded - LATE_SECONDS:
            logger.debug("polygon: %s %s: second %d came too late", key.ticker, key.interval, at)
            return
        start = bucket_start(key.market, key.interval, at)
        if key.bar is not None and key.span is not None and start == key.bar[0]:
            bar = fold_late(key.bar, *key.span, second)
            key.span = (min(key.span[0], at), max(key.span[1], at))
            self._publish(key, [], bar)
        elif key.closed is not None and start == key.closed[0][0]:
            done, first, last = key.closed
            done = fold_late(done, first, last, second)
            key.closed = (done, min(first, at), max(last, at))
            self._sink.publish_bar(key.ticker, key.interval, done, True)
        else:
            logger.debug("polygon: %s %s: second %d came after its bar", key.ticker,
                         key.interval, at)  # fmt: skip
            return
        key.seen.add(at)

    # ------------------------------------------------------------------ workers

    def _seed(self, key: _Key, generation: int, first: int) -> None:
        """Worker: fetch the seed from REST and merge it with the buffered aggregates."""
        try:
            seed = self._fetch_seed(key, first)
        except CandlewireError as exc:
            self._seed_failed(key, generation, exc)
            return
        except Exception as exc:  # a worker's top: log the traceback, retry the key later
            logger.exception("polygon: seeding %s %s failed", key.ticker, key.interval)
            self._seed_failed(key, generation, exc)
            return
        with self._lock:
            if key.generation != generation:
                return
            self._merge(key, seed)
        logger.debug("polygon: %s %s is %s from %d", key.ticker, key.interval,
                     key.state.value, seed.cut)  # fmt: skip

    def _fetch_seed(self, key: _Key, first: int) -> _Seed:
        """REST's part of the key's bars: everything up to the last second REST has. A REST
        server that serves no second aggregates (an emulator or relay that refuses the
        timespan) is taken as one that has none yet: the key trails, its bars are the
        minutes REST has plus the stream, and it goes live after its rechecks."""
        try:
            recent = self._fetch(
                key.ticker,
                1,
                "second",
                first - first % 60,
                max(int(self._wall()), first) + OPEN_END,
            )
        except (ProviderUnavailable, UnknownSymbol) as exc:
            if key.rechecks == 0:
                logger.warning(
                    "polygon: no second aggregates of %s (%s); its live bar starts from the"
                    " minutes REST has",
                    key.ticker,
                    exc,
                )
            recent = []
        caught_up = bool(recent) and recent[-1][0] >= first
        cut = recent[-1][0] if caught_up else first  # REST's last second may be forming
        return _Seed(cut, caught_up, self._missed(key, cut), self._seed_bar(key, cut, recent))

    def _missed(self, key: _Key, cut: int) -> list[Bar]:
        """Closed bars from the resume point (default: the bucket before) to ``cut``'s bucket."""
        start = bucket_start(key.market, key.interval, cut)
        since = key.resume_from
        if since is None:
            since = previous_bucket(key.market, key.interval, start)
        if since >= start:
            return []
        multiplier, span = timespan(key.interval)
        return self._fetch(key.ticker, multiplier, span, since, start - 1)

    def _seed_bar(self, key: _Key, cut: int, recent: list[Bar]) -> Bar | None:
        """The bar of ``cut``'s bucket up to (not including) second ``cut``, from REST;
        ``recent`` holds REST's seconds of ``cut``'s minute already."""
        parts: list[Bar] = []
        for piece in seed_pieces(key.market, key.interval, cut):
            if piece.timespan == "second":
                bars = recent
            else:
                bars = self._fetch(key.ticker, 1, piece.timespan, piece.start, piece.end - 1)
            parts.extend(bar for bar in bars if piece.start <= bar[0] < piece.end)
        return fold_bars(bucket_start(key.market, key.interval, cut), parts)

    def _merge(self, key: _Key, seed: _Seed) -> None:
        """Publish REST's bars and the buffered seconds after them; LIVE or TRAILING next."""
        assert key.first is not None
        for done in seed.missed:
            self._sink.publish_bar(key.ticker, key.interval, done, True)
        key.bar, key.folded, key.failures, key.told = None, seed.cut - 1, 0, ""
        key.floor, key.seen, key.closed = seed.cut, _Seen(), None
        key.span = None if seed.bar is None else (seed.bar[0], seed.cut - 1)
        self._publish(key, [], seed.bar)
        self._fold(key, key.buffer)
        if seed.caught_up or key.rechecks >= MAX_RECHECKS:
            if not seed.caught_up:
                logger.warning(
                    "polygon: REST never reached second %d of %s %s; live from what it has",
                    key.first,
                    key.ticker,
                    key.interval,
                )
            key.state, key.buffer, key.first, key.resume_from = _State.LIVE, [], None, None
            return
        # Redo from the bucket before `first`: REST may have had only part of it.
        bucket = bucket_start(key.market, key.interval, key.first)
        before = previous_bucket(key.market, key.interval, bucket)
        key.resume_from = min(before, key.resume_from or before)
        key.rechecks += 1
        key.state, key.retry_at = _State.TRAILING, self._clock() + RECHECK_SECONDS

    def _seed_failed(self, key: _Key, generation: int, exc: Exception) -> None:
        with self._lock:
            if key.generation != generation:
                return
            key.failures += 1
            wait = min(RETRY_MAX, RETRY_FIRST * 2 ** (key.failures - 1))
            key.state, key.retry_at = _State.PENDING, self._clock() + wait
            key.buffer, key.first = [], None
            code = str(getattr(exc, "code", "provider_unavailable"))
            told, key.told = key.told, code
        logger.warning("polygon: cannot seed %s %s: %s", key.ticker, key.interval, exc)
        if code == told:  # clients heard it at the first failure of this run
            return
        message = f"polygon: live bars of {key.ticker} {key.interval} are late: {exc}"
        self._sink.notify(key.ticker, key.interval, code, f"{message}; retrying in {wait:g} s")

    def _refresh(self, key: _Key, generation: int) -> None:
        """Worker: publish the bars since the resume point at once after a reconnect."""
        since = key.resume_from
        if since is None:
            return
        multiplier, span = timespan(key.interval)
        try:
            bars = self._fetch(key.ticker, multiplier, span, since, int(self._wall()) + OPEN_END)
        except CandlewireError as exc:
            logger.warning("polygon: refreshing %s %s: %s", key.ticker, key.interval, exc)
            return
        except Exception:  # a worker's top: log; the key's seed fetches the gap anyway
            logger.exception("polygon: refreshing %s %s failed", key.ticker, key.interval)
            return
        with self._lock:
            seeded = key.state in (_State.LIVE, _State.TRAILING) or key.bar is not None
            if key.generation != generation or seeded or not bars:
                return
            for bar in bars[:-1]:
                self._sink.publish_bar(key.ticker, key.interval, bar, True)
            self._sink.publish_bar(key.ticker, key.interval, bars[-1], False)


def _start(bar: Bar) -> int:
    """A bar's open time (the sort key of streamed seconds)."""
    return bar[0]
