"""Forming bars of the streamed Polygon keys: a REST seed plus the live per-second aggregates.

Owns, per subscribed key ``(ticker, interval)``, the bar being formed and its lifecycle::

    PENDING --first aggregate, second x--> SEEDING --seed fetched--> LIVE
       ^                                      |                        |
       +---- reconnect, seed failure ---------+------------------------+

A bar built live must equal the bar REST returns later. The WebSocket only carries what
happens after we subscribe, so when the first aggregate of a key arrives (second ``x``), a
worker thread fetches from REST the part of ``x``'s bucket before ``x`` (whole days, minutes
and seconds, all closed by then: :func:`.bars.seed_pieces`) and the closed bars
since the key's resume point, while later aggregates wait in a buffer. The bar is the fold of
the seed and the buffer; every later aggregate folds into it, and a new bucket starts fresh.

After a reconnect, every key of that market goes back to PENDING with its current bar as the
resume point: the bars missed meanwhile are fetched at once and again when the key is
seeded, and published oldest first (``final=True`` for the closed ones).

Also counts keys per ticker: the first key of a ticker watches it on the stream, the last one
unwatches it. Thread-safe: hooks (control thread), aggregates (stream thread) and workers
share one lock; REST calls run outside it. Owns no sockets.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from threading import Lock
from typing import Protocol

from backend.data_providers.polygon.bars import (
    Market,
    advance,
    bucket_start,
    fold_bars,
    market_of,
    previous_bucket,
    seed_pieces,
    timespan,
)
from backend.data_providers.polygon.wire import LiveAgg
from backend.errors import CandlewireError
from backend.model.bars import Bar

logger = logging.getLogger(__name__)

OPEN_END = 7 * 86_400  # "up to now": REST windows end this far past the wall clock
RETRY_FIRST, RETRY_MAX = 2.0, 60.0  # seconds between failed seeds of one key


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


class _State(enum.Enum):
    PENDING = "pending"
    SEEDING = "seeding"
    LIVE = "live"


@dataclass(slots=True, eq=False)
class _Key:
    ticker: str
    interval: str
    market: Market
    state: _State = _State.PENDING
    generation: int = 0  # bumped whenever in-flight work about this key must be dropped
    bar: Bar | None = None
    resume_from: int | None = None
    buffer: list[Bar] = field(default_factory=list)
    failures: int = 0
    retry_at: float = 0.0


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
                    key.resume_from = key.bar[0]
                key.generation += 1
                key.state, key.bar, key.buffer, key.retry_at = _State.PENDING, None, [], 0.0
                if key.resume_from is not None:
                    self._executor.submit(self._refresh, key, key.generation)

    def _take(self, key: _Key, bars: list[Bar]) -> None:
        match key.state:
            case _State.LIVE:
                closed, bar = advance(key.market, key.interval, key.bar, bars)
                self._publish(key, closed, bar)
            case _State.SEEDING:
                key.buffer.extend(bars)
            case _State.PENDING if self._clock() >= key.retry_at:
                key.state, key.buffer = _State.SEEDING, list(bars)
                self._executor.submit(self._seed, key, key.generation, bars[0][0])

    def _publish(self, key: _Key, closed: list[Bar], bar: Bar | None) -> None:
        for done in closed:
            self._sink.publish_bar(key.ticker, key.interval, done, True)
        if bar is not None and bar != key.bar:
            self._sink.publish_bar(key.ticker, key.interval, bar, False)
        key.bar = bar

    # ------------------------------------------------------------------ workers

    def _seed(self, key: _Key, generation: int, x: int) -> None:
        """Worker: fetch the seed of ``x``'s bucket and the closed bars before it; go LIVE."""
        try:
            missed = self._missed(key, x)
            seed = self._seed_bar(key, x)
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
            for done in missed:
                self._sink.publish_bar(key.ticker, key.interval, done, True)
            closed, forming = advance(key.market, key.interval, seed, key.buffer)
            key.bar = None
            self._publish(key, closed, forming)
            key.state, key.buffer, key.failures, key.resume_from = _State.LIVE, [], 0, None
        logger.debug("polygon: %s %s is live from %d", key.ticker, key.interval, x)

    def _missed(self, key: _Key, x: int) -> list[Bar]:
        """Closed bars from the resume point (default: the bucket before) to ``x``'s bucket."""
        start = bucket_start(key.market, key.interval, x)
        since = key.resume_from
        if since is None:
            since = previous_bucket(key.market, key.interval, start)
        if since >= start:
            return []
        multiplier, span = timespan(key.interval)
        return self._fetch(key.ticker, multiplier, span, since, start - 1)

    def _seed_bar(self, key: _Key, x: int) -> Bar | None:
        """The bar of ``x``'s bucket up to (not including) second ``x``, from REST."""
        parts: list[Bar] = []
        for piece in seed_pieces(key.market, key.interval, x):
            bars = self._fetch(key.ticker, 1, piece.timespan, piece.start, piece.end - 1)
            parts.extend(bar for bar in bars if piece.start <= bar[0] < piece.end)
        return fold_bars(bucket_start(key.market, key.interval, x), parts)

    def _seed_failed(self, key: _Key, generation: int, exc: Exception) -> None:
        with self._lock:
            if key.generation != generation:
                return
            key.failures += 1
            wait = min(RETRY_MAX, RETRY_FIRST * 2 ** (key.failures - 1))
            key.state, key.buffer, key.retry_at = _State.PENDING, [], self._clock() + wait
        logger.warning("polygon: cannot seed %s %s: %s", key.ticker, key.interval, exc)
        code = getattr(exc, "code", "provider_unavailable")
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
            if key.generation != generation or key.state is _State.LIVE or not bars:
                return
            for bar in bars[:-1]:
                self._sink.publish_bar(key.ticker, key.interval, bar, True)
            self._sink.publish_bar(key.ticker, key.interval, bars[-1], False)
            key.resume_from = bars[-1][0]
