"""The Polygon.io provider (source key ``polygon``): wires its modules together.

* Symbols (``populate.py``): the active tickers of every market in ``POLYGON_MARKETS``
  (``/v3/reference/tickers``; for options the unexpired contracts of
  ``/v3/reference/options/contracts``), read from REST page by page and yielded one at a
  time, so millions of option contracts stream into the database in bounded memory.
* History: REST aggregates, with Polygon's own bar dates and values (US markets open their
  days at New York midnight, weeks on Sunday; crypto and fx at 00:00 UTC).
* Live bars: the per-second aggregates of one WebSocket connection per cluster
  (:mod:`backend.data_providers.polygon.stream`), folded on REST seeds into the forming bar of every
  subscribed interval (:mod:`.live`), so that a bar built live equals its
  REST aggregate.

Configuration: ``POLYGON_API_KEY``, ``POLYGON_API_URL``, ``POLYGON_WS_URL`` (default the
15-minute delayed feed ``wss://delayed.polygon.io``), ``POLYGON_MARKETS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backend.data_providers.polygon.bars import MARKETS, Market, bucket_start, market_of, timespan
from backend.data_providers.polygon.live import OPEN_END, LiveBars
from backend.data_providers.polygon.rest import PolygonRest, dataset_row
from backend.data_providers.polygon.stream import REJECTIONS, PolygonStreams, combined_status
from backend.data_providers.polygon.wire import CLUSTERS, LiveAgg
from backend.errors import ConfigError, UnknownSymbol
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.provider import Provider

logger = logging.getLogger(__name__)

SEED_THREADS = 4
SEED_WAIT = 60.0  # seconds a live seed's REST request may wait out Polygon's 429s


class PolygonProvider(Provider):
    """Serves Polygon.io stocks, options, indices, crypto and fx (source key ``polygon``)."""

    def __init__(self) -> None:
        super().__init__()
        self._rest: PolygonRest | None = None
        self._streams: PolygonStreams | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._live: LiveBars | None = None
        self._clusters: dict[str, tuple[str, str]] = {}  # cluster -> (state, detail)

    # ------------------------------------------------------------------ hooks

    def init(self) -> None:
        key = self.settings.POLYGON_API_KEY.get_secret_value()
        self._rest = PolygonRest(key, self.settings.POLYGON_API_URL)
        self._streams = PolygonStreams(self.settings.POLYGON_WS_URL, key, self)
        self._executor = ThreadPoolExecutor(SEED_THREADS, thread_name_prefix="polygon-seed")
        self._live = LiveBars(self._seed_fetch, self, self._streams, self._executor)
        self.report_status("ok", f"REST {self._rest.base_url}; stream {self._streams.ws_base}")

    def get_dataset(self) -> Iterator[dict[str, Any]]:
        rest = self._rest_client()
        for name in self.settings.POLYGON_MARKETS:
            market = _market(name)
            count = 0
            for ticker in rest.tickers(market):
                row = dataset_row(self.source, market, ticker)
                if row is not None:
                    count += 1
                    yield row
            logger.info(
                "polygon: %d %s %s",
                count,
                market,
                "contracts" if market == "options" else "tickers",
            )

    def get_history(
        self,
        symbol: str,
        interval: str,
        start_time_query: str,
        end_time_query: str,
        count: int,
    ) -> list[Bar]:
        try:
            multiplier, span = timespan(interval)
        except KeyError:
            known = ", ".join(intervals.INTERVALS)
            raise UnknownSymbol(
                f"unknown interval {interval!r} for polygon:{symbol}; known: {known}"
            ) from None
        market = market_of(symbol)
        end = intervals.parse_query_time(end_time_query)
        start = intervals.parse_query_time(start_time_query)
        if start is None:  # no window: the last `count` bars up to `end`
            anchor = int(time.time()) if end is None else end
            start = anchor - intervals.nominal_seconds(interval) * 2 * max(count, 1)
        last = int(time.time()) + OPEN_END if end is None else end
        first = bucket_start(market, interval, start)
        # Past Polygon's per-minute limit the request waits its turn, within the time the
        # hub waits for the answer (then the client hears rate_limited with retry_after).
        deadline = time.monotonic() + self.settings.HISTORY_TIMEOUT * 2 / 3
        bars = self._rest_client().aggregates(symbol, multiplier, span, first, last, deadline)
        bars = [bar for bar in bars if bar[0] >= start]
        if intervals.parse_query_time(start_time_query) is None and count > 0:
            bars = bars[-count:]
        return bars

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self._live_bars().add(symbol, interval)
        # A cluster refused already (auth_failed, max_connections) tells its clients only when
        # its state changes: a chart opened while the refusal lasts hears it now.
        cluster = CLUSTERS[market_of(symbol)]
        state, detail = self._clusters.get(cluster, ("", ""))
        if state in REJECTIONS:
            self.notify(symbol, interval, state, f"polygon {cluster}: {detail}")

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        self._live_bars().remove(symbol, interval)

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        # Quiet tickers send nothing for hours; a dead connection is found by WebSocket pings.
        return None

    def shutdown(self) -> None:
        if self._streams is not None:
            self._streams.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._rest is not None:
            self._rest.close()

    # ------------------------------------------------------------------ LiveBars sink

    def publish_bar(self, ticker: str, interval: str, bar: Bar, final: bool) -> None:
        self.publish(ticker, interval, bar, final=final)

    # ------------------------------------------------------------------ stream handler

    def on_aggregates(self, aggs: list[LiveAgg]) -> None:
        self._live_bars().on_aggregates(aggs)

    def on_connected(self, market: Market, reconnect: bool) -> None:
        if reconnect:
            self._live_bars().on_reconnected(market)

    def on_state(self, cluster: str, state: str, detail: str) -> None:
        previous = self._clusters.get(cluster, ("", ""))[0]
        self._clusters[cluster] = (state, detail)
        self.report_status(*combined_status(self._clusters))
        if state in REJECTIONS and state != previous:
            market = next(m for m, c in CLUSTERS.items() if c == cluster)
            for ticker, interval in self._live_bars().keys(market):
                self.notify(ticker, interval, state, f"polygon {cluster}: {detail}")

    # ------------------------------------------------------------------ internals

    def _seed_fetch(
        self, ticker: str, multiplier: int, timespan: str, start: int, end: int
    ) -> list[Bar]:
        """REST aggregates for a live seed, waiting out 429s for :data:`SEED_WAIT` s."""
        deadline = time.monotonic() + SEED_WAIT
        return self._rest_client().aggregates(ticker, multiplier, timespan, start, end, deadline)

    def _rest_client(self) -> PolygonRest:
        if self._rest is None:
            self.init()
        assert self._rest is not None
        return self._rest

    def _live_bars(self) -> LiveBars:
        if self._live is None:
            self.init()
        assert self._live is not None
        return self._live


def _market(name: str) -> Market:
    for market in MARKETS:
        if market == name:
            return market
    raise ConfigError(f"POLYGON_MARKETS: unknown market {name!r}; known: {', '.join(MARKETS)}")
