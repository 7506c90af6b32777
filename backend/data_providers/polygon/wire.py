"""Polygon's WebSocket protocol as data: clusters, topics, frames. Pure; owns no socket.

Every server frame is a JSON array of events. ``{"ev": "status", "status": ..., "message":
...}`` events carry the handshake (``connected``, ``auth_success``, ``auth_failed``), the
subscription acknowledgements (``success``) and the eviction notice (``max_connections``).
Aggregate events carry a window ``s``..``e`` (ms UTC) and ``o h l c v``; stocks, options and
indices name the ticker in ``sym``, crypto and forex name a ``pair`` (``BTC-USD``, ``EUR/USD``).

Candlewire subscribes to the **per-second** aggregates (``A`` for stocks, options and indices,
``XAS`` crypto, ``CAS`` forex) rather than the per-minute ones: a chart then moves every
second, and second windows nest in every bucket of every interval, so the same events build
all 14 intervals and a bar folded from them equals the REST aggregate of the same span.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from backend.data_providers.polygon.bars import Market
from backend.errors import ConfigError
from backend.model.bars import Bar, to_number

#: The WebSocket cluster (URL path) of each market.
CLUSTERS: dict[Market, str] = {
    "stocks": "stocks",
    "options": "options",
    "indices": "indices",
    "crypto": "crypto",
    "fx": "forex",
}
#: The per-second aggregate event of each cluster.
SECOND_EVENTS: dict[str, str] = {
    "stocks": "A",
    "options": "A",
    "indices": "A",
    "crypto": "XAS",
    "forex": "CAS",
}
_CLUSTER_PATHS = frozenset(CLUSTERS.values())
_FOUR_LETTER_QUOTES = ("USDT", "USDC")
_TOPICS_PER_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A ``status`` event: ``status`` is e.g. ``auth_failed`` or ``max_connections``."""

    status: str
    message: str


@dataclass(frozen=True, slots=True)
class LiveAgg:
    """A per-second aggregate of ``ticker`` (the REST spelling); ``bar[0]`` is its start."""

    ticker: str
    bar: Bar


def stream_url(base: str, cluster: str) -> str:
    """``POLYGON_WS_URL`` plus the cluster path: ``wss://delayed.polygon.io/stocks``.

    The base may be given as Polygon's (and Massive's) documents write stream URLs, with a
    cluster: ``wss://socket.polygon.io/stocks`` is the base ``wss://socket.polygon.io``, so
    every cluster is reached on that host (not ``/stocks/stocks``). Raises
    :class:`ConfigError` for a URL that is not ``ws://`` or ``wss://`` with a host.
    """
    parts = urlsplit(base.strip())
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(
            f"POLYGON_WS_URL: {base!r} must look like wss://delayed.polygon.io (ws:// or wss://)"
        )
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last in _CLUSTER_PATHS:
        path = head
    return f"{parts.scheme}://{parts.netloc}{path}/{cluster}"


def topic(cluster: str, ticker: str) -> str:
    """The per-second aggregate topic of a ticker: ``A.AAPL``, ``XAS.BTC-USD``, ``CAS.EUR/USD``."""
    return f"{SECOND_EVENTS[cluster]}.{ws_symbol(cluster, ticker)}"


def ws_symbol(cluster: str, ticker: str) -> str:
    """The WebSocket spelling of a REST ticker (``X:BTCUSD`` is ``BTC-USD`` on ``crypto``)."""
    if cluster == "crypto" and ticker.startswith("X:"):
        pair = ticker[2:]
        quote = 4 if pair.endswith(_FOUR_LETTER_QUOTES) and len(pair) > 6 else 3
        return f"{pair[:-quote]}-{pair[-quote:]}"
    if cluster == "forex" and ticker.startswith("C:"):
        return f"{ticker[2:5]}/{ticker[5:]}"
    return ticker


def rest_ticker(cluster: str, symbol: str) -> str:
    """The REST ticker of a WebSocket symbol (the inverse of :func:`ws_symbol`)."""
    if cluster == "crypto":
        return "X:" + symbol.replace("-", "").replace("/", "")
    if cluster == "forex":
        return "C:" + symbol.replace("/", "").replace("-", "")
    return symbol


def auth_message(api_key: str) -> str:
    return orjson.dumps({"action": "auth", "params": api_key}).decode()


def subscription_messages(action: str, topics: Iterable[str]) -> Iterator[str]:
    """``subscribe``/``unsubscribe`` messages for ``topics``, a few hundred topics each."""
    pending = sorted(topics)
    for i in range(0, len(pending), _TOPICS_PER_MESSAGE):
        params = ",".join(pending[i : i + _TOPICS_PER_MESSAGE])
        yield orjson.dumps({"action": action, "params": params}).decode()


def parse_frame(cluster: str, frame: str | bytes) -> tuple[list[StatusEvent], list[LiveAgg]]:
    """The status events and per-second aggregates of one server frame.

    Events of other kinds (per-minute aggregates, trades, ...) and malformed events are
    skipped; a frame that is not a JSON array raises ``ValueError``.
    """
    events = orjson.loads(frame)
    if not isinstance(events, list):
        raise ValueError(f"polygon {cluster}: a frame must be a JSON array, got {frame[:80]!r}")
    statuses: list[StatusEvent] = []
    aggs: list[LiveAgg] = []
    second_event = SECOND_EVENTS[cluster]
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("ev")
        if kind == "status":
            statuses.append(
                StatusEvent(str(event.get("status", "")), str(event.get("message", "")))
            )
        elif kind == second_event and (agg := _live_agg(cluster, event)) is not None:
            aggs.append(agg)
    return statuses, aggs


def _live_agg(cluster: str, event: dict[str, object]) -> LiveAgg | None:
    symbol = event.get("pair") if cluster in ("crypto", "forex") else event.get("sym")
    start = event.get("s")
    if not isinstance(symbol, str) or not isinstance(start, int | float):
        return None
    bar: Bar = (
        int(start) // 1000,
        to_number(event.get("o")),
        to_number(event.get("h")),
        to_number(event.get("l")),
        to_number(event.get("c")),
        to_number(event.get("v")),
    )
    return LiveAgg(rest_ticker(cluster, symbol), bar)
