"""A second fake of Binance spot, written from Binance's public documentation alone.

It is independent of :mod:`tests.fakes.binance` (the fake the rest of the suite uses) on
purpose: acceptance tests run the provider against fakes of their own, and where two fakes
differ the provider must still hold. It runs REST and the streams on two aiohttp servers on
127.0.0.1, as Binance does on two hosts (``api.binance.com`` and ``stream.binance.com``):

* REST ``GET /api/v3/{ping,time,exchangeInfo,klines}``: kline rows of 12 mixed fields
  (``[openTime, "o", "h", "l", "c", "v", closeTime, "q", trades, "V", "Q", "0"]``),
  ``limit`` 500 by default and at most 1000 (more: HTTP 400 ``-1100``), ``startTime`` /
  ``endTime`` by open time, ``X-MBX-USED-WEIGHT-1M`` on every answer; faults queued by
  :meth:`DocsBinance.fault` (a status, headers, a body that need not be JSON, a delay).
* Streams ``/ws``, ``/ws/<a>/<b>``, ``/stream`` and ``/stream?streams=a/b`` (combined:
  ``{"stream": ..., "data": ...}``); ``SUBSCRIBE`` / ``UNSUBSCRIBE`` /
  ``LIST_SUBSCRIPTIONS`` answered ``{"result": null, "id": N}`` or with an error; a ping
  with a payload every ``ping_interval`` seconds and a close when its pong (with that payload)
  does not come within ``pong_timeout``; at most 5 incoming messages a second (pings, pongs
  and JSON frames count); kline events every ``push_interval`` seconds, the closing one with
  ``"x": true``; anything else a test sends with :meth:`DocsBinance.send_raw`; handshakes
  refused with a status (``refuse_handshake``: Binance.com's 451 to a US address).

Prices are a pure function of symbol, interval and open time; a forming bar grows towards
its final values with the exchange clock (:meth:`DocsBinance.set_time`, :meth:`advance`).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackServer

MINUTE = 60_000
STEPS = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240}
STEPS |= {"6h": 360, "8h": 480, "12h": 720, "1d": 1440, "3d": 4320, "1w": 10080}
INTERVALS = (*STEPS, "1M")
MONDAY_MS = 4 * 86_400_000  # 1970-01-05, the first Monday: weeks open on Mondays


def open_time(interval: str, t_ms: int) -> int:
    """The open time of the kline of ``interval`` that ``t_ms`` falls in."""
    if interval == "1M":
        y, m = time.gmtime(t_ms // 1000)[:2]
        return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000
    step = STEPS[interval] * MINUTE
    if interval == "1w":
        return (t_ms - MONDAY_MS) // step * step + MONDAY_MS
    return t_ms // step * step


def next_open(interval: str, t_ms: int) -> int:
    if interval == "1M":
        y, m = time.gmtime(t_ms // 1000)[:2]
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000
    return open_time(interval, t_ms) + STEPS[interval] * MINUTE


@dataclass
class Symbol:
    name: str
    base: str
    quote: str
    status: str = "TRADING"
    listed_ms: int = 1_500_000_000_000

    def info(self) -> dict[str, Any]:
        return {
            "symbol": self.name,
            "status": self.status,
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "isSpotTradingAllowed": self.status == "TRADING",
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.01",
                    "maxPrice": "1000000.00",
                    "tickSize": "0.01000000",
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": "0.00001",
                    "maxQty": "9000.0",
                    "stepSize": "0.00001000",
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN", "TRD_GRP_004"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER"],
        }


@dataclass
class Fault:
    """One REST answer given instead of the real one."""

    status: int = 200
    body: str | None = None  # None: the real answer's body
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    path: str = ""  # only requests whose path ends so ("" any)


@dataclass
class Conn:
    ws: web.WebSocketResponse
    path: str
    combined: bool
    streams: dict[str, None]
    last_open: dict[str, int] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)
    pings: dict[bytes, float] = field(default_factory=dict)
    pongs: list[bytes] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    closed: str | None = None
    closing: asyncio.Future[bool] | None = None


def _price(symbol: str, t_ms: int) -> float:
    seed = sum(symbol.encode()) * 7
    return 100.0 + seed % 900 + (t_ms // MINUTE) % 997 * 0.25


class DocsBinance:
    """REST and streams of a Binance spot exchange on two loopback ports."""

    def __init__(
        self,
        symbols: Iterable[Symbol] = (),
        *,
        now_ms: int | None = None,
        push_interval: float = 0.2,
        ping_interval: float | None = 20.0,
        pong_timeout: float = 60.0,
        max_messages: int = 5,
        filler_symbols: int = 0,
    ) -> None:
        self.symbols = {s.name: s for s in symbols} or {
            s.name: s
            for s in (
                Symbol("BTCUSDT", "BTC", "USDT"),
                Symbol("ETHUSDT", "ETH", "USDT"),
                Symbol("HALTUSDT", "HALT", "USDT", status="HALT"),
                Symbol("BRKUSDT", "BRK", "USDT", status="BREAK"),
            )
        }
        for n in range(filler_symbols):  # "thousands of symbols"
            name = f"F{n:05d}USDT"
            self.symbols[name] = Symbol(name, f"F{n:05d}", "USDT")
        self._now = now_ms
        self._mono = time.monotonic()
        self.frozen = now_ms is not None
        self.push_interval = push_interval
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_messages = max_messages
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, dict[str, str], int]] = []
        self.frames: list[str] = []
        self.conns: list[Conn] = []
        self.weight: list[tuple[float, int]] = []
        self.silent = False  # no kline pushes
        self.refuse = 0  # SUBSCRIBE frames still to answer with an error
        # only those naming this stream (None: any; another test's stream may be resubscribed)
        self.refuse_stream: str | None = None
        # answer stream handshakes with this status and body instead (451: a US address)
        self.refuse_handshake: tuple[int, str] | None = None
        self.handshakes_refused = 0
        rest, ws = web.Application(), web.Application()
        rest.router.add_get("/api/v3/{endpoint}", self._rest)
        ws.router.add_get("/ws", self._ws)
        ws.router.add_get("/ws/{streams:.*}", self._ws)
        ws.router.add_get("/stream", self._ws)
        self._rest_server = LoopbackServer(rest)
        self._ws_server = LoopbackServer(ws)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DocsBinance:
        self._rest_server.__enter__()
        self._ws_server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ws_server.__exit__(*exc)
        self._rest_server.__exit__(*exc)

    @property
    def settings(self) -> dict[str, str]:
        return {
            "PROVIDERS": "binance",
            "BINANCE_API_URL": self._rest_server.url + "/api",
            "BINANCE_STREAM_URL": self._ws_server.url.replace("http://", "ws://") + "/",
        }

    def call(self, coro: Any) -> Any:
        loop = self._ws_server._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    # ------------------------------------------------------------------ clock and data

    def now_ms(self) -> int:
        if self._now is None:
            return int(time.time() * 1000)
        if self.frozen:
            return self._now
        return self._now + int((time.monotonic() - self._mono) * 1000)

    def set_time(self, ms: int, frozen: bool = True) -> None:
        self._now, self._mono, self.frozen = ms, time.monotonic(), frozen

    def advance(self, seconds: float) -> None:
        self.set_time(self.now_ms() + int(seconds * 1000), self.frozen)

    def row(self, symbol: str, interval: str, t: int, now: int | None = None) -> list[Any]:
        """The kline row opening at ``t`` as of ``now`` (final once it closed)."""
        now = self.now_ms() if now is None else now
        close_ms = next_open(interval, t) - 1
        frac = 1.0 if now > close_ms else max(0.0, (now - t) / (close_ms + 1 - t))
        base = _price(symbol, t)
        o, h, lo = base, base + 2.0, base - 1.5
        c = base + 1.0 * frac
        v = (3 + (t // MINUTE) % 11) * frac
        trades = int(40 * frac)
        return [
            t,
            f"{o:.8f}",
            f"{h:.8f}",
            f"{lo:.8f}",
            f"{c:.8f}",
            f"{v:.8f}",
            close_ms,
            f"{v * c:.8f}",
            trades,
            f"{v / 2:.8f}",
            f"{v * c / 2:.8f}",
            "0",
        ]

    def klines(
        self, symbol: str, interval: str, start: int | None, end: int | None, limit: int
    ) -> list[list[Any]]:
        now = self.now_ms()
        first = open_time(interval, max(self.symbols[symbol].listed_ms, 0))
        last = open_time(interval, now)
        if end is not None:
            last = min(last, open_time(interval, end))
            if open_time(interval, end) != end and last > end:
                last = open_time(interval, end)
        opens: list[int] = []
        if start is not None:
            t = max(first, open_time(interval, start))
            if t < start:
                t = next_open(interval, t)
            while t <= last and len(opens) < limit:
                opens.append(t)
                t = next_open(interval, t)
        else:
            t = last
            while t >= first and len(opens) < limit:
                opens.append(t)
                t = open_time(interval, t - 1)
            opens.reverse()
        return [self.row(symbol, interval, t, now) for t in opens if end is None or t <= end]

    def event(self, symbol: str, interval: str, t: int, now: int | None = None) -> dict[str, Any]:
        now = self.now_ms() if now is None else now
        r = self.row(symbol, interval, t, now)
        return {
            "e": "kline",
            "E": now,
            "s": symbol,
            "k": {
                "t": r[0],
                "T": r[6],
                "s": symbol,
                "i": interval,
                "f": 100,
                "L": 100 + r[8],
                "o": r[1],
                "c": r[4],
                "h": r[2],
                "l": r[3],
                "v": r[5],
                "n": r[8],
                "x": now > r[6],
                "q": r[7],
                "V": r[9],
                "Q": r[10],
                "B": "0",
            },
        }

    # ------------------------------------------------------------------ REST

    def fault(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def used_weight(self) -> int:
        cut = time.monotonic() - 60
        self.weight = [(t, w) for t, w in self.weight if t > cut]
        return sum(w for _, w in self.weight)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        params = dict(request.query)
        fault = next((f for f in self.faults if request.path.endswith(f.path)), None)
        if fault is not None:
            self.faults.remove(fault)
            if fault.delay:
                await asyncio.sleep(fault.delay)
        weight = {"exchangeInfo": 20, "klines": 2}.get(endpoint, 1)
        self.weight.append((time.monotonic(), weight))
        status, body = 200, None
        try:
            body = self._answer(endpoint, params)
        except _Error as exc:
            status, body = exc.status, {"code": exc.code, "msg": exc.msg}
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.used_weight())}
        if fault is not None and (fault.status != 200 or fault.body is not None):
            status = fault.status
            text = fault.body if fault.body is not None else json.dumps(body)
            headers |= fault.headers
        else:
            text = json.dumps(body, separators=(",", ":"))
            if fault is not None:
                headers |= fault.headers
        self.requests.append((endpoint, params, status))
        kind = "application/json" if text[:1] in "{[" else "text/html"
        return web.Response(status=status, text=text, content_type=kind, headers=headers)

    def _answer(self, endpoint: str, params: dict[str, str]) -> Any:
        if endpoint == "ping":
            return {}
        if endpoint == "time":
            return {"serverTime": self.now_ms()}
        if endpoint == "exchangeInfo":
            names = list(self.symbols)
            if "symbol" in params:
                names = [params["symbol"]]
            elif "symbols" in params:
                names = json.loads(params["symbols"])
            if any(n not in self.symbols for n in names):
                raise _Error(400, -1121, "Invalid symbol.")
            return {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 6000,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [self.symbols[n].info() for n in names],
            }
        if endpoint == "klines":
            symbol, interval = params.get("symbol"), params.get("interval")
            if not symbol:
                raise _Error(400, -1102, "Mandatory parameter 'symbol' was not sent.")
            if interval not in INTERVALS:
                raise _Error(400, -1120, "Invalid interval.")
            if symbol not in self.symbols:
                raise _Error(400, -1121, "Invalid symbol.")
            limit = int(params.get("limit", 500))
            if not 1 <= limit <= 1000:
                raise _Error(400, -1100, "Illegal characters found in parameter 'limit'.")
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
            if start is not None and end is not None and start > end:
                raise _Error(400, -1023, "Start time is greater than end time.")
            return self.klines(symbol, interval, start, end, limit)
        raise _Error(404, -1, "Not found")

    # ------------------------------------------------------------------ streams

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        combined = path == "/stream"
        raw = (
            request.query.get("streams", "") if combined else request.match_info.get("streams", "")
        )
        names = [s for s in raw.split("/") if s]
        if self.refuse_handshake is not None:
            self.handshakes_refused += 1
            status, body = self.refuse_handshake
            return web.Response(status=status, text=body, content_type="application/json")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
        await ws.prepare(request)
        conn = Conn(ws, request.path_qs, combined, dict.fromkeys(names))
        self.conns.append(conn)
        tasks = [asyncio.create_task(self._push(conn))]
        if self.ping_interval:
            tasks.append(asyncio.create_task(self._pinger(conn)))
        try:
            async for msg in ws:
                if not self._count(conn):  # pings, pongs and JSON frames all count
                    break
                if msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    conn.pongs.append(bytes(msg.data))
                    conn.pings.pop(bytes(msg.data), None)
                elif msg.type == WSMsgType.TEXT:
                    self.frames.append(msg.data)
                    await ws.send_str(json.dumps(self._control(conn, msg.data)))
        finally:
            for task in tasks:
                task.cancel()
            conn.closed = conn.closed or "client"
        return ws

    def _count(self, conn: Conn) -> bool:
        now = time.monotonic()
        conn.recent = [t for t in conn.recent if t > now - 1.0] + [now]
        if len(conn.recent) > self.max_messages:
            conn.closed = "too many messages"
            conn.closing = asyncio.ensure_future(conn.ws.close(code=1008, message=b"Too many"))
            return False
        return True

    def _control(self, conn: Conn, text: str) -> dict[str, Any]:
        try:
            msg = json.loads(text)
        except ValueError:
            return {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
        rid = msg.get("id") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or not isinstance(msg.get("params", []), list):
            return {"code": 2, "msg": "Invalid request", "id": rid}
        method, params = msg.get("method"), msg.get("params", [])
        named = self.refuse_stream is None or self.refuse_stream in params
        if method == "SUBSCRIBE" and self.refuse > 0 and named:
            self.refuse -= 1
            return {"code": 2, "msg": "Invalid request: temporarily unavailable", "id": rid}
        if method == "SUBSCRIBE":
            conn.streams.update(dict.fromkeys(params))
            return {"result": None, "id": rid}
        if method == "UNSUBSCRIBE":
            for name in params:
                conn.streams.pop(name, None)
                conn.last_open.pop(name, None)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.streams), "id": rid}
        return {"code": 2, "msg": f"Invalid request: unknown variant `{method}`", "id": rid}

    async def _pinger(self, conn: Conn) -> None:
        assert self.ping_interval is not None
        while not conn.ws.closed:
            await asyncio.sleep(self.ping_interval)
            payload = os.urandom(8)
            conn.pings[payload] = time.monotonic()
            await conn.ws.ping(payload)
            late = [p for p, at in conn.pings.items() if time.monotonic() - at > self.pong_timeout]
            if late:
                conn.closed = "no pong"
                await conn.ws.close(code=1008, message=b"pong timeout")
                return

    async def _push(self, conn: Conn) -> None:
        while not conn.ws.closed:
            await asyncio.sleep(self.push_interval)
            if self.silent:
                continue
            now = self.now_ms()
            for stream in list(conn.streams):
                for event in self._events(conn, stream, now):
                    await self._send(conn, stream, event)

    async def _send(self, conn: Conn, stream: str, event: dict[str, Any]) -> None:
        payload = {"stream": stream, "data": event} if conn.combined else event
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.ws.send_str(json.dumps(payload, separators=(",", ":")))

    def _events(self, conn: Conn, stream: str, now: int) -> list[dict[str, Any]]:
        symbol, sep, interval = stream.partition("@kline_")
        spec = self.symbols.get(symbol.upper())
        if not sep or interval not in INTERVALS or spec is None or spec.status != "TRADING":
            return []
        current = open_time(interval, now)
        out = []
        previous = conn.last_open.get(stream)
        if previous is not None and previous < current:
            out.append(self.event(spec.name, interval, previous, now))
        out.append(self.event(spec.name, interval, current, now))
        conn.last_open[stream] = current
        return out

    # ------------------------------------------------------------------ test controls

    def open_conns(self) -> list[Conn]:
        return [c for c in self.conns if not c.ws.closed]

    def send_raw(self, payload: str | bytes | dict[str, Any], stream: str | None = None) -> int:
        """Send ``payload`` on every open connection (a dict: as a kline event of ``stream``,
        wrapped for combined connections)."""

        async def go() -> int:
            sent = 0
            for conn in self.open_conns():
                if isinstance(payload, dict):
                    await self._send(conn, stream or "", payload)
                elif isinstance(payload, bytes):
                    await conn.ws.send_bytes(payload)
                else:
                    await conn.ws.send_str(payload)
                sent += 1
            return sent

        return int(self.call(go()))

    def close_all(self, code: int = 1000) -> int:
        async def go() -> int:
            conns = self.open_conns()
            for conn in conns:
                conn.closed = f"server {code}"
                await conn.ws.close(code=code)
            return len(conns)

        return int(self.call(go()))


class _Error(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg
