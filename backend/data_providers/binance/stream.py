"""Binance combined kline streams: one asyncio loop on one thread, many connections.

python-binance's socket managers cannot send live SUBSCRIBE/UNSUBSCRIBE frames, so the
streams use the ``websockets`` library directly: a deliberate departure from "python-binance
for streams" (REST still goes through python-binance, :mod:`backend.data_providers.binance.rest`).

:class:`StreamManager` runs one asyncio loop on one background thread of the provider
process. The control thread calls :meth:`~StreamManager.subscribe`, ``unsubscribe`` and
``restart`` (thread-safe); the manager spreads the streams over
:class:`.connection.Connection` objects, at most ``max_streams`` (Binance:
1024) each, opening another one when all are full and closing one that carries nothing. It
keeps connection attempts under Binance's 300 per 5 minutes, hands stream payloads to
``on_event`` and resumed streams to ``on_resume`` (both on the loop thread), and reports
``ok``/``reconnecting`` to ``on_state``. It does not parse bars and makes no REST calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from backend.data_providers.binance.connection import Connection
from backend.data_providers.binance.pacing import RollingLimiter, StreamTuning
from backend.data_providers.binance.parse import stream_base

__all__ = ["StreamManager"]

logger = logging.getLogger(__name__)

EventSink = Callable[[Mapping[str, Any]], None]
ResumeSink = Callable[[list[str]], None]
RefusalSink = Callable[[list[str], str], None]
StateSink = Callable[[str, str], None]


class StreamManager:
    """Combined-stream connections to Binance on one background thread."""

    def __init__(
        self,
        base_url: str,
        on_event: EventSink,
        on_resume: ResumeSink,
        on_state: StateSink | None = None,
        tuning: StreamTuning | None = None,
        bursts: tuple[Callable[[], None], Callable[[], None]] | None = None,
        on_refused: RefusalSink | None = None,
    ) -> None:
        self.url = stream_base(base_url) + "/stream"
        self.tuning = tuning or StreamTuning()
        self.on_event, self.on_resume = on_event, on_resume
        self.on_refused: RefusalSink = on_refused or (lambda names, error: None)
        self._on_state = on_state or (lambda state, detail: None)
        self._connections: list[Connection] = []
        self._owner: dict[str, Connection] = {}
        self._numbers = itertools.count(1)
        self.ids: Iterator[int] = itertools.count(1)
        self.connect_limiter = RollingLimiter(self.tuning.connects, self.tuning.connect_window)
        self._state = ("ok", "")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # (hold, release): called around the events delivered in one turn of the loop, so
        # that the provider hands them to the hub together (Provider.hold_updates).
        self._bursts = bursts
        self._in_burst = False

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="binance-streams", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and stop the loop thread."""
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is None or stopped is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopped.set)
        thread.join(timeout)

    def subscribe(self, names: Iterable[str]) -> None:
        self._call(self._subscribe, list(names))

    def unsubscribe(self, names: Iterable[str]) -> None:
        self._call(self._unsubscribe, list(names))

    def restart(self, names: Iterable[str]) -> None:
        """Unsubscribe and subscribe again (a stream that went quiet)."""
        self._call(self._restart, list(names))

    def _call(self, method: Callable[[list[str]], None], names: list[str]) -> None:
        if self._loop is None:
            raise RuntimeError("StreamManager.start() was not called")
        self._loop.call_soon_threadsafe(method, names)

    # ------------------------------------------------------------------ loop thread

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # the thread's top: nothing above can handle it; say so loudly
            logger.exception("binance streams: the stream thread failed; live updates stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._ready.set()
        await self._stopped.wait()
        connections, self._connections = self._connections, []
        self._owner.clear()
        for conn in connections:
            conn.task.cancel()
        await asyncio.gather(*(c.task for c in connections), return_exceptions=True)

    def _subscribe(self, names: list[str]) -> None:
        for name in names:
            if name in self._owner:
                continue
            conn = next((c for c in self._connections if c.room()), None)
            if conn is None:
                conn = Connection(self, next(self._numbers))
                self._connections.append(conn)
            self._owner[name] = conn
            conn.add(name)

    def _unsubscribe(self, names: list[str]) -> None:
        for name in names:
            conn = self._owner.pop(name, None)
            if conn is None:
                continue
            conn.remove(name)
            if not conn.wanted:
                conn.task.cancel()
                self._connections.remove(conn)
                self.state_changed()

    def _restart(self, names: list[str]) -> None:
        for name in names:
            conn = self._owner.get(name)
            if conn is not None:
                conn.restart(name)

    def deliver(self, data: Mapping[str, Any]) -> None:
        if self._bursts is not None and not self._in_burst:
            self._in_burst = True
            self._bursts[0]()
            asyncio.get_running_loop().call_soon(self._end_burst)
        try:
            self.on_event(data)
        except Exception:  # a handler bug must not end the socket: log it, drop the event
            logger.exception("binance stream: event handler failed on %.200r", data)

    def _end_burst(self) -> None:
        self._in_burst = False
        if self._bursts is not None:
            self._bursts[1]()

    def resume(self, names: list[str]) -> None:
        try:
            self.on_resume(names)
        except Exception:  # a handler bug must not stop the reconnect: log it, go on
            logger.exception("binance stream: resume handler failed for %d streams", len(names))

    def refused(self, names: list[str], error: str) -> None:
        """Binance refused to subscribe ``names`` (the connection sends them again)."""
        wanted = [name for name in names if name in self._owner]
        if not wanted:
            return
        try:
            self.on_refused(wanted, error)
        except Exception:  # a handler bug must not stop the retry: log it, go on
            logger.exception("binance stream: refusal handler failed for %d streams", len(names))

    def state_changed(self) -> None:
        """Report ``reconnecting`` while a connection that was up, or failed, is down."""
        down = [c.number for c in self._connections if not c.up and (c.was_up or c.failures)]
        state = ("reconnecting", f"stream connections {down} reconnecting") if down else ("ok", "")
        if state != self._state:
            self._state = state
            self._on_state(*state)
