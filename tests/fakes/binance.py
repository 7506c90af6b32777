"""A loopback fake of the Binance spot exchange (REST market data and kline streams).

The real ``python-binance`` library talks to it unchanged once pointed at it::

    with FakeBinance(push_interval=0.05) as fake:
        binance.base_client.BaseClient.API_URL = fake.api_url
        binance.ws.streams.BinanceSocketManager.STREAM_URL = fake.stream_url
        client = Client()
        client.get_historical_klines("BTCUSDT", "1m", 0, 10**13)

One ``websockets`` server on ``127.0.0.1`` (ephemeral port by default) runs in a background
thread with its own event loop. Plain HTTP requests are answered from ``process_request``
(``/api/v3/ping``, ``/time``, ``/exchangeInfo``, ``/klines``); WebSocket handshakes on
``/ws/<streams>`` and ``/stream?streams=a/b`` become kline streams. Prices come from
:mod:`tests.fakes.binance_data` (a pure function of symbol and time), so tests can compare
bars exactly with :meth:`FakeBinance.klines`.

Every public method is thread-safe and may be called from the test's thread or loop.

Run it standalone with ``python -m tests.fakes.binance --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.binance_data import (
    DEFAULT_KLINES,
    DEFAULT_SYMBOLS,
    INTERVALS,
    KlineQueryError,
    MarketData,
    SymbolSpec,
)

__all__ = [
    "DEFAULT_SYMBOLS",
    "FakeBinance",
    "RestRequest",
    "SymbolSpec",
    "Violation",
    "WsConnection",
    "WsFrame",
    "thread_event_loop",
]

T = TypeVar("T")

WEIGHTS = {"ping": 1, "time": 1, "exchangeInfo": 20, "klines": 2}
KLINE_STREAM = re.compile(r"^([a-z0-9]+)@kline_(" + "|".join(INTERVALS) + r")$")
STREAM_NAME = re.compile(r"^[!a-z0-9]+@[A-Za-z0-9_@+:.!-]+$")
PARAM_DIGITS = re.compile(r"^[0-9]{1,20}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
CONTROL_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]


# --------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class RestRequest:
    """One REST request as the fake saw it."""

    path: str  # e.g. "/api/v3/klines"
    params: dict[str, str]
    at: float  # time.time() when received
    monotonic: float  # time.monotonic() when received
    status: int  # HTTP status answered
    weight: int  # weight charged (0 for injected errors)


@dataclass(frozen=True)
class WsFrame:
    """One message a client sent on a WebSocket (control frames)."""

    conn_id: int
    text: str
    at: float
    monotonic: float


@dataclass(frozen=True)
class Violation:
    """A client broke a Binance limit (``kind``: ``"message_rate"`` or ``"too_many_streams"``)."""

    conn_id: int
    kind: str
    detail: str
    at: float


@dataclass
class WsConnection:
    """Book-keeping for one WebSocket connection (a snapshot when returned to tests)."""

    id: int
    path: str
    combined: bool
    streams: list[str]
    opened_at: float
    closed_at: float | None = None
    close_reason: str | None = None


@dataclass
class _Conn:
    info: WsConnection
    ws: ServerConnection
    opened_mono: float
    streams: dict[str, None] = field(default_factory=dict)
    last_open: dict[str, int] = field(default_factory=dict)
    recent: deque[float] = field(default_factory=deque)
    combined: bool = False
    close_after_reply: str | None = None  # set when a control frame broke a limit


@contextlib.contextmanager
def thread_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Give the calling thread a fresh current event loop, closed on exit.

    python-binance's sync ``Client`` and ``ThreadedWebsocketManager`` call
    ``asyncio.get_event_loop()`` in the caller's thread and create (and never close) a loop
    when there is none; pytest then fails on "unclosed event loop" ResourceWarnings. Wrap
    their use in this (and pass the loop to ``ThreadedWebsocketManager(loop=...)``).
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class _HttpError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.body = {"code": code, "msg": msg}


def _parse_streams(target: str) -> tuple[bool, list[str]] | None:
    """``(combined, streams)`` for a stream URL, or None if it is not one."""
    url = urlsplit(target)
    path = url.path.rstrip("/")
    if path == "/ws" or path.startswith("/ws/"):
        names = [s for s in path[len("/ws") :].split("/") if s]
        return False, names
    if path == "/stream":
        raw = parse_qs(url.query).get("streams", [""])[0]
        return True, [s for s in raw.split("/") if s]
    return None


# --------------------------------------------------------------------------------------
# the fake


class FakeBinance:
    """A fake Binance spot exchange on a loopback port.

    Args:
        symbols: the listed symbols (default: BTCUSDT, ETHUSDT, ETHBTC, BNBUSDT and LUNAUSDT,
            the last with status ``BREAK``).
        host, port: where to listen (port 0 picks a free port).
        now_ms: start a frozen fake clock at this time (ms); None uses the real clock.
        push_interval: seconds between kline pushes on every stream (Binance: 2.0).
        weight_limit: REQUEST_WEIGHT per rolling minute before automatic 429s.
        max_streams: streams allowed per WebSocket connection.
        max_messages_per_second: incoming WebSocket messages allowed per connection per
            second; one more closes the connection (code 1008) and records a violation.
        max_connection_age: close every WebSocket after this many seconds (Binance: 24 h).
        ping_interval: seconds between server pings (None disables them).
        control: what the server does with a live control frame (SUBSCRIBE ...):
            ``"answer"`` as Binance does, ``"ignore"`` it, or ``"close"`` the socket, as
            simpler relays and emulators that only read streams from the URL do.
        url_streams_required: refuse (HTTP 400) a ``/stream`` URL that names no stream.
    """

    def __init__(
        self,
        symbols: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        now_ms: int | None = None,
        push_interval: float = 2.0,
        weight_limit: int = 6000,
        max_streams: int = 1024,
        max_messages_per_second: int = 5,
        max_connection_age: float | None = None,
        ping_interval: float | None = 20.0,
        control: Literal["answer", "ignore", "close"] = "answer",
        url_streams_required: bool = False,
    ) -> None:
        self.data = MarketData(tuple(symbols))
        self.host = host
        self.push_interval = push_interval
        self.weight_limit = weight_limit
        self.max_streams = max_streams
        self.max_messages_per_second = max_messages_per_second
        self.max_connection_age = max_connection_age
        self._requested_port = port
        self._ping_interval = ping_interval
        self.control = control
        self.url_streams_required = url_streams_required
        self._lock = threading.RLock()
        # clock
        self._clock_base: int | None = now_ms
        self._clock_frozen = True
        self._clock_mono = time.monotonic()
        # records
        self._requests: list[RestRequest] = []
        self._frames: list[WsFrame] = []
        self._violations: list[Violation] = []
        self._connections: list[WsConnection] = []
        self._weights: deque[tuple[float, int]] = deque()
        self._errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # faults
        self._injected: list[tuple[int, float]] = []  # (status, retry_after) per request
        self._failures: list[tuple[int, str]] = []  # (status, raw body) per request
        self.max_klines: int | None = None  # a page size of its own, below ``limit``
        self.ignore_window = False  # klines answers the newest rows, whatever the window
        self.answer_delay = 0.0  # seconds before a control frame is answered (and done)
        self._silent_until = 0.0
        self._refusals = 0  # SUBSCRIBE frames still to refuse
        self._cuts_ms: list[int] = []
        self._cuts_mono: list[float] = []
        # runtime
        self._conns: dict[int, _Conn] = {}
        self._next_conn_id = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Value for ``binance.base_client.BaseClient.API_URL``."""
        return f"http://{self.host}:{self.port}/api"

    @property
    def stream_url(self) -> str:
        """Value for ``binance.ws.streams.BinanceSocketManager.STREAM_URL``."""
        return f"ws://{self.host}:{self.port}/"

    @property
    def settings(self) -> dict[str, str]:
        """The settings of a server (or provider) whose only provider is Binance on this
        fake: ``PROVIDERS``, ``BINANCE_API_URL`` and ``BINANCE_STREAM_URL``."""
        return {
            "PROVIDERS": "binance",
            "BINANCE_API_URL": self.api_url,
            "BINANCE_STREAM_URL": self.stream_url,
        }

    def start(self) -> Self:
        """Bind the port and start serving in a background thread."""
        if self._thread is not None:
            raise RuntimeError("FakeBinance already started")
        # TCP named, so that asyncio turns Nagle's algorithm off on the accepted sockets (as
        # a real exchange's feed does): otherwise pushes wait for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"fake-binance-{self.port}", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            self.stop()
            raise RuntimeError("FakeBinance failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection and the server, and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("FakeBinance thread did not stop")
        self._thread = None
        self._loop = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def patch_python_binance(self) -> Iterator[None]:
        """Point python-binance's REST and stream URLs at this fake; restored on exit."""
        import binance.base_client
        import binance.ws.streams

        rest, ws = binance.base_client.BaseClient, binance.ws.streams.BinanceSocketManager
        saved = rest.API_URL, ws.STREAM_URL
        rest.API_URL, ws.STREAM_URL = self.api_url, self.stream_url
        try:
            yield
        finally:
            rest.API_URL, ws.STREAM_URL = saved

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._startup_error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        assert self._sock is not None
        server: Server = await serve(
            self._ws_handler,
            sock=self._sock,
            process_request=self._process_request,
            ping_interval=self._ping_interval,
            ping_timeout=20,
            close_timeout=1,
            max_queue=64,
            logger=logging.getLogger(f"{__name__}.server"),
        )
        watchdog = asyncio.create_task(self._watchdog())
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            server.close(close_connections=True)
            await server.wait_closed()
            self._sock = None  # closed by the server

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server loop and wait for its result."""
        loop = self._loop
        if loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("FakeBinance is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("call FakeBinance methods from outside its thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    # ---- clock ------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The exchange's current time in ms (real clock unless a fake time was set)."""
        with self._lock:
            if self._clock_base is None:
                return int(time.time() * 1000)
            if self._clock_frozen:
                return self._clock_base
            return self._clock_base + int((time.monotonic() - self._clock_mono) * 1000)

    def set_time(self, ms: int, *, frozen: bool = True) -> None:
        """Use a fake clock at ``ms``; ``frozen=False`` lets it run on from there."""
        with self._lock:
            self._clock_base = int(ms)
            self._clock_frozen = frozen
            self._clock_mono = time.monotonic()

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (starts a frozen fake clock at the real time)."""
        with self._lock:
            if self._clock_base is None:
                self._clock_frozen = True
            current = self.now_ms()
            self._clock_base = current + round(seconds * 1000)
            self._clock_mono = time.monotonic()

    def use_real_clock(self) -> None:
        """Go back to the real clock."""
        with self._lock:
            self._clock_base = None

    # ---- data -------------------------------------------------------------------------

    def klines(
        self,
        symbol: str,
        interval: str,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = DEFAULT_KLINES,
        *,
        now: int | None = None,
    ) -> list[list[Any]]:
        """Exactly what ``GET /api/v3/klines`` would answer now (or as of ``now``)."""
        at = self.now_ms() if now is None else now
        return self.data.klines(symbol, interval, start_time, end_time, limit, now=at)

    def kline_event(
        self, symbol: str, interval: str, open_time: int, *, now: int | None = None
    ) -> dict[str, Any]:
        """The kline stream payload for a bar, as of now (or ``now``)."""
        at = self.now_ms() if now is None else now
        return self.data.kline_event(symbol, interval, open_time, now=at)

    # ---- records ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RestRequest]:
        """Every REST request so far (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def ws_frames(self) -> list[WsFrame]:
        """Every message clients sent on WebSockets so far (a copy)."""
        with self._lock:
            return list(self._frames)

    @property
    def violations(self) -> list[Violation]:
        """Limit violations (message rate, too many streams); tests assert this is empty."""
        with self._lock:
            return list(self._violations)

    @property
    def connections(self) -> list[WsConnection]:
        """Every WebSocket connection ever opened (snapshots, open ones included)."""
        with self._lock:
            return [
                WsConnection(
                    c.id,
                    c.path,
                    c.combined,
                    list(c.streams),
                    c.opened_at,
                    c.closed_at,
                    c.close_reason,
                )
                for c in self._connections
            ]

    @property
    def connections_opened(self) -> int:
        """How many WebSocket connections were accepted."""
        with self._lock:
            return len(self._connections)

    @property
    def open_connections(self) -> int:
        """How many WebSocket connections are open now."""
        with self._lock:
            return len(self._conns)

    def streams_per_connection(self) -> dict[int, int]:
        """Current stream count of each open connection, by connection id."""
        with self._lock:
            return {cid: len(c.streams) for cid, c in self._conns.items()}

    def used_weight(self) -> int:
        """REQUEST_WEIGHT used in the rolling minute (what X-MBX-USED-WEIGHT-1M says)."""
        with self._lock:
            return self._used_weight(time.monotonic())

    @property
    def errors(self) -> list[str]:
        """Exceptions raised inside the fake itself (tests may assert this stays empty)."""
        with self._lock:
            return list(self._errors)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(f"{type(exc).__name__}: {exc}")

    def clear_records(self) -> None:
        """Forget recorded requests, frames and violations (not the connections)."""
        with self._lock:
            self._requests.clear()
            self._frames.clear()
            self._violations.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds passed (blocking)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # ---- faults -----------------------------------------------------------------------

    def rate_limit(self, status: int = 429, retry_after: float = 1, count: int = 1) -> None:
        """Answer the next ``count`` REST requests with ``status`` (429 or 418), a
        ``Retry-After: <retry_after>`` header and Binance's -1003 body."""
        if status not in (429, 418):
            raise ValueError("status must be 429 or 418")
        with self._lock:
            self._injected.extend([(status, retry_after)] * count)

    def fail_next(self, status: int, count: int = 1, body: str = "") -> None:
        """Answer the next ``count`` REST requests with ``status`` and ``body`` as it is
        (a proxy's HTML 502, say; empty: Binance's -1000 JSON), charging no weight."""
        raw = body or json.dumps({"code": -1000, "msg": "An unknown error occurred."})
        with self._lock:
            self._failures.extend([(status, raw)] * count)

    def drop_connections(self) -> int:
        """Abort every WebSocket's TCP connection without a close frame; returns how many."""
        return self._call(self._drop_all())

    def refuse_subscribes(self, count: int) -> None:
        """Answer the next ``count`` SUBSCRIBE frames with an error (code 2), subscribing
        nothing, as Binance does for a request it will not serve."""
        with self._lock:
            self._refusals = count

    def go_silent(self, seconds: float) -> None:
        """Stop pushing events for ``seconds`` (sockets stay open, control frames answered)."""
        with self._lock:
            self._silent_until = time.monotonic() + seconds

    def go_deaf(self, seconds: float) -> None:
        """Stop pushing events and reading the open sockets for ``seconds``: pings get no
        pong, as on a half-open connection."""
        self.go_silent(seconds)
        self._call(self._pause_reading(seconds))

    async def _pause_reading(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        for conn in self._open_conns():
            conn.ws.transport.pause_reading()
            loop.call_later(seconds, conn.ws.transport.resume_reading)

    def cut_at(self, timestamp_ms: int) -> None:
        """Close every WebSocket (code 1001) once the exchange clock reaches
        ``timestamp_ms``, like Binance's 24-hour cut."""
        with self._lock:
            self._cuts_ms.append(int(timestamp_ms))

    def cut_after(self, seconds: float) -> None:
        """Close every WebSocket (code 1001) after ``seconds`` of real time."""
        with self._lock:
            self._cuts_mono.append(time.monotonic() + seconds)

    def send_server_shutdown(self) -> int:
        """Send ``{"e":"serverShutdown","E":ms}`` on every connection; returns how many."""
        return self._call(self._broadcast({"e": "serverShutdown", "E": self.now_ms()}))

    def close_connections(self, code: int = 1001, reason: str = "") -> int:
        """Close every WebSocket cleanly with ``code``; returns how many."""
        return self._call(self._close_all(code, reason))

    async def _drop_all(self) -> int:
        conns = self._open_conns()
        for conn in conns:
            self._mark_closed(conn, "dropped")
            conn.ws.transport.abort()
        return len(conns)

    async def _close_all(self, code: int, reason: str) -> int:
        conns = self._open_conns()
        for conn in conns:
            await self._close(conn, code, reason)
        return len(conns)

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        """Start a clean close without waiting for the client's answer."""
        self._mark_closed(conn, reason or f"closed {code}")
        task = asyncio.create_task(conn.ws.close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.sleep(0)  # let the close frame go out

    async def _broadcast(self, payload: dict[str, Any]) -> int:
        text = json.dumps(payload, separators=(",", ":"))
        sent = 0
        for conn in self._open_conns():
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(text)
                sent += 1
        return sent

    def _open_conns(self) -> list[_Conn]:
        with self._lock:
            return [c for c in self._conns.values() if c.info.closed_at is None]

    def _mark_closed(self, conn: _Conn, reason: str) -> None:
        with self._lock:
            if conn.info.closed_at is None:
                conn.info.closed_at = time.time()
                conn.info.close_reason = reason

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now_ms, mono = self.now_ms(), time.monotonic()
            with self._lock:
                due = any(t <= now_ms for t in self._cuts_ms) or any(
                    t <= mono for t in self._cuts_mono
                )
                self._cuts_ms = [t for t in self._cuts_ms if t > now_ms]
                self._cuts_mono = [t for t in self._cuts_mono if t > mono]
                old = [
                    c
                    for c in self._conns.values()
                    if c.info.closed_at is None
                    and self.max_connection_age is not None
                    and mono - c.opened_mono >= self.max_connection_age
                ]
            if due:
                await self._close_all(1001, "24 hour connection limit")
            for conn in old:
                await self._close(conn, 1001, "max connection age")

    # ---- REST -------------------------------------------------------------------------

    def _used_weight(self, mono: float) -> int:
        while self._weights and self._weights[0][0] <= mono - 60:
            self._weights.popleft()
        return sum(w for _, w in self._weights)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        if _parse_streams(request.path) is not None:
            return self._check_stream_url(request.path)
        if not target.path.startswith("/api/"):
            return self._response(404, {"code": -1, "msg": "Not found."})
        params = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        mono, wall = time.monotonic(), time.time()
        endpoint = target.path.removeprefix("/api/v3/")
        weight = WEIGHTS.get(endpoint, 1)
        headers: dict[str, str] = {}
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            injected = self._injected.pop(0) if self._injected and failure is None else None
            if failure is not None:
                self._requests.append(RestRequest(target.path, params, wall, mono, failure[0], 0))
            elif injected is None:
                used = self._used_weight(mono)
                if used + weight > self.weight_limit:
                    wait = self._weights[0][0] + 60 - mono if self._weights else 1.0
                    injected = (429, max(1, int(wait + 0.999)))
                else:
                    self._weights.append((mono, weight))
        if failure is not None:
            h = Headers()
            h["Content-Type"] = "application/json" if failure[1][:1] == "{" else "text/html"
            h["Content-Length"] = str(len(failure[1].encode()))
            h["Connection"] = "close"
            phrase = http.HTTPStatus(failure[0]).phrase
            return Response(failure[0], phrase, h, failure[1].encode())
        if injected is not None:
            status, retry_after = injected
            weight = 0
            headers["Retry-After"] = f"{retry_after:g}"
            if status == 418:
                until = self.now_ms() + int(retry_after * 1000)
                msg = (
                    f"Way too much request weight used; IP banned until {until}. "
                    "Please use WebSocket Streams for live updates to avoid bans."
                )
            else:
                msg = (
                    f"Too many requests; current limit of IP(127.0.0.1) is "
                    f"{self.weight_limit} requests per minute. Please use the websocket "
                    "for live updates to avoid polling the API."
                )
            body: Any = {"code": -1003, "msg": msg}
        else:
            try:
                status, body = 200, self._route(endpoint, params)
            except _HttpError as exc:
                status, body = exc.status, exc.body
            except Exception as exc:
                self._record_error(exc)
                status = 500
                body = {"code": -1000, "msg": "An unknown error occurred while processing."}
        with self._lock:
            self._requests.append(RestRequest(target.path, params, wall, mono, status, weight))
        return self._response(status, body, headers=headers)

    def _response(
        self, status: int, body: Any, *, headers: dict[str, str] | None = None
    ) -> Response:
        data = json.dumps(body, separators=(",", ":")).encode()
        h = Headers()
        h["Content-Type"] = "application/json;charset=UTF-8"
        h["Content-Length"] = str(len(data))
        h["Connection"] = "close"
        with self._lock:
            h["X-MBX-USED-WEIGHT-1M"] = str(self._used_weight(time.monotonic()))
        for k, v in (headers or {}).items():
            h[k] = v
        return Response(status, http.HTTPStatus(status).phrase, h, data)

    def _route(self, endpoint: str, params: dict[str, str]) -> Any:
        if endpoint == "ping":
            return {}
        if endpoint == "time":
            return {"serverTime": self.now_ms()}
        if endpoint == "exchangeInfo":
            return self._exchange_info(params)
        if endpoint == "klines":
            return self._klines(params)
        raise _HttpError(404, -1, "Not found.")

    def _exchange_info(self, params: dict[str, str]) -> dict[str, Any]:
        specs = list(self.data.symbols.values())
        wanted: list[str] | None = None
        if params.get("symbol"):
            wanted = [params["symbol"]]
        elif params.get("symbols"):
            try:
                parsed = json.loads(params["symbols"])
            except ValueError:
                raise _HttpError(
                    400, -1100, "Illegal characters found in parameter 'symbols'."
                ) from None
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                raise _HttpError(400, -1100, "Illegal characters found in parameter 'symbols'.")
            wanted = parsed
        if wanted is not None:
            unknown = [s for s in wanted if s not in self.data.symbols]
            if unknown:
                raise _HttpError(400, -1121, "Invalid symbol.")
            specs = [self.data.symbols[s] for s in wanted]
        if params.get("symbolStatus"):
            specs = [s for s in specs if s.status == params["symbolStatus"]]
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [
                dict(r, limit=self.weight_limit) if r["rateLimitType"] == "REQUEST_WEIGHT" else r
                for r in RATE_LIMITS
            ],
            "exchangeFilters": [],
            "symbols": [s.exchange_info() for s in specs],
        }

    @staticmethod
    def _int_param(params: dict[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        if not PARAM_DIGITS.match(raw):
            raise _HttpError(
                400,
                -1100,
                f"Illegal characters found in parameter '{name}'; "
                "legal range is '^[0-9]{1,20}$'.",
            )
        return int(raw)

    def _klines(self, params: dict[str, str]) -> list[list[Any]]:
        for name in ("symbol", "interval"):
            if not params.get(name):
                raise _HttpError(
                    400,
                    -1102,
                    f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                )
        if params.get("timeZone", "0") not in ("0", "+0", "-0", "0:00", "+00:00"):
            raise _HttpError(400, -1130, "Data sent for parameter 'timeZone' is not valid.")
        limit = self._int_param(params, "limit")
        window = (None, None)
        if not self.ignore_window:
            window = (self._int_param(params, "startTime"), self._int_param(params, "endTime"))
        try:
            return self.data.klines(
                params["symbol"],
                params["interval"],
                *window,
                min(DEFAULT_KLINES if limit is None else limit, self.max_klines or 10**9),
                now=self.now_ms(),
            )
        except KlineQueryError as exc:
            raise _HttpError(400, exc.code, exc.msg) from None

    # ---- WebSocket --------------------------------------------------------------------

    def _check_stream_url(self, target: str) -> Response | None:
        parsed = _parse_streams(target)
        assert parsed is not None
        _, names = parsed
        if not names and self.url_streams_required:
            return self._response(400, {"code": 2, "msg": "Invalid request: no stream"})
        bad = [n for n in names if not STREAM_NAME.match(n)]
        if bad:
            return self._response(
                400, {"code": 2, "msg": f"Invalid request: invalid stream name {bad[0]!r}"}
            )
        if len(names) > self.max_streams:
            with self._lock:
                self._violations.append(
                    Violation(0, "too_many_streams", f"{len(names)} streams in URL", time.time())
                )
            return self._response(400, {"code": 2, "msg": "Invalid request: too many streams"})
        return None

    async def _ws_handler(self, ws: ServerConnection) -> None:
        parsed = _parse_streams(ws.request.path if ws.request else "")
        if parsed is None:  # pragma: no cover - rejected in process_request
            return
        combined, names = parsed
        with self._lock:
            cid = self._next_conn_id
            self._next_conn_id += 1
            info = WsConnection(
                cid,
                ws.request.path if ws.request else "",
                combined,
                list(dict.fromkeys(names)),
                time.time(),
            )
            conn = _Conn(info, ws, time.monotonic(), dict.fromkeys(names), combined=combined)
            self._conns[cid] = conn
            self._connections.append(info)
        pusher = asyncio.create_task(self._push_loop(conn))
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode(errors="replace")
                await self._on_message(conn, text)
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._record_error(exc)
            raise
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pusher
            code = ws.close_code
            self._mark_closed(conn, f"closed {code}" if code is not None else "connection lost")
            with self._lock:
                self._conns.pop(cid, None)

    def _sync_info(self, conn: _Conn) -> None:
        with self._lock:
            conn.info.streams = list(conn.streams)
            conn.info.combined = conn.combined

    async def _on_message(self, conn: _Conn, text: str) -> None:
        mono = time.monotonic()
        with self._lock:
            self._frames.append(WsFrame(conn.info.id, text, time.time(), mono))
        conn.recent.append(mono)
        while conn.recent and conn.recent[0] <= mono - 1.0:
            conn.recent.popleft()
        if len(conn.recent) > self.max_messages_per_second:
            with self._lock:
                self._violations.append(
                    Violation(
                        conn.info.id,
                        "message_rate",
                        f"{len(conn.recent)} messages within one second",
                        time.time(),
                    )
                )
            self._mark_closed(conn, "too many messages")
            await conn.ws.close(1008, "Too many requests")
            return
        if self.control == "ignore":
            return
        if self.control == "close":
            self._mark_closed(conn, "control frames are not taken")
            await conn.ws.close(1003, "unsupported")
            return
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        reply = self._control(conn, text)
        self._sync_info(conn)
        await conn.ws.send(json.dumps(reply, separators=(",", ":")))
        if conn.close_after_reply is not None:
            self._mark_closed(conn, conn.close_after_reply)
            await conn.ws.close(1008, conn.close_after_reply)

    def _control(self, conn: _Conn, text: str) -> dict[str, Any]:
        try:
            msg = json.loads(text)
        except ValueError as exc:
            return {"code": 3, "msg": f"Invalid JSON: {exc}"}
        if not isinstance(msg, dict):
            return {"code": 3, "msg": "Invalid JSON: expected an object"}
        rid = msg.get("id")
        if rid is not None and not (
            (isinstance(rid, int) and not isinstance(rid, bool))
            or (isinstance(rid, str) and REQUEST_ID.match(rid))
        ):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}

        def error(code: int, text: str) -> dict[str, Any]:
            return {"code": code, "msg": text, "id": rid}

        method = msg.get("method")
        if method is None:
            return error(2, "Invalid request: missing field `method`")
        if method not in CONTROL_METHODS:
            expected = ", ".join(f"`{m}`" for m in CONTROL_METHODS)
            return error(
                2, f"Invalid request: unknown variant `{method}`, expected one of {expected}"
            )
        params = msg.get("params", [])
        if not isinstance(params, list):
            return error(2, "Invalid request: params must be an array")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                return error(2, "Invalid request: stream names must be strings")
            bad = [p for p in params if not STREAM_NAME.match(p)]
            if bad:
                return error(2, f"Invalid request: invalid stream name {bad[0]!r}")
            if method == "SUBSCRIBE":
                with self._lock:
                    refuse, self._refusals = self._refusals > 0, max(0, self._refusals - 1)
                if refuse:
                    return error(2, "Invalid request: temporarily refused")
                total = len(conn.streams.keys() | set(params))
                if total > self.max_streams:
                    with self._lock:
                        self._violations.append(
                            Violation(
                                conn.info.id,
                                "too_many_streams",
                                f"{total} streams requested",
                                time.time(),
                            )
                        )
                    conn.close_after_reply = "too many streams"
                    return error(
                        2,
                        f"Invalid request: too many streams, at most "
                        f"{self.max_streams} per connection",
                    )
                conn.streams.update(dict.fromkeys(params))
            else:
                for p in params:
                    conn.streams.pop(p, None)
                    conn.last_open.pop(p, None)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.streams), "id": rid}
        if not params or params[0] != "combined":
            return error(0, "Unknown property")
        if method == "GET_PROPERTY":
            return {"result": conn.combined, "id": rid}
        if len(params) != 2 or not isinstance(params[1], bool):
            return error(1, "Invalid value type: expected Boolean")
        conn.combined = params[1]
        return {"result": None, "id": rid}

    async def _push_loop(self, conn: _Conn) -> None:
        try:
            await self._push_events(conn)
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._record_error(exc)
            await conn.ws.close(1011, "fake exchange error")

    async def _push_events(self, conn: _Conn) -> None:
        while True:
            await asyncio.sleep(self.push_interval)
            with self._lock:
                silent = time.monotonic() < self._silent_until
            if silent:
                continue
            now = self.now_ms()
            for stream in list(conn.streams):
                for event in self._stream_events(conn, stream, now):
                    payload = {"stream": stream, "data": event} if conn.combined else event
                    await conn.ws.send(json.dumps(payload, separators=(",", ":")))

    def _stream_events(self, conn: _Conn, stream: str, now: int) -> list[dict[str, Any]]:
        match = KLINE_STREAM.match(stream)
        if match is None:
            return []
        symbol, interval = match.group(1).upper(), match.group(2)
        spec = self.data.symbols.get(symbol)
        if spec is None or now < spec.listed_at:
            return []
        current = INTERVALS[interval].open_time(now)
        events = []
        previous = conn.last_open.get(stream)
        if previous is not None and previous < current:
            events.append(self.data.kline_event(symbol, interval, previous, now=now))
        events.append(self.data.kline_event(symbol, interval, current, now=now))
        conn.last_open[stream] = current
        return events


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted."""
    parser = argparse.ArgumentParser(description="Fake Binance spot exchange on loopback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--push-interval", type=float, default=2.0)
    parser.add_argument(
        "--now-ms",
        type=int,
        default=None,
        help="run a fake clock from this time (ms) instead of the real clock",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeBinance(host=args.host, port=args.port, push_interval=args.push_interval)
    if args.now_ms is not None:
        fake.set_time(args.now_ms, frozen=False)
    with fake:
        print(f"API_URL={fake.api_url}\nSTREAM_URL={fake.stream_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
