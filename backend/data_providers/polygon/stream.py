"""Polygon WebSocket streams: one connection per cluster for the whole process, one thread.

Owns the event-loop thread, the sockets, the handshake, the live subscriptions and the
reconnect policy. Polygon allows one connection per cluster and key (a second one evicts the
first with ``max_connections``), so each cluster (``stocks``, ``crypto``, ``forex``, ...) gets
one :class:`ClusterConnection`, opened when its first ticker is watched and kept until
:meth:`PolygonStreams.stop`; tickers are subscribed and unsubscribed on it as they come and go.

* A dropped connection (network error, abnormal close, silence past the ping timeout) is
  reopened after 1 s, doubling to 60 s while it keeps failing, with jitter; every topic is
  subscribed again and the handler hears ``on_connected(reconnect=True)`` to refetch the gap.
* ``auth_failed`` and ``max_connections`` are reported (``on_state``) and retried after 5 s,
  doubling to 5 min: never a tight loop, nor a quick eviction war with another program that
  uses the same key. A refusal after ``auth_success`` (a plan without the cluster, answered
  to the first subscribe on a socket Polygon leaves open) closes the socket and is the same.
* Delays reset once a connection has stayed up for :data:`STABLE_SECONDS`.

Uses the ``websockets`` library directly, not polygon-api-client's ``WebSocketClient``: that
client reconnects at once after a 1008 close (so two processes on one key would evict each
other in a loop), hides status frames such as ``max_connections`` unless run raw, retries
failed connects forever inside ``websockets`` without telling us, and applies live
``subscribe()`` calls only from its own thread once a second. Frames are parsed by
:mod:`backend.data_providers.polygon.wire`. Owns no bars.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from backend.data_providers.polygon.bars import Market, market_of
from backend.data_providers.polygon.wire import (
    CLUSTERS,
    LiveAgg,
    StatusEvent,
    auth_message,
    parse_frame,
    stream_url,
    subscription_messages,
    topic,
)

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
GREETING_WAIT = 2.0  # a server that sends no ``connected`` status is sent the auth after this
PING_INTERVAL = PING_TIMEOUT = 20.0
STABLE_SECONDS = 60.0
DROP_BACKOFF = (1.0, 60.0)  # first and longest delay after a dropped connection
REJECT_BACKOFF = (5.0, 300.0)  # ... after auth_failed or max_connections


class ClusterState(enum.StrEnum):
    """The lifecycle of one cluster connection, as reported to ``/health``; best first."""

    CONNECTED = "connected"
    CONNECTING = "connecting"
    RECONNECTING = "reconnecting"
    MAX_CONNECTIONS = "max_connections"
    AUTH_FAILED = "auth_failed"


REJECTIONS = frozenset((ClusterState.AUTH_FAILED, ClusterState.MAX_CONNECTIONS))
_MARKET_OF_CLUSTER: dict[str, Market] = {cluster: m for m, cluster in CLUSTERS.items()}


class StreamHandler(Protocol):
    """What a :class:`PolygonStreams` reports to (called on the stream thread)."""

    def on_aggregates(self, aggs: list[LiveAgg]) -> None: ...
    def on_connected(self, market: Market, reconnect: bool) -> None: ...
    def on_state(self, cluster: str, state: str, detail: str) -> None: ...


class Rejected(Exception):
    """Polygon refused the connection: ``auth_failed`` or ``max_connections``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Backoff:
    """Delays that double from ``first`` to ``longest``, each scaled by a random 0.8-1.2."""

    def __init__(
        self, first: float, longest: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.first, self.longest, self._rng = first, longest, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.longest, self.first * 2**self.failures)
        self.failures += 1
        return float(delay * (0.8 + 0.4 * self._rng()))

    def reset(self) -> None:
        self.failures = 0


