"""A fake Polygon.io server on loopback, driven by the real ``polygon-api-client`` unchanged.

Owns the HTTP and WebSocket surface (a raw ASGI app served by uvicorn in a background
thread), the fake clock, the live aggregate stream, fault injection and the request logs.
The market data itself is :mod:`polygon_data` (pure functions of ticker and time)::

    with FakePolygon(now=datetime(2026, 3, 10, 15, tzinfo=UTC), speed=60) as fake:
        rest = RESTClient(api_key="k", base=fake.base_url)
        ws = WebSocketClient(api_key="k", feed=fake.ws_feed, market="stocks", secure=False)

REST: ``/v3/reference/tickers`` (keyset ``cursor`` paging; ``market`` is one of stocks, crypto,
fx, otc and indices, as on Polygon: options are not tickers there, any other value is a 400),
``/v3/reference/tickers/{T}``, ``/v3/reference/options/contracts`` (the option chain, keyset
``cursor`` paging, ``expired``/``as_of`` against the fake clock's New York date),
``/v3/reference/options/contracts/{O:T}`` and
``/v2/aggs/ticker/{T}/range/{n}/{span}/{from}/{to}``. WebSocket: ``/stocks``, ``/options``,
``/indices`` (``A``/``AM``), ``/crypto`` (``XAS``/``XA``, pair ``BTC-USD``) and ``/forex``
(``CAS``/``CA``, pair ``EUR/USD``). Every server frame is a JSON array. Live events are emitted
once their second (or minute) has closed on the fake clock, so folding them gives exactly the
REST bars of the same span. Run standalone: ``python -m tests.fakes.polygon --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from operator import eq, ge, gt, le, lt
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import uvicorn

from .polygon_data import (
    DEFAULT_TICKERS,
    MARKETS,
    MINUTE_MS,
    NEW_YORK,
    SECOND_MS,
    TIMESPANS,
    Bar,
    BarEngine,
    Bucketing,
    Catalog,
    Market,
    day_zone,
    decimals_of,
    local_date,
    local_midnight_ms,
    market_of,
    merged_rows,
    second_bars,
)

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Payload = dict[str, Any]
Response = tuple[int, Payload, list[tuple[bytes, bytes]]]

#: The ``market`` values ``/v3/reference/tickers`` accepts (Polygon lists no options there).
TICKER_MARKETS = ("stocks", "crypto", "fx", "otc", "indices")
#: The ``sort`` values of ``/v3/reference/options/contracts``.
CONTRACT_SORTS = ("ticker", "underlying_ticker", "expiration_date", "strike_price")
_RANGES = {"": eq, ".lt": lt, ".lte": le, ".gt": gt, ".gte": ge}
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit "
    "for your account. Please contact support at https://polygon.io/contact to increase your "
    "limit."
)


class WsMarket(NamedTuple):
    """A WebSocket cluster: the data market behind it and its second/minute event names."""

    market: Market
    second_ev: str
    minute_ev: str
    symbol_key: str


WS_MARKETS: dict[str, WsMarket] = {
    "stocks": WsMarket("stocks", "A", "AM", "sym"),
    "options": WsMarket("options", "A", "AM", "sym"),
    "indices": WsMarket("indices", "A", "AM", "sym"),
    "crypto": WsMarket("crypto", "XAS", "XA", "pair"),
    "forex": WsMarket("fx", "CAS", "CA", "pair"),
}


def to_ms(when: datetime | date | float) -> int:
    """Epoch ms of an aware datetime, a date (00:00 UTC) or a number of ms."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"naive datetime {when!r}: give a timezone")
        return int(when.timestamp() * 1000)
    if isinstance(when, date):
        return to_ms(datetime(when.year, when.month, when.day, tzinfo=UTC))
    return int(when)


class Clock:
    """Thread-safe market clock: real time by default; settable, speedable, freezable."""

    def __init__(self, start_ms: int | None = None, speed: float = 1.0, frozen: bool = False):
        self._lock = threading.Lock()
        self._anchor_ms = time.time() * 1000 if start_ms is None else float(start_ms)
        self._anchor_mono = time.monotonic()
        self._speed, self._frozen = speed, frozen
        self.jumps = 0  # bumped by set(): the stream restarts there instead of catching up

    def now_ms(self) -> int:
        """The fake 'now' in epoch ms."""
        with self._lock:
            return int(self._now())

    @property
    def frozen(self) -> bool:
        """Whether time stands still until advanced."""
        return self._frozen

    @property
    def speed(self) -> float:
        """Fake seconds per real second."""
        return self._speed

    def set(self, when: datetime | date | float) -> None:
        """Jump to ``when`` (the live stream skips, it does not replay the gap)."""
        with self._lock:
            self._rebase(to_ms(when))
            self.jumps += 1

    def advance(self, seconds: float) -> None:
        """Move forward ``seconds``; the live stream replays the seconds passed over."""
        with self._lock:
            self._rebase(self._now() + seconds * 1000)

    def set_speed(self, speed: float) -> None:
        """Run at ``speed`` fake seconds per real second from now on."""
        with self._lock:
            self._rebase(self._now())
            self._speed = speed

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart, with ``False``) the flow of time."""
        with self._lock:
            self._rebase(self._now())
            self._frozen = frozen

    def _now(self) -> float:
        if self._frozen:
            return self._anchor_ms
        return self._anchor_ms + (time.monotonic() - self._anchor_mono) * 1000 * self._speed

    def _rebase(self, ms: float) -> None:
        self._anchor_ms, self._anchor_mono = ms, time.monotonic()


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One logged REST request."""

    path: str
    query: dict[str, str]
    api_key: str | None
    status: int


