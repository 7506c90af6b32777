"""A second fake Polygon.io (Massive), written from Polygon's published documents only.

It shares nothing with ``tests/fakes/polygon.py`` (the suite's own fake) or with the
provider: where the two fakes differ, the provider is tried on what the documents allow.
REST and the WebSocket clusters are served by one aiohttp app on 127.0.0.1 (a free port).

What the documents say, and this fake does:

* Authentication: the key as ``apiKey`` query parameter or ``Authorization: Bearer``; a
  missing or unknown key is HTTP 401 ``{"status": "ERROR", "error": "..."}``; data the
  plan does not include is HTTP 403 ``{"status": "NOT_AUTHORIZED", "message": "You are not
  entitled to this data. Please upgrade your plan at https://polygon.io/pricing"}``.
* Past the plan's requests per minute: HTTP 429 with Polygon's ``ERROR`` body, with or
  without ``Retry-After`` (:meth:`DocsPolygon.fault`).
* ``/v3/reference/tickers``: pages of ``results`` with a top-level ``next_url`` while more
  remain (absent on the last page): an absolute URL on the API host with an opaque
  ``cursor`` and, as the pagination post says, *without* the ``apiKey`` (the client adds
  its key again). The cursor alone carries the query.
* ``/v2/aggs/ticker/{t}/range/{multiplier}/{timespan}/{from}/{to}``: ``from``/``to`` as
  dates or millisecond timestamps; ``adjusted``, ``sort``, ``limit`` (default 5,000,
  max 50,000); ``status`` ``OK`` (``DELAYED`` on a delayed plan), ``resultsCount``,
  ``queryCount``, ``results`` left out when empty, and ``next_url`` (the next ``from`` in
  the path and a cursor) when a page is cut. Minute and hour buckets sit on UTC multiples;
  days, weeks (Sunday) and months open at midnight New York for US markets, UTC for
  crypto and fx. Every aggregate is folded from one tape of per-second aggregates, the
  same ones the stream sends.
* WebSocket ``/<cluster>`` (``stocks``, ``options``, ``indices``, ``crypto``, ``forex``):
  every server message is a JSON array of events; ``connected`` on open, then
  ``auth_success`` or ``auth_failed`` (a wrong key: "authentication failed"; a plan
  without that cluster: "Your plan doesn't include websocket access...", then a close);
  ``subscribe``/``unsubscribe`` with comma-separated ``EV.SYMBOL`` params acknowledged with
  ``success`` statuses (or, with :attr:`DocsPolygon.refuse_on_subscribe`, the plan
  refusal after ``auth_success``, as one real account saw it); one connection per cluster
  and key (a new one evicts the old with ``max_connections`` and close 1008). Events:
  ``A``/``AM`` (``sym``) for stocks, options and indices, ``XAS``/``XA`` (``pair``
  ``BTC-USD``) for crypto, ``CAS``/``CA`` (``pair`` ``EUR/USD``) for forex, with
  ``o h l c v vw s e`` (ms).

Run alone: ``python -m tests.fakes.polygon_docs --port 8766``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackServer

NEW_YORK = ZoneInfo("America/New_York")
CLUSTER_OF_MARKET = {
    "stocks": "stocks",
    "options": "options",
    "indices": "indices",
    "crypto": "crypto",
    "fx": "forex",
}
SECOND_EVENT = {"stocks": "A", "options": "A", "indices": "A", "crypto": "XAS", "forex": "CAS"}
MINUTE_EVENT = {"stocks": "AM", "options": "AM", "indices": "AM", "crypto": "XA", "forex": "CA"}
RATE_LIMITED = (
    "You've exceeded the maximum requests per minute, please wait or upgrade your"
    " subscription to continue. https://polygon.io/pricing"
)
NOT_ENTITLED = (
    "You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing"
)
NO_WEBSOCKETS = (
    "Your plan doesn't include websocket access. Visit https://polygon.io/pricing to upgrade."
)
MAX_CONNECTIONS = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit"
    " for your account. Please contact support at https://polygon.io/contact to increase your"
    " limit."
)


@dataclass
class Ticker:
    """A ticker as ``/v3/reference/tickers`` lists it."""

    ticker: str
    name: str
    market: str  # stocks, crypto, fx, indices (Polygon's market names)
    primary_exchange: str | None = None
    active: bool = True
    updated: str = "2026-12-01T00:00:00Z"  # last_updated_utc

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "ticker": self.ticker,
            "name": self.name,
            "market": self.market,
            "locale": "us" if self.market in ("stocks", "indices") else "global",
            "active": self.active,
            "last_updated_utc": self.updated,
        }
        if self.primary_exchange:
            row |= {"primary_exchange": self.primary_exchange, "type": "CS"}
        if self.market == "crypto":
            row |= {"currency_symbol": self.ticker[-3:], "base_currency_symbol": self.ticker[2:-3]}
        return row


@dataclass
class Fault:
    """The next REST request whose path contains ``path`` gets this answer instead."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)
    path: str = ""