class ClusterConnection:
    """The one connection to one cluster; lives on the stream thread's event loop."""

    def __init__(self, cluster: str, url: str, api_key: str, handler: StreamHandler) -> None:
        self.cluster, self.url = cluster, url
        self.market = _MARKET_OF_CLUSTER[cluster]
        self._key = api_key
        self._handler = handler
        self.topics: set[str] = set()  # wanted
        self._sent: set[str] = set()  # subscribed on the current socket
        self._dirty = asyncio.Event()
        self._drops = Backoff(*DROP_BACKOFF)
        self._rejects = Backoff(*REJECT_BACKOFF)
        self._connected_at: float | None = None
        self._ever_connected = False
        self._rejection: Rejected | None = None

    def want(self, topics: set[str]) -> None:
        """Set the wanted topics (on the loop thread); the writer sends the difference."""
        self.topics = topics
        self._dirty.set()

    async def run(self) -> None:
        """Connect, stream, and reconnect forever (until cancelled)."""
        self._state(ClusterState.CONNECTING, self.url)
        while True:
            reason, backoff = await self._attempt()
            if self._connected_at is not None:
                if time.monotonic() - self._connected_at >= STABLE_SECONDS:
                    self._drops.reset()
                    self._rejects.reset()
                self._connected_at = None
            delay = backoff.next()
            logger.info("polygon %s: disconnected (%s); reconnecting in %.1f s",
                        self.cluster, reason, delay)  # fmt: skip
            state = ClusterState(self._rejection.status) if self._rejection else None
            self._state(state or ClusterState.RECONNECTING, f"{reason}; retrying in {delay:.0f} s")
            self._rejection = None
            await asyncio.sleep(delay)

    async def _attempt(self) -> tuple[str, Backoff]:
        """One connection, until it ends: why it ended, and which delays apply."""
        try:
            await self._session()
        except Rejected as exc:
            return str(exc), self._rejects
        except TimeoutError:  # its text is empty: say which wait ran out
            return f"no handshake within {HANDSHAKE_TIMEOUT:g} s (TimeoutError)", self._drops
        except (OSError, WebSocketException, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}", self._drops
        except Exception as exc:  # the task's top: log the traceback, reconnect later
            logger.exception("polygon %s: the stream failed", self.cluster)
            return f"{type(exc).__name__}: {exc}", self._drops
        return "closed by the server", self._drops

    async def _session(self) -> None:
        async with connect(
            self.url,
            open_timeout=HANDSHAKE_TIMEOUT,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            close_timeout=2,
            max_size=None,
        ) as ws:
            await self._handshake(ws)
            self._connected_at = time.monotonic()
            logger.info("polygon %s: connected to %s", self.cluster, self.url)
            self._state(ClusterState.CONNECTED, self.url)
            self._handler.on_connected(self.market, self._ever_connected)
            self._ever_connected = True
            await self._pump(ws)
        if self._rejection is not None:
            raise self._rejection

    async def _pump(self, ws: ClientConnection) -> None:
        """Read frames while a writer task sends the subscription changes, until closed."""
        self._sent = set()
        self._dirty.set()
        writer = asyncio.get_running_loop().create_task(self._write(ws))
        try:
            async for frame in ws:
                self._on_frame(frame)
                if self._rejection is not None:  # refused after auth_success: no data will
                    break  # come on this socket (Polygon may leave it open); retry later
        except ConnectionClosed:
            if self._rejection is None:
                raise
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    async def _handshake(self, ws: ClientConnection) -> None:
        """Wait for ``connected``, authenticate; raise :class:`Rejected` when refused, and
        ``TimeoutError`` when it is not done within ``HANDSHAKE_TIMEOUT`` in all (a server
        that keeps sending statuses but never ``auth_success`` is not waited on forever).
        A server that sends no greeting (some relays and emulators wait for the auth) gets
        the auth after ``GREETING_WAIT``."""
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            try:
                async with asyncio.timeout(GREETING_WAIT):
                    greeting = await ws.recv()  # cancellation-safe: nothing is lost
            except TimeoutError:
                logger.info("polygon %s: no connected status; sending the auth", self.cluster)
            else:
                self._check(greeting)
            await ws.send(auth_message(self._key))
            while True:
                statuses = self._check(await ws.recv())
                if any(s.status == "auth_success" for s in statuses):
                    return

    def _check(self, frame: str | bytes) -> list[StatusEvent]:
        """The statuses of a handshake frame; raise :class:`Rejected` on a refusal. Polygon
        documents ``auth_failed``; an ``error`` status about the auth before
        ``auth_success`` (``"authentication failed"``, as some servers and relays send) is
        the same refusal, retried with the auth backoff and reported as ``auth_failed``."""
        statuses, _ = parse_frame(self.cluster, frame)
        for status in statuses:
            refused = status.status
            if refused == "error" and "auth" in status.message.lower():
                refused = ClusterState.AUTH_FAILED
            if refused in REJECTIONS:
                self._rejection = Rejected(refused, status.message)
                raise self._rejection
        return statuses

    async def _write(self, ws: ClientConnection) -> None:
        """Send subscribe/unsubscribe messages whenever the wanted topics change."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            added, removed = self.topics - self._sent, self._sent - self.topics
            for message in subscription_messages("subscribe", added):
                await ws.send(message)
            for message in subscription_messages("unsubscribe", removed):
                await ws.send(message)
            self._sent = (self._sent | added) - removed
            if added or removed:
                logger.debug("polygon %s: +%d -%d topics (%d subscribed)",
                             self.cluster, len(added), len(removed), len(self._sent))  # fmt: skip

    def _on_frame(self, frame: str | bytes) -> None:
        try:
            statuses, aggs = parse_frame(self.cluster, frame)
        except ValueError:
            logger.warning("polygon %s: unreadable frame %.200r", self.cluster, frame)
            return
        for status in statuses:
            if status.status in REJECTIONS:
                self._rejection = Rejected(status.status, status.message)
                logger.warning("polygon %s: %s", self.cluster, self._rejection)
            elif status.status == "error":
                logger.warning("polygon %s: server error: %s", self.cluster, status.message)
        if aggs:
            try:
                self._handler.on_aggregates(aggs)
            except Exception:  # per frame: a handler bug loses this frame, not the stream
                logger.exception("polygon %s: handling %d aggregates failed", self.cluster,
                                 len(aggs))  # fmt: skip

    def _state(self, state: ClusterState, detail: str) -> None:
        """The one transition: report the new state to the handler."""
        logger.debug("polygon %s: %s (%s)", self.cluster, state, detail)
        self._handler.on_state(self.cluster, state, detail)


class PolygonStreams:
    """Every cluster connection of the process, on one event-loop thread; thread-safe API."""

    def __init__(self, ws_base: str, api_key: str, handler: StreamHandler) -> None:
        stream_url(ws_base, "stocks")  # raises ConfigError for a bad POLYGON_WS_URL
        self.ws_base, self._key, self._handler = ws_base, api_key, handler
        self._lock = threading.Lock()
        self._wanted: dict[str, set[str]] = {}  # cluster -> topics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[str, ClusterConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, ticker: str) -> None:
        """Receive the per-second aggregates of ``ticker``."""
        self._change(ticker, add=True)

    def unwatch(self, ticker: str) -> None:
        """Stop receiving ``ticker``."""
        self._change(ticker, add=False)

    def _change(self, ticker: str, add: bool) -> None:
        cluster = CLUSTERS[market_of(ticker)]
        with self._lock:
            topics = self._wanted.setdefault(cluster, set())
            if add:
                topics.add(topic(cluster, ticker))
            else:
                topics.discard(topic(cluster, ticker))
            loop = self._start()
            loop.call_soon_threadsafe(self._apply, cluster, set(topics))

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="polygon-stream", daemon=True
            )
            self._thread.start()
        return self._loop

    def _apply(self, cluster: str, topics: set[str]) -> None:
        """On the loop: hand the topics to the cluster's connection, opening it if needed."""
        connection = self._connections.get(cluster)
        if connection is None:
            url = stream_url(self.ws_base, cluster)
            connection = ClusterConnection(cluster, url, self._key, self._handler)
            self._connections[cluster] = connection
            task = asyncio.get_running_loop().create_task(connection.run(), name=cluster)
            self._tasks.add(task)
            task.add_done_callback(self._done)
        connection.want(topics)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("polygon %s: stream task ended", task.get_name(),
                         exc_info=task.exception())  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and stop the thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._cancel_all(), loop)
        with contextlib.suppress(TimeoutError):
            future.result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    async def _cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        logger.info("polygon: streams stopped")


_SEVERITY = tuple(ClusterState)  # from best to worst


def combined_status(clusters: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """One provider status from every cluster's ``(state, detail)``: the worst state leads
    (``auth_failed``, ``max_connections``, ``reconnecting``, ``connecting``); ``ok`` when
    every cluster is connected."""
    if not clusters:
        return "ok", "no stream open"
    worst = max((state for state, _ in clusters.values()), key=_rank)
    detail = "; ".join(
        f"{cluster}: {state}" + (f" ({detail})" if state != "connected" else "")
        for cluster, (state, detail) in sorted(clusters.items())
    )
    return ("ok" if worst == "connected" else worst), detail


def _rank(state: str) -> int:
    return _SEVERITY.index(state) if state in _SEVERITY else 0