@dataclass(frozen=True, slots=True)
class WsFrame:
    """One logged frame received from a WebSocket client."""

    market: str
    connection: int
    text: str


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A snapshot of one open WebSocket connection."""

    id: int
    market: str
    api_key: str | None
    topics: frozenset[str]


class _Frame(NamedTuple):
    text: str
    is_data: bool


class _Close(NamedTuple):
    code: int
    reason: str


_ABORT = object()


@dataclass(eq=False)
class _Conn:
    id: int
    market: str
    abort: Callable[[], bool]
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    key: str | None = None
    subs: dict[str, set[str]] = field(default_factory=dict)  # event -> tickers or "*"
    topics: set[str] = field(default_factory=set)

    def status(self, status: str, message: str) -> None:
        self.outbox.put_nowait(_Frame(_dumps([_status(status, message)]), False))


def _status(status: str, message: str) -> Payload:
    return {"ev": "status", "status": status, "message": message}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _encode_cursor(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(_dumps(state).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError as exc:
        raise _BadRequest(f"invalid cursor {cursor!r}") from exc
    if not isinstance(state, dict):
        raise _BadRequest(f"invalid cursor {cursor!r}")
    return state


def _aborter(send: Send) -> Callable[[], bool]:
    """Abort the TCP connection under an ASGI ``send`` (uvicorn passes a bound method)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)

    def abort() -> bool:
        if transport is None:
            return False
        transport.abort()
        return True

    return abort


def ws_symbol(path: str, ticker: str) -> str:
    """The WebSocket spelling of a ticker: ``X:BTCUSD`` is ``BTC-USD``, ``C:EURUSD`` ``EUR/USD``."""
    if path == "crypto" and ticker.startswith("X:"):
        return f"{ticker[2:-3]}-{ticker[-3:]}"
    if path == "forex" and ticker.startswith("C:"):
        return f"{ticker[2:5]}/{ticker[5:]}"
    return ticker


def ws_ticker(path: str, symbol: str) -> str:
    """The REST ticker of a WebSocket symbol (the inverse of :func:`ws_symbol`)."""
    if path == "crypto" and not symbol.startswith("X:") and symbol != "*":
        return "X:" + symbol.replace("-", "").replace("/", "")
    if path == "forex" and not symbol.startswith("C:") and symbol != "*":
        return "C:" + symbol.replace("/", "").replace("-", "")
    return symbol


class _BadRequest(Exception):
    pass


# ----------------------------------------------------------------------------- REST


