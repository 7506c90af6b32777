"""The ``Provider`` base class: what a provider author subclasses (DESIGN section 3).

A provider runs in its own OS process. Its author writes plain synchronous hooks; the runner
(:mod:`.runner`) calls them: ``init`` once, ``start_streaming``/``on_close`` per client
subscription, ``no_update`` when a key went stale, ``get_history`` on a bounded thread pool.
``get_dataset`` is called by ``populate.py``.

The base class keeps the bookkeeping once for every provider: which keys are streaming and
which clients are subscribed. Providers that prefer it implement ``on_first_subscriber`` and
``on_last_subscriber`` instead of tracking clients. Bars are sent with :meth:`publish`, or with
the seed's ``send_from``/``respond`` ``write_message`` format.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backend.errors import ConfigError
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, to_bar, to_epoch, to_number
from backend.runtime.messages import (
    BarUpdate,
    Changed,
    Clock,
    Event,
    Missed,
    Notice,
    Status,
)

if TYPE_CHECKING:
    from backend.settings import Settings

logger = logging.getLogger(__name__)

Datapoint = dict[str, Any]
# The events send_from() passes on as they are: those of the helpers below (a BarUpdate is
# checked as publish() checks its bar; a Status goes through report_status). The runner's
# own (Ready, Pong, Heartbeat, HistoryReply) are not a provider's to send.
_EVENTS = (Clock, Notice, Changed, Missed)
StreamKey = tuple[str, str]  # (symbol, interval)


class Provider:
    """Base class of every data provider. Override the hooks; call the helpers.

    Set by the runner before ``init()``: ``source`` (the registry key) and ``settings`` (the
    validated :class:`backend.settings.Settings`, one object passed down from the hub;
    providers never read the environment themselves).
    """

    source: str = ""
    #: Intervals this provider serves (used by the default ``get_dataset`` rows of subclasses).
    intervals: Sequence[str] = intervals.INTERVALS
    #: Whether the hub keeps this provider's bars in its SQLite store across restarts.
    #: A provider that reads local files (CSV) sets it to False.
    persist_history: bool = True
    #: Whether its history calls count against the fair-use budgets (the provider's
    #: ``PROVIDER_CALLS_PER_SECOND`` and each client's upstream budget): calls that cost an
    #: upstream API's rate limit. A provider that reads local files (CSV) sets it to False.
    history_budget: bool = True

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._emitter: Callable[[Event], None] | None = None
        self._emit_many: Callable[[list[Event]], None] | None = None
        # Where the provider's own statuses go (the runner's, which keeps the last one);
        # None: with the other events.
        self._status_sink: Callable[[Status], None] | None = None
        # What the thread that called hold_updates() published since (see there).
        self._holder: int | None = None
        self._held: list[Event] = []
        # Guards the bookkeeping below: the runner changes it, provider threads read it.
        self._bookkeeping = threading.Lock()
        self._subscribers: dict[StreamKey, set[int]] = {}
        self._last_publish: dict[StreamKey, float] = {}

    @property
    def settings(self) -> Settings:
        """The server's settings; available from ``init()`` on (and to ``get_dataset``)."""
        if self._settings is None:
            raise ConfigError(f"{type(self).__name__}: settings are attached by the runner")
        return self._settings

    # ------------------------------------------------------------------ hooks to override

    def init(self) -> None:
        """Called once in the provider process before any other hook: open clients, threads."""

    def get_dataset(self) -> Iterable[Mapping[str, Any]]:
        """Return (or yield) the symbol rows of this provider (DESIGN 5.4); used by populate."""
        return []

    def start_streaming(self, ws_client: int, symbol: str, interval: str) -> None:
        """A client (an integer id) subscribed to ``(symbol, interval)``: start sending bars.

        The default does nothing: the base class already called ``on_first_subscriber`` when
        this was the first client of the key.
        """

    def on_close(self, ws_client: int, symbol: str, interval: str) -> None:
        """A client left ``(symbol, interval)``. The default does nothing (see
        ``on_last_subscriber``)."""

    def no_update(self, symbol: str, interval: str) -> None:
        """The key got no update for longer than ``staleness_limit``: restart its stream.

        The default calls ``on_last_subscriber`` and then ``on_first_subscriber``.
        """
        self.on_last_subscriber(symbol, interval)
        self.on_first_subscriber(symbol, interval)

    def get_history(
        self,
        symbol: str,
        interval: str,
        start_time_query: str,
        end_time_query: str,
        count: int,
    ) -> Sequence[Mapping[str, Any]] | Sequence[Bar]:
        """Return bars of ``(symbol, interval)`` with open times in ``[start, end]``, oldest
        first. Times are ``%Y-%m-%d %H:%M:%S`` UTC strings; ``end_time_query`` may be
        ``"now UTC"``. Bars are datapoint dicts (see ``format_datapoint``) or bar tuples.
        Raise :class:`backend.errors.UnknownSymbol` for a symbol the upstream does not know.
        """
        return []

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        """The first client subscribed to ``(symbol, interval)``: start the upstream stream."""

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        """The last client left ``(symbol, interval)``: stop the upstream stream."""

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        """Seconds without an update after which ``no_update`` is called; ``None``: never."""
        return 120.0

    def shutdown(self) -> None:
        """Called once when the process stops: close clients and threads."""

    # ------------------------------------------------------------------ helpers to call

    def publish(
        self,
        symbol: str,
        interval: str,
        bar: Bar | Mapping[str, Any] | Sequence[Any],
        *,
        final: bool = False,
    ) -> None:
        """Send one bar of ``(symbol, interval)`` to every subscriber of that key.

        ``bar`` is a bar tuple ``(t, open, high, low, close, volume)`` (``t`` in UTC seconds
        or milliseconds), a datapoint dict, or a kline-like sequence. ``final`` marks a bar
        that will not change any more. Raises ``ValueError`` for an item that is no bar; an
        impossible one (:func:`~backend.model.bars.flaw`: no price, a high below the low, a
        time outside 1970-9999) is dropped by the hub and logged there.
        """
        parsed = to_bar(bar, SeriesId(self.source, symbol, interval))
        with self._bookkeeping:
            self._last_publish[(symbol, interval)] = time.monotonic()
        self._emit(BarUpdate(symbol, interval, parsed, final))

    def send_from(self, message: Mapping[str, Any] | Event) -> None:
        """Send a message to the hub: a typed event, or the seed's ``write_message`` dict.

        Anything else (a string, a bare kline, an object) is logged and ignored, and so is an
        argument of a ``write_message`` that is no JSON: it never raises into the caller's
        stream thread. Tradiny's ``update_in_cache`` message is accepted and needs nothing:
        the bars of the ``write_message`` that follows it reach the hub's cache too.
        """
        if isinstance(message, Status):
            self.report_status(message.state, message.detail)
            return
        if isinstance(message, BarUpdate):  # checked as publish() checks its bar
            try:
                self.publish(message.symbol, message.interval, message.bar, final=message.final)
            except (ValueError, TypeError) as exc:
                logger.error("%s: send_from() got a BarUpdate that is no bar: %s", self.source, exc)
            return
        if isinstance(message, _EVENTS):
            self._emit(message)
            return
        if not isinstance(message, Mapping):
            # A tuple went to the hub as a bar update and raised in its event loop; an
            # object that cannot be pickled stopped the process's writer thread.
            logger.error(
                "%s: send_from() takes a message dict or an event, not %s %.200r; ignored",
                self.source,
                type(message).__name__,
                message,
            )
            return
        action = message.get("action")
        if action == "write_message":
            self._write_message(message)
        elif action == "update_in_cache":
            # Tradiny's providers send each live bar to the cache with this and then to the
            # clients with write_message; here every published bar is merged into the cache,
            # so the write_message does both and this one has nothing left to do.
            pass
        else:
            logger.error("%s: send_from() got an unknown action %r; ignored", self.source, action)

    respond = send_from

    def format_datapoint(self, symbol: str, interval: str, k: Sequence[Any]) -> Datapoint:
        """The seed's datapoint from a kline-like ``[open_time_ms, o, h, l, c, v]``."""
        t = to_epoch(k[0])
        base = f"{self.source}-{symbol}-{interval}"
        return {
            "date": intervals.format_date(t),
            f"{base}-open": to_number(k[1]),
            f"{base}-high": to_number(k[2]),
            f"{base}-low": to_number(k[3]),
            f"{base}-close": to_number(k[4]),
            f"{base}-volume": to_number(k[5]) if len(k) > 5 else None,
        }

    def report_status(self, state: str, detail: str = "") -> None:
        """Tell the hub about the provider's own state (shown in ``/health``). The last one
        stays the provider's status: while a hook or history call of the provider is stuck
        ``/health`` shows ``stuck`` (naming this one), and this one again once it returns."""
        status = Status(state, detail)
        if self._status_sink is not None:
            self._status_sink(status)
        else:
            self._emit(status)

    def notify(self, symbol: str, interval: str, code: str, message: str) -> None:
        """Send an ``error`` message to the clients subscribed to ``(symbol, interval)``."""
        self._emit(Notice(symbol, interval, code, message))

    def history_changed(self, symbol: str) -> None:
        """Say that bars of ``symbol`` served before changed (a local file rewritten): the
        hub drops what it holds of the symbol and asks again at the next request. Charts
        open meanwhile keep the bars they have until they load them again."""
        self._emit(Changed(symbol))

    def missed(self, symbol: str, interval: str, since: object) -> None:
        """Say that the stream of ``(symbol, interval)`` missed the bars from ``since`` on (a
        time as :meth:`publish` takes it: the open time of the first bar that may be missing
        or partial) and that they were not fetched: a reconnect whose gap could not be
        filled now. Call it before publishing the live bars after the gap. The hub then
        counts nothing of the key from ``since`` on as known (neither the gap nor the bars
        the stream sends after it) until a history answer covers it: the next ``data_init``
        or history request asks ``get_history`` for it, also after a restart. Publishing the
        missed bars later (``final=True``) is still right: they reach the cache and store."""
        self._emit(Missed(symbol, interval, to_epoch(since)))

    def hold_updates(self) -> None:
        """Hold what this thread publishes until it calls :meth:`release_updates`.

        For a provider thread that handles bursts (an event loop reading a socket that
        carries many streams): hold at the start of a burst, release at its end (for an
        asyncio loop, ``loop.call_soon(self.release_updates)`` on the first update of a
        turn), and the burst reaches the hub in one pipe write, and each client in one
        socket write, instead of one at a time. Other threads publish as usual meanwhile.
        """
        with self._bookkeeping:
            if self._holder is not None and self._holder != threading.get_ident():
                raise ConfigError(f"{self.source}: hold_updates() is held by another thread")
            self._holder = threading.get_ident()

    def release_updates(self) -> None:
        """Send what was held since :meth:`hold_updates` (in order) and stop holding."""
        with self._bookkeeping:
            if self._holder != threading.get_ident():
                return
            held, self._held, self._holder = self._held, [], None
        if not held:
            return
        if self._emit_many is not None:
            self._emit_many(held)
        else:
            for event in held:
                self._emit(event)

    def set_clock(
        self,
        symbol: str | None,
        origin_data: float,
        speed: float,
        origin_wall: float | None = None,
    ) -> None:
        """Declare that ``symbol``'s data time was ``origin_data`` (UTC seconds) at wall time
        ``origin_wall`` (default: now) and runs at ``speed``
        data seconds per wall second."""
        if origin_wall is None:
            origin_wall = time.time()
        self._emit(Clock(symbol, origin_wall, origin_data, speed))

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def subscribers(self, symbol: str, interval: str) -> frozenset[int]:
        """The client ids currently subscribed to ``(symbol, interval)`` (any thread)."""
        with self._bookkeeping:
            return frozenset(self._subscribers.get((symbol, interval), ()))

    def streaming_keys(self) -> list[StreamKey]:
        """The ``(symbol, interval)`` keys that have at least one subscriber (any thread)."""
        with self._bookkeeping:
            return [key for key, clients in self._subscribers.items() if clients]

    # ------------------------------------------------------------------ runner plumbing

    def _attach(
        self,
        source: str,
        settings: Settings,
        emit: Callable[[Event], None],
        emit_many: Callable[[list[Event]], None] | None = None,
        status: Callable[[Status], None] | None = None,
    ) -> None:
        if "_bookkeeping" not in vars(self):
            # The subclass's own __init__ did not call super().__init__() (as plain classes
            # are written): its process died on the first use of the bookkeeping.
            Provider.__init__(self)
        if not self.source:
            self.source = source
        self._settings = settings
        self._emitter = emit
        self._emit_many = emit_many
        self._status_sink = status

    def _emit(self, event: Event) -> None:
        if self._holder is not None and self._holder == threading.get_ident():
            self._held.append(event)
            return
        if self._emitter is None:
            logger.warning("%s: event sent outside a provider process: %r", self.source, event)
            return
        self._emitter(event)

    def _subscribe(self, client: int, symbol: str, interval: str) -> None:
        key = (symbol, interval)
        with self._bookkeeping:
            clients = self._subscribers.setdefault(key, set())
            if client in clients:
                return
            first = not clients
            clients.add(client)
            if first:
                self._last_publish[key] = time.monotonic()
        if first:
            self.on_first_subscriber(symbol, interval)
        self.start_streaming(client, symbol, interval)

    def _unsubscribe(self, client: int, symbol: str, interval: str) -> None:
        key = (symbol, interval)
        with self._bookkeeping:
            clients = self._subscribers.get(key)
            if not clients or client not in clients:
                return
            clients.discard(client)
            last = not clients
            if last:
                del self._subscribers[key]
                self._last_publish.pop(key, None)
        self.on_close(client, symbol, interval)
        if last:
            self.on_last_subscriber(symbol, interval)

    def _stale_keys(self, now: float) -> list[StreamKey]:
        stale = []
        for key in self.streaming_keys():
            limit = self.staleness_limit(*key)
            with self._bookkeeping:
                last = self._last_publish.get(key, now)
                if limit is not None and now - last > limit:
                    stale.append(key)
                    self._last_publish[key] = now
        return stale

    def _write_message(self, message: Mapping[str, Any]) -> None:
        symbol = str(message.get("name", ""))
        interval = str(message.get("interval", ""))
        args = message.get("args") or ()
        if isinstance(args, str | bytes | Mapping) or not isinstance(args, Iterable):
            args = [args]  # one argument given bare, not in a list
        for raw in args:
            try:
                payload = json.loads(raw) if isinstance(raw, str | bytes) else raw
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                logger.warning("%s: write_message: no JSON (%s): %.200r", self.source, exc, raw)
                continue
            if not isinstance(payload, Mapping) or payload.get("type") != "data_update":
                logger.warning("%s: write_message without a data_update: %.200r", self.source, raw)
                continue
            data = payload.get("data")
            points = data if isinstance(data, list) else [data]
            for point in points:
                if not isinstance(point, Mapping):
                    continue
                try:
                    self.publish(
                        str(payload.get("name", symbol)),
                        str(payload.get("interval", interval)),
                        point,
                    )
                except ValueError as exc:  # one bad point: the others of the message go on
                    logger.warning("%s: write_message: %s", self.source, exc)