@dataclass
class Conn:
    """One WebSocket connection the fake accepted."""

    cluster: str
    path: str
    ws: web.WebSocketResponse
    authed: bool = False
    topics: set[str] = field(default_factory=set)
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: int | None = None


def market_of(ticker: str) -> str:
    return {"X:": "crypto", "C:": "fx", "I:": "indices", "O:": "options"}.get(ticker[:2], "stocks")


def ws_symbol(ticker: str) -> str:
    """``X:BTCUSD`` -> ``BTC-USD``, ``C:EURUSD`` -> ``EUR/USD``, else the ticker."""
    if ticker.startswith("X:"):
        return f"{ticker[2:-3]}-{ticker[-3:]}"
    if ticker.startswith("C:"):
        return f"{ticker[2:5]}/{ticker[5:]}"
    return ticker


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Any]:
    padded = cursor + "=" * (-len(cursor) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def _price(ticker: str, second: int) -> float:
    seed = sum(ord(c) for c in ticker) * 7.0
    return round(100 + seed % 900 + ((second * 7919 + len(ticker)) % 1000) / 100, 2)


class DocsPolygon:
    """The fake; ``with DocsPolygon(tickers) as fake: fake.settings``."""

    def __init__(
        self,
        tickers: Iterable[Ticker],
        *,
        key: str = "docs-key",
        page_size: int = 1000,
        aggs_page: int = 50_000,
        tape_hours: float = 30.0,
        tape_step: int = 20,
        delayed_markets: Iterable[str] = (),
        rest_plan: Iterable[str] = ("stocks", "crypto", "fx", "indices", "options"),
        ws_plan: Iterable[str] = ("stocks", "crypto", "forex", "indices", "options"),
    ) -> None:
        self.tickers = list(tickers)
        self.keys = {key}
        self.key = key
        self.page_size = page_size  # the most rows a tickers page holds, whatever the limit
        self.aggs_page = aggs_page  # the most bars an aggregates page holds
        self.delayed_markets = set(delayed_markets)
        self.rest_plan = set(rest_plan)
        self.ws_plan = set(ws_plan)
        # clusters whose plan refusal comes after ``auth_success``, as the answer to the first
        # subscribe (one report of a real account), the socket left open
        self.refuse_on_subscribe: set[str] = set()
        # the last page of tickers names itself as next_url, as Polygon's cursors were seen
        # to loop back (polygon-io/issues#289)
        self.loop_next_url = False
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, dict[str, str], str]] = []  # (path, query, auth form)
        self.conns: list[Conn] = []
        self.tape: dict[str, dict[int, tuple[float, float, float, float, float]]] = {}
        self._lock = threading.Lock()
        now = int(time.time())
        for t in self.tickers:
            if t.market in ("stocks", "crypto", "fx", "indices"):
                first = now - int(tape_hours * 3600)
                self.tape[t.ticker] = {
                    s: self._second(t.ticker, s)
                    for s in range(first - first % tape_step, now - 5, tape_step)
                }
        self.app = web.Application()
        self.app.router.add_get("/v3/reference/tickers", self._tickers)
        self.app.router.add_get(
            "/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{start}/{end}", self._aggs
        )
        self.app.router.add_get("/{cluster}", self._socket)
        self._server = LoopbackServer(self.app)
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DocsPolygon:
        self._server.__enter__()
        self._loop = self._server._loop
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @property
    def rest_url(self) -> str:
        """``http://127.0.0.1:PORT``, the documents' form (``https://api.polygon.io``)."""
        return self._server.url

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``, the documents' form (``wss://delayed.polygon.io``)."""
        return self._server.url.replace("http://", "ws://")

    @property
    def settings(self) -> dict[str, str]:
        return {
            "PROVIDERS": "polygon",
            "POLYGON_API_KEY": self.key,
            "POLYGON_API_URL": self.rest_url,
            "POLYGON_WS_URL": self.ws_url,
            "POLYGON_MARKETS": ",".join(sorted({t.market for t in self.tickers})),
        }

    # ------------------------------------------------------------------ the tape

    @staticmethod
    def _second(ticker: str, s: int) -> tuple[float, float, float, float, float]:
        o, c = _price(ticker, s), _price(ticker, s + 1)
        return (o, max(o, c) + 0.5, min(o, c) - 0.5, c, float(1 + (s * 31) % 97))

    def add_second(self, ticker: str, s: int) -> dict[str, Any]:
        """Put second ``s`` of ``ticker`` on the tape (REST has it) and return its event."""
        with self._lock:
            self.tape[ticker][s] = self._second(ticker, s)
        return self.event(ticker, s)

    def event(self, ticker: str, s: int, kind: str | None = None) -> dict[str, Any]:
        """The stream event of second ``s`` (``kind`` ``XA``/``AM``: its minute instead)."""
        cluster = CLUSTER_OF_MARKET[market_of(ticker)]
        ev = kind or SECOND_EVENT[cluster]
        o, h, low, c, v = self.tape[ticker].get(s) or self._second(ticker, s)
        span = 60_000 if ev == MINUTE_EVENT[cluster] else 1000
        event: dict[str, Any] = {"ev": ev, "o": o, "h": h, "l": low, "c": c, "v": v, "vw": c}
        event |= {"s": s * 1000, "e": s * 1000 + span, "z": 1}
        name = "pair" if cluster in ("crypto", "forex") else "sym"
        event[name] = ws_symbol(ticker)
        return event

    def aggregates(
        self, ticker: str, multiplier: int, timespan: str, start_ms: int, end_ms: int
    ) -> list[dict[str, Any]]:
        """Every aggregate of the range, oldest first, as ``results`` rows."""
        zone: tzinfo = UTC if market_of(ticker) in ("crypto", "fx") else NEW_YORK
        buckets: dict[int, list[float]] = {}
        with self._lock:
            seconds = sorted(self.tape.get(ticker, {}).items())
        for s, (o, h, low, c, v) in seconds:
            b = _bucket(s, multiplier, timespan, zone)
            if not start_ms <= b * 1000 <= end_ms:
                continue
            bar = buckets.get(b)
            if bar is None:
                buckets[b] = [o, h, low, c, v, 1]
            else:
                bar[1], bar[2], bar[3] = max(bar[1], h), min(bar[2], low), c
                bar[4] += v
                bar[5] += 1
        return [
            {"v": v, "vw": c, "o": o, "c": c, "h": h, "l": low, "t": b * 1000, "n": int(n)}
            for b, (o, h, low, c, v, n) in sorted(buckets.items())
        ]

    # ------------------------------------------------------------------ REST

    def fault(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.path in path:
                    return self.faults.pop(i)
        return None

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request before any data: auth, then injected faults."""
        query = dict(request.query)
        header = request.headers.get("Authorization", "")
        if "apiKey" in query:
            key, form = query["apiKey"], "query"
        elif header.startswith("Bearer "):
            key, form = header.removeprefix("Bearer "), "bearer"
        else:
            key, form = "", "none"
        self.requests.append((request.path, query, form))
        if not key:
            return _error(401, {"status": "ERROR", "error": "API Key was not provided"})
        if key not in self.keys:
            return _error(401, {"status": "ERROR", "error": "Unknown API Key"})
        fault = self._take_fault(request.path_qs)
        if fault is not None:
            body = fault.body if isinstance(fault.body, str) else json.dumps(fault.body)
            return web.Response(status=fault.status, text=body, headers=fault.headers)
        return None

    async def _tickers(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        query = dict(request.query)
        if "cursor" in query:  # the cursor alone carries the query
            query = _decode(query["cursor"])
        limit = min(int(query.get("limit", 100)), 1000)
        if limit < 1:
            return _error(400, {"status": "ERROR", "error": "limit must be positive"})
        active = str(query.get("active", "true")).lower() != "false"
        rows = [
            t.row()
            for t in sorted(self.tickers, key=lambda t: t.ticker)
            if t.active == active and query.get("market") in (None, t.market)
        ]
        offset = int(query.get("offset", 0))
        size = min(limit, self.page_size)
        page = rows[offset : offset + size]
        body: dict[str, Any] = {"results": page, "status": "OK", "count": len(page)}
        body["request_id"] = uuid.uuid4().hex
        following = {k: v for k, v in query.items() if k not in ("apiKey", "cursor")}
        if offset + size < len(rows):
            cursor = _encode(following | {"offset": offset + size})
            body["next_url"] = f"{self.rest_url}/v3/reference/tickers?cursor={cursor}"
        elif self.loop_next_url and offset:
            cursor = _encode(following | {"offset": offset})
            body["next_url"] = f"{self.rest_url}/v3/reference/tickers?cursor={cursor}"
        return web.json_response(body)

    async def _aggs(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        match = request.match_info
        ticker, timespan = match["ticker"], match["timespan"]
        if market_of(ticker) not in self.rest_plan:
            return _error(403, {"status": "NOT_AUTHORIZED", "message": NOT_ENTITLED})
        try:
            multiplier = int(match["multiplier"])
            start, end = _instant(match["start"], False), _instant(match["end"], True)
        except ValueError as exc:
            return _error(400, {"status": "ERROR", "error": str(exc)})
        if timespan not in ("second", "minute", "hour", "day", "week", "month") or multiplier < 1:
            return _error(400, {"status": "ERROR", "error": f"invalid timespan {timespan!r}"})
        query = dict(request.query)
        if "cursor" in query:
            query = _decode(query["cursor"]) | query
        limit = min(int(query.get("limit", 5000)), 50_000)
        descending = query.get("sort", "asc") == "desc"
        rows = self.aggregates(ticker, multiplier, timespan, start, end)
        if descending:
            rows.reverse()
        size = min(limit, self.aggs_page)
        page, rest = rows[:size], rows[size:]
        status = "DELAYED" if market_of(ticker) in self.delayed_markets else "OK"
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(page),
            "resultsCount": len(page),
            "adjusted": query.get("adjusted", "true") != "false",
            "status": status,
            "request_id": uuid.uuid4().hex,
            "count": len(page),
        }
        if page:
            body["results"] = page
        if rest and not descending:
            cursor = _encode({k: query[k] for k in ("adjusted", "sort", "limit") if k in query})
            window = f"{rest[0]['t']}/{match['end']}"
            path = f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{window}"
            body["next_url"] = f"{self.rest_url}{path}?cursor={cursor}"
        return web.json_response(body)

    # ------------------------------------------------------------------ WebSocket

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        cluster = request.match_info["cluster"]
        if cluster not in SECOND_EVENT:
            return web.Response(status=404, text="404 page not found")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        conn = Conn(cluster, request.path, ws)
        with self._lock:
            self.conns.append(conn)
        await _send(ws, [_status("connected", "Connected Successfully")])
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    action = json.loads(msg.data)
                except ValueError:
                    await _send(ws, [_status("error", "invalid JSON")])
                    continue
                conn.received.append(action)
                await self._on_action(conn, action)
        finally:
            if conn.closed is None:
                conn.closed = ws.close_code or 1006
        return ws

    async def _on_action(self, conn: Conn, action: dict[str, Any]) -> None:
        kind, params = action.get("action"), str(action.get("params", ""))
        if kind == "auth":
            if params not in self.keys:
                await _send(conn.ws, [_status("auth_failed", "authentication failed")])
                await self._close(conn, 1008)
            elif conn.cluster not in self.ws_plan:
                await _send(conn.ws, [_status("auth_failed", NO_WEBSOCKETS)])
                await self._close(conn, 1008)
            else:
                for other in self.open_conns(conn.cluster):
                    if other is not conn and other.authed:  # one per cluster and key
                        await _send(other.ws, [_status("max_connections", MAX_CONNECTIONS)])
                        await self._close(other, 1008)
                conn.authed = True
                await _send(conn.ws, [_status("auth_success", "authenticated")])
        elif not conn.authed:
            await _send(conn.ws, [_status("error", "not authorized")])
        elif kind in ("subscribe", "unsubscribe"):
            topics = [p.strip() for p in params.split(",") if p.strip()]
            if kind == "subscribe":
                conn.topics.update(topics)
            else:
                conn.topics.difference_update(topics)
            if kind == "subscribe" and conn.cluster in self.refuse_on_subscribe:
                await _send(conn.ws, [_status("auth_failed", NO_WEBSOCKETS)])
                return
            verb = "subscribed to" if kind == "subscribe" else "unsubscribed to"
            await _send(conn.ws, [_status("success", f"{verb}: {t}") for t in topics])
        else:
            await _send(conn.ws, [_status("error", f"unknown action {kind!r}")])

    async def _close(self, conn: Conn, code: int) -> None:
        conn.closed = code
        await conn.ws.close(code=code)

    def open_conns(self, cluster: str | None = None) -> list[Conn]:
        with self._lock:
            return [
                c
                for c in self.conns
                if c.closed is None and cluster in (None, c.cluster) and not c.ws.closed
            ]

    def subscribed(self, cluster: str) -> set[str]:
        """The topics of the open, authenticated connections to ``cluster``."""
        return {t for c in self.open_conns(cluster) if c.authed for t in c.topics}

    def push(self, cluster: str, events: list[dict[str, Any]]) -> int:
        """Send ``events`` as one frame (a JSON array) on every authenticated connection to
        ``cluster``, whatever they subscribed to; the number of connections sent to."""
        conns = [c for c in self.open_conns(cluster) if c.authed]
        assert self._loop is not None
        for conn in conns:
            asyncio.run_coroutine_threadsafe(_send(conn.ws, events), self._loop).result(10)
        return len(conns)

    def close_all(self, cluster: str, code: int = 1000) -> int:
        """Close every open connection to ``cluster`` with ``code``."""
        conns = self.open_conns(cluster)
        assert self._loop is not None
        for conn in conns:
            asyncio.run_coroutine_threadsafe(self._close(conn, code), self._loop).result(10)
        return len(conns)


def _status(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


async def _send(ws: web.WebSocketResponse, events: list[dict[str, Any]]) -> None:
    if not ws.closed:
        await ws.send_str(json.dumps(events))


def _error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body | {"request_id": uuid.uuid4().hex}, status=status)


def _instant(text: str, end: bool) -> int:
    """A ``from``/``to`` path part in ms: a millisecond timestamp or ``YYYY-MM-DD`` (the end
    of that day for ``to``)."""
    if text.isdigit():
        return int(text)
    day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    ms = int(day.timestamp()) * 1000
    return ms + 86_400_000 - 1 if end else ms


def _bucket(s: int, multiplier: int, timespan: str, zone: tzinfo) -> int:
    """The open (UTC seconds) of the ``multiplier``/``timespan`` bar holding second ``s``."""
    fixed = {"second": 1, "minute": 60, "hour": 3600}.get(timespan)
    if fixed is not None:
        span = fixed * multiplier
        return s - s % span
    local = datetime.fromtimestamp(s, zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if timespan == "day":
        days = (day.date().toordinal() - 719163) // multiplier * multiplier  # 719163: 1970-01-01
        opened = datetime.fromordinal(days + 719163).replace(tzinfo=zone)
    elif timespan == "week":
        opened = day - timedelta(days=(day.weekday() + 1) % 7)
    else:  # month
        months = (local.year * 12 + local.month - 1) // multiplier * multiplier
        opened = datetime(months // 12, months % 12 + 1, 1, tzinfo=zone)
    return int(calendar.timegm(opened.astimezone(UTC).timetuple()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    fake = DocsPolygon(
        [Ticker("AAPL", "Apple Inc.", "stocks", "XNAS"), Ticker("X:BTCUSD", "Bitcoin", "crypto")]
    )
    web.run_app(fake.app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