class _Rest:
    """The REST endpoints: pure request -> response functions over the fake's state."""

    def __init__(self, fake: FakePolygon) -> None:
        self.fake = fake

    def handle(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Response:
        key = query.pop("apiKey", None)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        forced = self.fake._take_rest_failure()
        if forced is not None:
            response = forced
        elif not self.fake._key_ok(key):
            response = (
                401,
                {"status": "ERROR", "request_id": _rid(), "error": "Unknown API Key"},
                [],
            )
        else:
            response = self._route(path, query)
        self.fake._log_rest(RestRequest(path, dict(query), key, response[0]))
        return response

    def _route(self, path: str, query: dict[str, str]) -> Response:
        try:
            match path.strip("/").split("/"):
                case ["v3", "reference", "tickers"]:
                    return 200, self.tickers(query), []
                case ["v3", "reference", "tickers", ticker]:
                    return self.ticker_details(ticker)
                case ["v3", "reference", "options", "contracts"]:
                    return 200, self.contracts(query), []
                case ["v3", "reference", "options", "contracts", ticker]:
                    return self.contract_details(ticker)
                case ["v2", "aggs", "ticker", ticker, "range", mult, timespan, frm, to]:
                    return 200, self.aggs(ticker, mult, timespan, frm, to, query), []
        except _BadRequest as exc:
            return 400, {"status": "ERROR", "request_id": _rid(), "error": str(exc)}, []
        return 404, {"status": "NOT_FOUND", "request_id": _rid(), "message": "Not Found"}, []

    def tickers(self, query: dict[str, str]) -> Payload:
        state: dict[str, Any] = (
            _decode_cursor(query["cursor"]) if "cursor" in query else {"params": query}
        )
        params: dict[str, str] = state["params"]
        limit = min(max(_int(params.get("limit", "100"), "limit"), 1), 1000)
        descending = params.get("order", "asc") == "desc"
        market = params.get("market")
        if market is not None and market not in TICKER_MARKETS:
            raise _BadRequest(
                f"invalid market {market!r}: must be one of {', '.join(TICKER_MARKETS)}"
            )
        catalogs = (
            self.fake._catalogs_for(market)
            if market is not None
            else [c for c in self.fake._catalogs_for(None) if c.market != "options"]
        )
        rows = (
            r
            for r in merged_rows(catalogs, state.get("after"), descending)
            if _row_matches(r, params)
        )
        page = list(itertools.islice(rows, limit + 1))
        body: Payload = {
            "results": page[:limit],
            "status": "OK",
            "request_id": _rid(),
            "count": len(page[:limit]),
        }
        if len(page) > limit:
            cursor = _encode_cursor({"params": params, "after": page[limit - 1]["ticker"]})
            body["next_url"] = f"{self.fake.base_url}/v3/reference/tickers?cursor={cursor}"
        return body

    def ticker_details(self, ticker: str) -> Response:
        if market_of(ticker) != "options":  # contracts are under /v3/reference/options
            for catalog in self.fake._catalogs_for(market_of(ticker)):
                if (i := catalog.index_of(ticker)) is not None:
                    body = {"results": catalog.row_at(i), "status": "OK", "request_id": _rid()}
                    return 200, body, []
        return (
            404,
            {"status": "NOT_FOUND", "request_id": _rid(), "message": "Ticker not found."},
            [],
        )

    def contracts(self, query: dict[str, str]) -> Payload:
        """``/v3/reference/options/contracts``: the chain in ``sort`` order, one page.

        ``sort=ticker`` (the default) pages lazily by keyset (a million contracts are never
        built); the other sorts order every matching contract, so they suit small chains.
        ``expired`` (default false) keeps contracts expiring before (true) or on or after
        (false) ``as_of``, by default the fake clock's New York date when paging began.
        """
        state: dict[str, Any] = (
            _decode_cursor(query["cursor"]) if "cursor" in query else {"params": query}
        )
        params: dict[str, str] = state["params"]
        limit = min(max(_int(params.get("limit", "10"), "limit"), 1), 1000)
        sort, order = params.get("sort", "ticker"), params.get("order", "asc")
        if sort not in CONTRACT_SORTS:
            raise _BadRequest(f"invalid sort {sort!r}: must be one of {', '.join(CONTRACT_SORTS)}")
        if order not in ("asc", "desc"):
            raise _BadRequest(f"invalid order {order!r}: must be one of asc, desc")
        today = local_date(self.fake.clock.now_ms(), NEW_YORK).isoformat()
        state.setdefault("as_of", _iso_date(params.get("as_of", today), "as_of"))
        keep = _contract_filter(params, state["as_of"])
        low = high = None
        if root := params.get("underlying_ticker"):  # OCC tickers: O:{root}{yymmdd}...
            low, high = f"O:{root}0", f"O:{root}:"
        descending = order == "desc"
        catalogs = self.fake._catalogs_for("options")
        if sort == "ticker":
            after = state.get("after")
            rows = (r for r in merged_rows(catalogs, after, descending, low, high) if keep(r))
            page = list(itertools.islice(rows, limit + 1))
            resume: dict[str, Any] = {"after": page[-2]["ticker"]} if len(page) > limit else {}
        else:
            ordered = sorted(
                (r for r in merged_rows(catalogs, None, False, low, high) if keep(r)),
                key=lambda r: (r[sort], r["ticker"]),
                reverse=descending,
            )
            offset = int(state.get("offset", 0))
            page = ordered[offset : offset + limit + 1]
            resume = {"offset": offset + limit}
        body: Payload = {"results": page[:limit], "status": "OK", "request_id": _rid()}
        if len(page) > limit:
            cursor = _encode_cursor({"params": params, "as_of": state["as_of"]} | resume)
            body["next_url"] = (
                f"{self.fake.base_url}/v3/reference/options/contracts?cursor={cursor}"
            )
        return body

    def contract_details(self, ticker: str) -> Response:
        """``/v3/reference/options/contracts/{options_ticker}``."""
        for catalog in self.fake._catalogs_for("options"):
            if (i := catalog.index_of(ticker)) is not None:
                return 200, {"results": catalog.row_at(i), "status": "OK", "request_id": _rid()}, []
        return (
            404,
            {"status": "NOT_FOUND", "request_id": _rid(), "message": "Contract not found."},
            [],
        )

    def aggs(
        self, ticker: str, mult: str, timespan: str, frm: str, to: str, query: dict[str, str]
    ) -> Payload:
        state: dict[str, Any] = (
            _decode_cursor(query["cursor"])
            if "cursor" in query
            else {
                "adjusted": query.get("adjusted", "true").lower() != "false",
                "sort": query.get("sort", "asc"),
                "limit": min(max(_int(query.get("limit", "5000"), "limit"), 1), 50_000),
            }
        )
        multiplier = _int(mult, "multiplier")
        if timespan not in TIMESPANS or multiplier < 1:
            raise _BadRequest(f"invalid timespan {mult}/{timespan}; known: {', '.join(TIMESPANS)}")
        zone = day_zone(market_of(ticker))
        start, end = _parse_time(frm, zone, False), _parse_time(to, zone, True)
        body: Payload = {
            "ticker": ticker,
            "queryCount": 0,
            "resultsCount": 0,
            "adjusted": state["adjusted"],
            "status": "OK",
            "request_id": _rid(),
        }
        self.fake._rest_wait()
        if end < start or not self.fake._known(ticker):
            return body
        bucketing = Bucketing(market_of(ticker), multiplier, timespan, state.get("anchor", start))
        span = [bucketing.start_of(start), bucketing.end_of(bucketing.start_of(end))]
        descending = state["sort"] == "desc"
        if "pos" in state:
            span[1 if descending else 0] = state["pos"]
        page = self.fake.engine.page(
            ticker,
            bucketing,
            (span[0], span[1]),
            self.fake._rest_now_ms(),
            descending,
            state["limit"],
        )
        body["queryCount"], body["resultsCount"] = page.scanned, len(page.bars)
        if page.bars:
            body["results"] = [b.to_rest(decimals_of(ticker)) for b in page.bars]
            body["count"] = len(page.bars)
        if page.resume_ms is not None:
            cursor = _encode_cursor(state | {"pos": page.resume_ms, "anchor": bucketing.anchor_ms})
            body["next_url"] = (
                f"{self.fake.base_url}/v2/aggs/ticker/{ticker}/range/{mult}/"
                f"{timespan}/{frm}/{to}?cursor={cursor}"
            )
        return body


def _rid() -> str:
    return uuid.uuid4().hex


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise _BadRequest(f"{name} must be an integer, got {text!r}") from exc


def _parse_time(text: str, zone: tzinfo, end: bool) -> int:
    """A ``from``/``to`` path value: epoch ms, or a local date (``to`` covers the whole day)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise _BadRequest(f"invalid date {text!r}; use YYYY-MM-DD or epoch ms") from exc
    if end:
        return local_midnight_ms(date.fromordinal(day.toordinal() + 1), zone) - 1
    return local_midnight_ms(day, zone)


def _iso_date(text: str, name: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise _BadRequest(f"{name} must be a date YYYY-MM-DD, got {text!r}") from exc


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise _BadRequest(f"{name} must be a number, got {text!r}") from exc


def _contract_filter(params: Mapping[str, str], as_of: str) -> Callable[[Payload], bool]:
    """The predicate of the contract query ``params`` (parsed once, applied per row)."""
    expired = params.get("expired", "false").lower()
    if expired not in ("true", "false"):
        raise _BadRequest(f"expired must be true or false, got {params['expired']!r}")
    kind = params.get("contract_type")
    if kind is not None and kind not in ("call", "put"):
        raise _BadRequest(f"invalid contract_type {kind!r}: must be one of call, put")
    checks: list[tuple[str, Callable[[Any, Any], bool], Any]] = [
        ("expiration_date", lt if expired == "true" else ge, as_of)
    ]
    if kind is not None:
        checks.append(("contract_type", eq, kind))
    if "ticker" in params:
        checks.append(("ticker", eq, params["ticker"]))
    for name, parse in (
        ("underlying_ticker", lambda text, _: text),
        ("expiration_date", _iso_date),
        ("strike_price", _number),
    ):
        for suffix, op in _RANGES.items():
            if (text := params.get(name + suffix)) is not None:
                checks.append((name, op, parse(text, name + suffix)))

    def keep(row: Payload) -> bool:
        return all(
            (value := row.get(key)) is not None and op(value, bound) for key, op, bound in checks
        )

    return keep


def _row_matches(row: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    ticker = str(row["ticker"])
    checks = (
        ("type", lambda v: row.get("type") == v),
        ("active", lambda v: bool(row.get("active", True)) == (v.lower() != "false")),
        ("exchange", lambda v: row.get("primary_exchange") == v),
        ("ticker", lambda v: ticker == v),
        ("ticker.gt", lambda v: ticker > v),
        ("ticker.gte", lambda v: ticker >= v),
        ("ticker.lt", lambda v: ticker < v),
        ("ticker.lte", lambda v: ticker <= v),
        ("search", lambda v: v.lower() in f"{ticker} {row.get('name', '')}".lower()),
    )
    merged = {"active": "true"} | dict(params)
    return all(check(merged[name]) for name, check in checks if name in merged)


# ----------------------------------------------------------------------------- server


class FakePolygon:
    """The fake Polygon.io server; see the module docstring. All public methods are thread-safe.

    Args:
        api_keys: keys accepted by REST and WebSocket auth; ``None`` accepts any non-empty key.
        host, port: where to listen; port 0 picks a free port.
        tickers: per market (``stocks``, ``options``, ``indices``, ``crypto``, ``fx``) a list of
            tickers or partial ticker rows, replacing that market's default list.
        stock_count: add this many generated stocks (``AAAAA``, ``AAAAB``, ...).
        option_count: size of the generated option chain (``/v3/reference/options/contracts``),
            built lazily page by page; its 12 monthly expiries start at the clock's start.
        now: start of the fake clock (aware datetime or epoch ms); default the real time.
        speed: fake seconds per real second; ``frozen`` stops time until :meth:`advance`.
        always_open: every market trades around the clock (REST and stream alike).
        count_minutes_for_days: ``limit`` counts minute bars for day and longer spans too
            (default: day bars, as Polygon does).
        max_catchup_seconds: the most seconds of live events replayed after a clock advance.
        wildcard_limit: how many tickers of a market an ``A.*`` subscription streams.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = ("k",),
        host: str = "127.0.0.1",
        port: int = 0,
        tickers: Mapping[str, Iterable[str | Mapping[str, Any]]] | None = None,
        stock_count: int = 0,
        option_count: int = 200,
        now: datetime | float | None = None,
        speed: float = 1.0,
        frozen: bool = False,
        always_open: bool = False,
        count_minutes_for_days: bool = False,
        max_catchup_seconds: int = 3600,
        wildcard_limit: int = 50,
        greets: bool = True,
    ) -> None:
        self._keys = None if api_keys is None else frozenset(api_keys)
        self.greets = greets  # False: no ``connected`` status on accept, as some relays do
        self.host, self.port = host, port
        self.clock = Clock(None if now is None else to_ms(now), speed, frozen)
        self.engine = BarEngine(always_open, count_minutes_for_days)
        self.max_catchup_seconds, self.wildcard_limit = max_catchup_seconds, wildcard_limit
        self._catalogs = self._build_catalogs(tickers or {}, stock_count, option_count)
        self._lock = threading.Lock()
        self._rest_log: list[RestRequest] = []
        self._ws_log: list[WsFrame] = []
        self._opened: Counter[str] = Counter()
        self._auths: Counter[str] = Counter()
        self._rest_failures: list[Response] = []
        self._rest_lag_ms = 0
        self._rest_delay = 0.0
        self._auth_fails = False
        self._auth_pending_every: float | None = None  # answer auth with endless auth_pending
        self._pending_tasks: set[asyncio.Task[None]] = set()
        self._silent_until = 0.0
        self._conns: dict[int, _Conn] = {}
        self._by_key: dict[tuple[str, str], _Conn] = {}
        self._ids = itertools.count(1)
        self._rest = _Rest(self)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``RESTClient(base=...)``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_feed(self) -> str:
        """``127.0.0.1:PORT``, for ``WebSocketClient(feed=..., secure=False)``."""
        return f"{self.host}:{self.port}"

    def start(self) -> FakePolygon:
        """Bind, start the server thread and wait until it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fake-polygon")
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            self.stop()
            raise RuntimeError(f"fake Polygon failed to start on {self.base_url}") from self._error
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and join its thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._server is not None:
            with contextlib.suppress(Exception):
                self._call(self._close_all(lambda c: c.outbox.put_nowait(_Close(1001, ""))))
            self._server.should_exit = True
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> FakePolygon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._main(sock))
        except BaseException as exc:  # recorded for start(); the thread must not die loudly
            self._error = exc
        finally:
            sock.close()
            self._ready.set()

    async def _main(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            log_level=None,
            ws="websockets-sansio",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        streaming = asyncio.create_task(self._stream())
        try:
            # uvicorn exposes readiness only as a flag
            while not self._server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            if not serving.done():
                self._ready.set()
            await serving
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming

    def _call(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` on the server loop from another thread and wait for it."""
        assert self._loop is not None, "the fake is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- clock and calendar

    def now_ms(self) -> int:
        """The fake clock's 'now' in epoch ms."""
        return self.clock.now_ms()

    def set_time(self, when: datetime | float) -> None:
        """Jump the clock to ``when``; the stream resumes there."""
        self.clock.set(when)

    def advance(self, seconds: float) -> None:
        """Move the clock forward; the stream emits every second passed over."""
        self.clock.advance(seconds)

    def set_speed(self, speed: float) -> None:
        """Fake seconds per real second."""
        self.clock.set_speed(speed)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (``False``: restart) the clock."""
        self.clock.freeze(frozen)

    def set_always_open(self, always_open: bool) -> None:
        """Pretend every market trades around the clock (REST and stream)."""
        self.engine.always_open = always_open

    def aggregates(
        self,
        ticker: str,
        multiplier: int,
        timespan: str,
        start: datetime | float,
        end: datetime | float,
    ) -> list[Payload]:
        """The REST ``results`` for buckets whose start lies in ``[start, end]``, unpaged."""
        bucketing = Bucketing(market_of(ticker), multiplier, timespan, to_ms(start))
        span = (bucketing.start_of(to_ms(start)), bucketing.end_of(bucketing.start_of(to_ms(end))))
        page = self.engine.page(ticker, bucketing, span, self.now_ms(), limit=1 << 62)
        return [b.to_rest(decimals_of(ticker)) for b in page.bars]

    # -- fault injection

    def drop_connections(self, market: str | None = None) -> None:
        """Abort WebSocket connections without a close frame (clients see 1006)."""
        self._call(self._close_all(lambda c: c.outbox.put_nowait(_ABORT), market))

    def force_max_connections(self, market: str | None = None) -> None:
        """Send ``max_connections`` to current connections and close them with 1008."""
        self._call(self._close_all(self._evict, market))

    def go_silent(self, seconds: float) -> None:
        """Send nothing for ``seconds``: data frames are dropped, status frames delayed."""
        with self._lock:
            self._silent_until = time.monotonic() + seconds

    def fail_auth(self, enabled: bool = True) -> None:
        """Make every WebSocket auth fail (``auth_failed``) until called with ``False``."""
        with self._lock:
            self._auth_fails = enabled

    def stall_auth(self, every: float | None) -> None:
        """Answer every WebSocket auth with an ``auth_pending`` status every ``every``
        seconds and never a verdict (``None``: answer normally again)."""
        with self._lock:
            self._auth_pending_every = every

    def fail_rest(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: int | None = None,
        body_status: str = "ERROR",
    ) -> None:
        """Answer the next ``times`` REST requests with ``status`` (urllib3 retries 429/5xx)
        and a body whose ``status`` is ``body_status`` (Polygon answers some failures with
        200 and ``"status": "ERROR"``)."""
        headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
        body = {"status": body_status, "request_id": _rid(), "error": f"injected {status}"}
        with self._lock:
            self._rest_failures.extend([(status, body, headers)] * times)

    def lag_rest(self, seconds: float) -> None:
        """Make REST aggregates trail the stream: they show the market as of ``seconds`` (fake
        time) ago, as a REST index that has not yet caught up with the feed does."""
        with self._lock:
            self._rest_lag_ms = int(seconds * SECOND_MS)

    def delay_rest(self, seconds: float) -> None:
        """Answer every aggregates request ``seconds`` (real time) late."""
        with self._lock:
            self._rest_delay = seconds

    # -- observation

    @property
    def rest_requests(self) -> list[RestRequest]:
        """REST requests received, oldest first."""
        with self._lock:
            return list(self._rest_log)

    @property
    def ws_frames(self) -> list[WsFrame]:
        """WebSocket frames received from clients, oldest first."""
        with self._lock:
            return list(self._ws_log)

    @property
    def connections_opened(self) -> dict[str, int]:
        """WebSocket connections accepted per cluster (``stocks``, ``crypto``, ``forex``, ...)."""
        with self._lock:
            return dict(self._opened)

    @property
    def auth_attempts(self) -> dict[str, int]:
        """WebSocket auth messages received per cluster."""
        with self._lock:
            return dict(self._auths)

    def connections(self, market: str | None = None) -> list[ConnectionInfo]:
        """The open WebSocket connections (optionally of one cluster)."""
        with self._lock:
            return [
                ConnectionInfo(c.id, c.market, c.key, frozenset(c.topics))
                for c in self._conns.values()
                if market in (None, c.market)
            ]

    def clear_logs(self) -> None:
        """Forget logged requests and frames and reset the counters."""
        with self._lock:
            self._rest_log.clear()
            self._ws_log.clear()
            self._opened.clear()
            self._auths.clear()

    # -- internals shared with the REST handler

    def _key_ok(self, key: str | None) -> bool:
        return bool(key) and (self._keys is None or key in self._keys)

    def _take_rest_failure(self) -> Response | None:
        with self._lock:
            return self._rest_failures.pop(0) if self._rest_failures else None

    def _rest_now_ms(self) -> int:
        """'Now' as REST aggregates see it (the clock, less any injected lag)."""
        with self._lock:
            lag = self._rest_lag_ms
        return self.clock.now_ms() - lag

    def _rest_wait(self) -> None:
        with self._lock:
            delay = self._rest_delay
        if delay > 0:
            time.sleep(delay)  # a slow REST answer (this runs on a worker thread)

    def _log_rest(self, request: RestRequest) -> None:
        with self._lock:
            self._rest_log.append(request)

    def _build_catalogs(
        self,
        tickers: Mapping[str, Iterable[str | Mapping[str, Any]]],
        stock_count: int,
        option_count: int,
    ) -> dict[str, list[Catalog]]:
        given = {("fx" if k == "forex" else k): v for k, v in tickers.items()}
        catalogs: dict[str, list[Catalog]] = {}
        for market in MARKETS:
            rows = given.get(market, DEFAULT_TICKERS.get(market))
            catalogs[market] = [] if rows is None else [Catalog.from_rows(market, rows)]
        if "options" not in given:
            first_day = local_date(self.clock.now_ms(), NEW_YORK)
            catalogs["options"] = [Catalog.option_chain(option_count, first_day)]
        if stock_count:
            catalogs["stocks"].append(Catalog.synthetic_stocks(stock_count))
        return catalogs

    def _catalogs_for(self, market: str | None) -> list[Catalog]:
        if market is None:
            return [c for cs in self._catalogs.values() for c in cs]
        return self._catalogs.get("fx" if market == "forex" else market, [])

    def _known(self, ticker: str) -> bool:
        return any(c.index_of(ticker) is not None for c in self._catalogs_for(market_of(ticker)))

    # -- ASGI

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, send: Send) -> None:
        query = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        extra: list[tuple[bytes, bytes]] = []
        if scope["method"] != "GET":
            status, body = 405, {"status": "ERROR", "error": "Method Not Allowed"}
        else:
            status, body, extra = await asyncio.to_thread(
                self._rest.handle, scope["path"], query, headers
            )
        data = _dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].strip("/")
        await receive()  # websocket.connect
        if path not in WS_MARKETS:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        conn = _Conn(next(self._ids), path, _aborter(send))
        with self._lock:
            self._conns[conn.id] = conn
            self._opened[path] += 1
        writer = asyncio.create_task(self._write(conn, send))
        if self.greets:
            conn.status("connected", "Connected Successfully")
        try:
            await self._read(conn, receive)
        finally:
            self._forget(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.pop(conn.id, None)
            if conn.key is not None and self._by_key.get((conn.market, conn.key)) is conn:
                del self._by_key[(conn.market, conn.key)]

    async def _read(self, conn: _Conn, receive: Receive) -> None:
        while (message := await receive())["type"] != "websocket.disconnect":
            text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            with self._lock:
                self._ws_log.append(WsFrame(conn.market, conn.id, text))
            self._on_message(conn, text)

    async def _write(self, conn: _Conn, send: Send) -> None:
        with contextlib.suppress(OSError):  # uvicorn's ClientDisconnected is an OSError
            while True:
                item = await conn.outbox.get()
                if item is _ABORT:
                    if conn.abort():
                        return
                    item = _Close(1011, "dropped")  # no transport to abort: an error close
                if isinstance(item, _Close):
                    await send(
                        {"type": "websocket.close", "code": item.code, "reason": item.reason}
                    )
                    return
                if (quiet := self._silent_until - time.monotonic()) > 0:
                    if item.is_data:
                        continue
                    await asyncio.sleep(quiet)
                await send({"type": "websocket.send", "text": item.text})

    def _on_message(self, conn: _Conn, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            conn.status("error", f"invalid JSON: {text[:80]!r}")
            return
        if not isinstance(message, dict):
            conn.status("error", "expected a JSON object with 'action' and 'params'")
            return
        action, params = message.get("action"), str(message.get("params", ""))
        match action:
            case "auth":
                self._auth(conn, params)
            case "subscribe" | "unsubscribe" if conn.key is None:
                conn.status("error", "not authorized; send auth first")
            case "subscribe" | "unsubscribe":
                self._subscribe(conn, params, action == "subscribe")
            case _:
                conn.status("error", f"unknown action {action!r}")

    def _auth(self, conn: _Conn, key: str) -> None:
        with self._lock:
            self._auths[conn.market] += 1
            every = self._auth_pending_every
        if every is not None:
            task = asyncio.get_running_loop().create_task(self._auth_pending(conn, every))
            self._pending_tasks.add(task)
            task.add_done_callback(self._pending_tasks.discard)
            return
        with self._lock:
            ok = not self._auth_fails and self._key_ok(key)
            old = self._by_key.get((conn.market, key)) if ok else None
            if ok:
                conn.key, self._by_key[(conn.market, key)] = key, conn
        if not ok:
            conn.status("auth_failed", "authentication failed")
            conn.outbox.put_nowait(_Close(1008, "authentication failed"))
            return
        if old is not None and old is not conn:
            self._evict(old)
        conn.status("auth_success", "authenticated")

    async def _auth_pending(self, conn: _Conn, every: float) -> None:
        """``auth_pending`` every ``every`` seconds while the connection is open."""
        while True:
            with self._lock:
                if conn.id not in self._conns:
                    return
            conn.status("auth_pending", "authentication pending")
            await asyncio.sleep(every)

    @staticmethod
    def _evict(conn: _Conn) -> None:
        conn.status("max_connections", MAX_CONNECTIONS_MESSAGE)
        conn.outbox.put_nowait(_Close(1008, "max_connections"))

    def _subscribe(self, conn: _Conn, params: str, add: bool) -> None:
        for topic in filter(None, (p.strip() for p in params.split(","))):
            ev, dot, symbol = topic.partition(".")
            if not dot or not symbol:
                conn.status("error", f"invalid subscription {topic!r}; expected EV.SYMBOL")
                continue
            tickers = conn.subs.setdefault(ev, set())
            with self._lock:
                if add:
                    tickers.add(ws_ticker(conn.market, symbol))
                    conn.topics.add(topic)
                else:
                    tickers.discard(ws_ticker(conn.market, symbol))
                    conn.topics.discard(topic)
            verb = "subscribed to" if add else "unsubscribed to"
            conn.status("success", f"{verb}: {topic}")

    async def _close_all(self, act: Callable[[_Conn], None], market: str | None = None) -> None:
        with self._lock:
            conns = [c for c in self._conns.values() if market in (None, c.market)]
        for conn in conns:
            act(conn)
        await asyncio.sleep(0.05)  # let the writers act before returning to the caller

    # -- live stream

    async def _stream(self) -> None:
        cursor, jumps = -1, -1
        while True:
            now = self.clock.now_ms()
            target = now // SECOND_MS  # seconds before `target` have closed
            if jumps != self.clock.jumps or cursor > target or not self._conns:
                cursor, jumps = target, self.clock.jumps
            cursor = max(cursor, target - self.max_catchup_seconds)
            while cursor < target:
                try:
                    self._emit_second(cursor)
                except Exception:  # one bad second must not end the stream
                    logger.exception("fake Polygon: emitting second %d failed", cursor)
                cursor += 1
                if cursor % 60 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(self._pause(now))

    def _pause(self, now: int) -> float:
        if self.clock.frozen or self.clock.speed <= 0:
            return 0.02
        left = (now // SECOND_MS + 1) * SECOND_MS - now
        return min(0.05, max(0.002, left / 1000 / self.clock.speed))

    def _emit_second(self, second: int) -> None:
        cache: dict[tuple[str, str, str], Payload | None] = {}
        closes_minute = (second + 1) % 60 == 0
        with self._lock:
            conns = [c for c in self._conns.values() if c.key is not None and c.subs]
        for conn in conns:
            spec = WS_MARKETS[conn.market]
            frame = self._events(conn, spec.second_ev, second * SECOND_MS, SECOND_MS, cache)
            if closes_minute:
                start = (second - 59) * SECOND_MS
                frame += self._events(conn, spec.minute_ev, start, MINUTE_MS, cache)
            if frame:
                conn.outbox.put_nowait(_Frame(_dumps(frame), True))

    def _events(
        self,
        conn: _Conn,
        ev: str,
        start: int,
        span: int,
        cache: dict[tuple[str, str, str], Payload | None],
    ) -> list[Payload]:
        events = []
        for ticker in sorted(self._wanted(conn, ev)):
            key = (conn.market, ev, ticker)
            if key not in cache:
                cache[key] = self._event(conn.market, ev, ticker, start, span)
            if (event := cache[key]) is not None:
                events.append(event)
        return events

    def _wanted(self, conn: _Conn, ev: str) -> set[str]:
        with self._lock:
            tickers = set(conn.subs.get(ev, ()))
        if "*" in tickers:
            tickers.discard("*")
            market = WS_MARKETS[conn.market].market
            for catalog in self._catalogs[market]:
                limit = min(catalog.size, self.wildcard_limit)
                tickers.update(catalog.ticker_at(i) for i in range(limit))
        return tickers

    def _event(self, path: str, ev: str, ticker: str, start: int, span: int) -> Payload | None:
        spec = WS_MARKETS[path]
        if market_of(ticker) != spec.market or not self._known(ticker):
            return None
        if not self.engine.windows(ticker, start, start + span):
            return None
        bar = self._bar_at(ticker, start, span)
        if bar is None:
            return None
        day = self.engine.day_so_far(ticker, start + span)
        return _event_payload(
            spec, ev, ws_symbol(path, ticker), bar, day, decimals_of(ticker), span
        )

    def _bar_at(self, ticker: str, start: int, span: int) -> Bar | None:
        if span == MINUTE_MS:
            return self.engine.minute(ticker, start // MINUTE_MS, start + span)
        return next((b for b in second_bars(ticker, start // MINUTE_MS) if b.t == start), None)


def _event_payload(
    spec: WsMarket, ev: str, symbol: str, bar: Bar, day: Bar | None, decimals: int, span: int
) -> Payload:
    scale = 10**decimals
    payload: Payload = {"ev": ev, spec.symbol_key: symbol, "v": bar.v}
    if spec.symbol_key == "sym" and day is not None:
        payload |= {"av": day.v, "op": day.op / scale}
    payload |= {
        "vw": bar.w / (bar.v * scale),
        "o": bar.op / scale,
        "c": bar.cl / scale,
        "h": bar.hi / scale,
        "l": bar.lo / scale,
    }
    if spec.symbol_key == "sym" and day is not None:
        payload["a"] = day.w / (day.v * scale)
    return payload | {"z": max(1, round(bar.v / bar.n)), "s": bar.t, "e": bar.t + span}


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted."""
    parser = argparse.ArgumentParser(description="Run the fake Polygon.io server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", action="append", help="accepted API key (repeatable; default k)")
    parser.add_argument("--now", help="start of the fake clock, ISO 8601 with offset")
    parser.add_argument("--speed", type=float, default=1.0, help="fake seconds per real second")
    parser.add_argument("--always-open", action="store_true", help="every market trades 24/7")
    parser.add_argument("--option-count", type=int, default=200)
    parser.add_argument("--stock-count", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakePolygon(
        api_keys=args.key or ["k"],
        host=args.host,
        port=args.port,
        speed=args.speed,
        now=None if args.now is None else datetime.fromisoformat(args.now),
        always_open=args.always_open,
        option_count=args.option_count,
        stock_count=args.stock_count,
    )
    with fake:
        print(
            f"fake Polygon: REST {fake.base_url}  WebSocket ws://{fake.ws_feed}/<market>",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
