"""The hub: the state of one hub process, and the facade the transports drive.

It holds the parts and wires them together: the :class:`Subscriptions` registry (who is
subscribed to what), :class:`Upstream` (what the providers were told to stream, with the
linger), :class:`Fanout` (live bars to outboxes and listeners), :class:`Requests` (client
requests, in order), :class:`Upkeep` (the once-a-second housekeeping), the providers
(:class:`Supervisor`), history (:class:`HistoryPlanner` over the :class:`BarCache`), and
the indicators and scans (:class:`Indicating`, :class:`Scanning`), alerts and the AI chat
(:class:`Alerting`, :class:`Chatting`).
Nothing here awaits a client's socket.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.errors import ProviderUnavailable
from backend.history.cache import BarCache
from backend.history.planner import HistoryPlanner
from backend.hub.alerting import Alerting
from backend.hub.chatting import Chatting
from backend.hub.clients import Client, Replies
from backend.hub.fanout import Fanout
from backend.hub.handles import ProviderSet, ProviderSetFactory, ReportsBus
from backend.hub.indicating import Indicating
from backend.hub.listeners import BarListener, Listeners
from backend.hub.metrics import Metrics
from backend.hub.refill import Refills
from backend.hub.requests import Requests
from backend.hub.scanning import Scanning
from backend.hub.stalls import StallProbe, enable_debug
from backend.hub.subscriptions import Change, Subscriptions
from backend.hub.upkeep import TICK_SECONDS, Upkeep
from backend.hub.upstream import CallLater, Upstream, loop_call_later
from backend.hub.watches import Watches
from backend.indicators.registry import Indicators, build_indicators
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, WireKeys
from backend.runtime.clocks import Clocks
from backend.runtime.messages import WireEvent
from backend.runtime.supervisor import Supervisor, unserved
from backend.symbols.index import MAX_SEARCH_LIMIT
from backend.tasks import cancel_owned
from backend.wire import protocol
from backend.wire.frames import text_frame
from backend.wire.outbox import Outbox

if TYPE_CHECKING:
    from backend.history.store import BarStore
    from backend.settings import Settings
    from backend.symbols.index import SymbolIndex

__all__ = ["Client", "Hub"]

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
# Reply jobs (history, search) pending per client; more wait, so one frame of a hundred
# large ``data`` requests is answered a few at a time instead of all in memory at once.
MAX_REPLIES_IN_FLIGHT = 8


@functools.cache
def _indicators(extra: tuple[str, ...]) -> Indicators:
    """The registry for hubs built without one (tests): built once per process, it holds no
    state of a hub."""
    return build_indicators(extra)


def _departed(code: int, reason: str) -> None:
    """The ``kick`` of a client that is gone already."""


class Hub:
    """The state of one hub process; created by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        symbols: SymbolIndex,
        metrics: Metrics,
        store: BarStore | None = None,
        indicators: Indicators | None = None,
        *,
        providers: ProviderSetFactory = Supervisor,
        call_later: CallLater = loop_call_later,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.settings = settings
        self.symbols = symbols
        self.metrics = metrics
        self.store = store
        self.subs = Subscriptions()
        self.clients: dict[int, Client] = {}
        self.listeners = Listeners()
        self.cache = BarCache()
        self.clocks = Clocks()
        self.fanout = Fanout(
            self.cache, self.subs, self.listeners, self.clocks, metrics, store, self._kick
        )
        self.supervisor: ProviderSet = providers(
            settings, self.fanout.on_provider_events, self.on_provider_ready
        )
        self.fanout.providers = self.supervisor
        if isinstance(self.supervisor, Supervisor):  # its processes' pipes are read here
            self.supervisor.on_wakeup(self.fanout.begin_wakeup, self.fanout.end_wakeup)
        self.fanout.client_of = self.clients.get
        self.upstream = Upstream(
            self.subs,
            self.supervisor.get,
            settings.STREAM_LINGER_SECONDS,
            call_later,
            self._stream_stopped,
        )
        # Keys polled "until now" (UDF) streamed for a while, so the polls read a live cache.
        self.watches = Watches(self.subs, self.upstream, call_later=call_later)
        # Access control (backend.access, set by the app): charge a history call that reaches
        # a provider to the current caller (raises RateLimited), and may it read a key.
        self.admit_fetch: Callable[[SeriesId], None] | None = None
        self.may_read: Callable[[SeriesId], bool] | None = None
        # Access control (backend/access): seconds until the caller may send another frame
        # (0: now), and why the caller may not add a subscription (None: it may).
        self.admit_frame: Callable[[], float] | None = None
        self.admit_subscription: Callable[[int], str | None] | None = None
        # Access control (backend/access), set only with AUTH on: the current caller's client
        # (its API key's or token's). Alert quotas, chat budgets and conversations count per
        # it; without credentials, per address (and per socket).
        self.credential_client: Callable[[], str] | None = None
        # Access control: the current caller's limit of subscriptions (None: none applies);
        # also bounds the series its alerts read (``Alerting``).
        self.subscription_limit: Callable[[], int | None] | None = None
        self._unready: set[str] = set()  # providers not ready within HISTORY_TIMEOUT (_persists)
        self.planner = HistoryPlanner(self.cache, self._fetch, self.clocks, store, self._persists)
        self.planner.after_request = self.enforce_memory
        self.refills = Refills(self.cache, self.fanout, self._refetch, settings.MAX_COUNT)
        self.fanout.refill = lambda key: self.refills.start([key], restart=False) == 1
        self.fanout.history_changed = self.history_changed
        self.requests = Requests(self)
        if indicators is None:
            indicators = _indicators(tuple(settings.EXTRA_INDICATORS))
        self.indicating = Indicating(self, indicators, self._kick)
        self.scanning = Scanning(self, self.indicating)
        self.alerting = Alerting(self)  # opened by the app (it needs the DB file)
        self.chatting = Chatting(self)
        self.indicating.attach(self.fanout)
        self.upkeep = Upkeep(
            [self._close_slow_clients, self._bound_cache, self.chatting.forget_departed],
            [self._apply_retention],
            tick_seconds,
            lambda: metrics.inc("candlewire_internal_errors_total"),
        )
        self.stalls = StallProbe(settings.LOOP_PROBE_SECONDS, settings.LOOP_STALL_LOG_MS / 1000)
        self.stalls.register(metrics)
        self.started_at = time.time()
        self._ids = itertools.count(1)
        # updates replaced in the outboxes of clients that left (``conflated``)
        self._departed_conflations = 0
        self._register_gauges()

    @property
    def deliver(self) -> dict[SeriesId, dict[int, Client]]:
        """Which clients get the ``data_update`` frames of a key (see ``Fanout``)."""
        return self.fanout.deliver

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.settings.LOOP_DEBUG:
            slow = self.settings.LOOP_STALL_LOG_MS / 1000 or 0.01
            enable_debug(asyncio.get_running_loop(), slow)
        await self.supervisor.start()
        self.upkeep.start()
        self.stalls.start()

    async def stop(self) -> None:
        await cancel_owned(self.refills.tasks)
        await self.scanning.stop_all()
        await self.alerting.close()
        await self.chatting.close()
        await self.upkeep.stop()
        await self.stalls.stop()
        self.watches.stop()
        self.upstream.stop()
        for client in self.clients.values():
            client.replies.cancel()
        await self.supervisor.stop()

    def _bound_cache(self) -> None:
        keep = set(self.subs.keys())
        evicted = self.cache.evict_idle(self.settings.CACHE_IDLE_SECONDS, keep)
        self._forget(evicted + self.cache.enforce(self.settings.CACHE_MAX_BARS, keep))

    def _forget(self, keys: list[SeriesId]) -> None:
        for key in keys:
            self.planner.forget(key)
            self.fanout.forget(key)

    def enforce_memory(self) -> None:
        """Keep the cache under ``CACHE_MAX_BARS`` (after a request that loaded many bars)."""
        keep = set(self.subs.keys())
        self._forget(self.cache.enforce(self.settings.CACHE_MAX_BARS, keep))

    async def _apply_retention(self) -> None:
        retention = self.settings.retention()
        if not retention:
            return
        now = time.time()
        cutoffs = {interval: int(now - days * 86400) for interval, days in retention.items()}
        for series in self.cache.all():
            cutoff = cutoffs.get(series.key.interval)
            if cutoff is not None:
                series.drop_before(cutoff)
        if self.store is not None:
            removed = await self.store.apply_retention(cutoffs)
            if removed:
                logger.info("retention: removed %d bars older than their interval's limit", removed)

    async def _persists(self, source: str) -> bool:
        """Whether ``source`` keeps its bars in the store, once it is ready. A provider not
        ready within ``HISTORY_TIMEOUT`` (starting, restarting, no node holds it) is marked
        unready until it is: its history calls then fail at once (:meth:`_fetch`), so a
        chart gets what the store has and its error after one timeout, not two, and the
        next requests do not wait again."""
        provider = self.supervisor.get(source)
        if provider is None:
            return False
        timeout = self.settings.HISTORY_TIMEOUT
        if source not in self._unready and not await provider.wait_ready(timeout):
            self._unready.add(source)
            logger.warning(
                "provider %s was not ready within %g s: its history calls fail at once until it is",
                source,
                timeout,
            )
        return provider.persist

    def _check_ready(self, source: str) -> None:
        if source in self._unready:
            raise ProviderUnavailable(
                f"provider {source!r} is not ready (it was not within "
                f"{self.settings.HISTORY_TIMEOUT:g} s)"
            )

    # ------------------------------------------------------------------ clients

    def add_client(self, peer: str, kick: Callable[[int, str], None]) -> Client | None:
        """Register a connection; None when ``MAX_CLIENTS`` is reached."""
        if len(self.clients) >= self.settings.MAX_CLIENTS:
            self.metrics.inc("candlewire_clients_rejected_total")
            return None
        client_id = next(self._ids)
        replies = Replies(MAX_REPLIES_IN_FLIGHT, f"client {client_id}")
        outbox = Outbox(self.settings.OUTBOX_MAX_MESSAGES, max_bytes=self.settings.OUTBOX_MAX_BYTES)
        client = Client(client_id, peer, outbox, kick, replies)
        replies.on_failure = lambda error, request: self._reply_failed(client, request)
        self.clients[client.id] = client
        self.metrics.inc("candlewire_connections_total")
        logger.info("client %d connected from %s (%d clients)", client.id, peer, len(self.clients))
        return client

    def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        client.replies.cancel()
        client.replies.on_failure = None  # its closure refers to the client
        # What it had not received is dropped now, and the client's objects no longer refer
        # to each other (outbox <-> writer, client <-> connection): they are freed at once.
        self._departed_conflations += client.outbox.conflations
        client.outbox.close()
        client.kick = _departed
        self.listeners.drop(client.id)
        self.indicating.drop_client(client.id)
        self.scanning.stop(client.id)
        self.chatting.drop_client(client.id)
        for key, _ in self.subs.drop_client(client.id):
            self.fanout.stop_delivery(client.id, key)
            self.upstream.sync(key, client.id)
        logger.info("client %d disconnected (%d clients)", client.id, len(self.clients))

    async def search_symbols(
        self, query: str, limit: int, source: str | None = None
    ) -> list[dict[str, Any]]:
        """The symbol search (:meth:`SymbolIndex.search`) less the rows the current caller
        may not read (a token's ``sources`` / ``symbols``; every row without access
        control): what a restricted token sees of the others, it may not have. When rows it
        may not read fill ``limit``, more are asked for (four times as many each round, up
        to ``MAX_SEARCH_LIMIT``), so the rows it may read are found past them."""
        results = await self.symbols.search(query, limit, source)
        may_read = self.may_read
        if may_read is None:
            return results
        asked = min(max(limit, 0), MAX_SEARCH_LIMIT)
        while True:
            readable = [row for row in results if may_read(_series_of_row(row))]
            if len(readable) >= limit or len(results) < asked or asked >= MAX_SEARCH_LIMIT:
                return readable[: max(limit, 0)]
            asked = min(asked * 4, MAX_SEARCH_LIMIT)
            results = await self.symbols.search(query, asked, source)

    def send(self, client: Client, message: bytes, slot: Any = None) -> None:
        """Queue one encoded message (``protocol.*``) for ``client``."""
        if not client.outbox.push(text_frame(message), slot):
            self._kick(client, "outbox hard limit reached")

    def send_frame(self, client: Client, frame: bytes) -> None:
        """Queue one complete text frame (built once, maybe shared) for ``client``."""
        if not client.outbox.push(frame):
            self._kick(client, "outbox hard limit reached")

    def _reply_failed(self, client: Client, request: Any) -> None:
        """A reply job raised (a bug): it costs one answer, not the connection. The error
        echoes the request (a parsed one or its raw dict), so that a client that matches
        answers to requests (the page's queue of searches) does not fall one behind; a
        search also gets its empty ``search_data_done``, which is sent last, so was not."""
        self.metrics.inc("candlewire_internal_errors_total")
        if client.id not in self.clients:
            return
        raw = getattr(request, "raw", request)
        message = "the server failed to answer this request; it was logged"
        echo = raw if isinstance(raw, dict) else None
        self.send(client, protocol.error_message("internal_error", message, echo))
        if isinstance(request, protocol.SearchRequest):
            self.send(client, protocol.search_done(request.search, []))

    def _kick(self, client: Client, why: str) -> None:
        if client.id not in self.clients:
            return  # already closed: logged and counted once
        logger.warning(
            "client %d (%s) too slow: %s; closing with 1013", client.id, client.peer, why
        )
        self.metrics.inc("candlewire_slow_client_disconnects_total")
        kick = client.kick
        self.remove_client(client)
        kick(CLOSE_TRY_AGAIN_LATER, "client too slow")

    def _close_slow_clients(self) -> None:
        now = time.monotonic()
        limit = self.settings.SLOW_CLIENT_TIMEOUT
        for client in list(self.clients.values()):
            outbox = client.outbox
            if outbox.over_hard_limit():
                self._kick(client, f"{outbox.pending_bytes()} bytes pending")
            elif outbox.stalled_for(now) > limit:
                self._kick(
                    client,
                    f"over {outbox.soft_limit} frames or {outbox.max_bytes} bytes pending "
                    f"for {limit:g} s",
                )

    # ------------------------------------------------------------------ requests

    async def handle_frame(self, client: Client, text: str | bytes) -> None:
        """Apply one client frame's requests in order; replies that need I/O follow as the
        client's reply jobs (``client.replies``). Call it for one frame at a time."""
        await self.requests.take_frame(client, text)

    def wire_keys(self, key: SeriesId, details: dict[str, Any]) -> WireKeys:
        """The wire column names of ``key`` (computed once per key)."""
        return self.fanout.wire_keys(key, details)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, client: Client, key: SeriesId) -> Change:
        """Subscribe ``client`` to ``key``; the upstream stream starts (or keeps going)."""
        change = self.subs.add(client.id, key)
        self.upstream.sync(key, client.id)
        return change

    def unsubscribe(self, client: Client, key: SeriesId) -> Change:
        """Undo ``subscribe``; the upstream stops after the linger when nobody is left. The
        client's live indicators over ``key`` stop too, also those it streams without a
        ``data`` subscription of ``key`` (then the change is ``REMOVED``, not ``ABSENT``)."""
        change = self.subs.remove(client.id, key)
        if change is not Change.ABSENT:
            self.fanout.stop_delivery(client.id, key)
            self.indicating.drop_series(client.id, key)
            self.upstream.sync(key, client.id)
        elif self.indicating.drop_series(client.id, key):
            return Change.REMOVED
        return change

    def watch(self, client: Client, key: SeriesId, listener: BarListener) -> None:
        """Stream ``key`` to ``listener`` (not as frames); upstream starts as for ``data``."""
        self.subscribe(client, key)
        self.listeners.add(client.id, key, listener)

    def unwatch(self, client: Client, key: SeriesId) -> None:
        """Undo ``watch``; the upstream stops after the linger when nobody is left."""
        self.listeners.remove(client.id, key)
        self.unsubscribe(client, key)

    def _stream_stopped(self, key: SeriesId) -> None:
        series = self.cache.peek(key)
        if series is not None:
            series.live = False
            series.epoch += 1
            # What the stopped stream updated says nothing of the next stream: a bar it
            # left forming may close before the next one's first kline (``Fanout._on_bar``
            # refills it then, instead of keeping it half made).
            series.live_t = None

    # ------------------------------------------------------------------ providers

    async def _fetch(self, key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        provider = self.supervisor.get(key.source)
        if provider is None:
            raise ProviderUnavailable(f"provider {key.source!r} is not enabled")
        self._check_ready(key.source)
        if self.admit_fetch is not None and provider.budgeted:
            self.admit_fetch(key)
        self.metrics.inc("candlewire_history_fetches_total", source=key.source)
        end_text = "now UTC" if end is None else intervals.format_date(end)
        return await provider.get_history(
            key.name,
            key.interval,
            intervals.format_date(start),
            end_text,
            count,
            self.settings.HISTORY_TIMEOUT,
        )

    async def _refetch(self, key: SeriesId, start: int, count: int) -> list[Bar]:
        """The bars of ``key`` from ``start`` to now, for a refill (charged to no client)."""
        provider = self.supervisor.get(key.source)
        if provider is None:
            raise ProviderUnavailable(f"provider {key.source!r} is not enabled")
        self._check_ready(key.source)
        self.metrics.inc("candlewire_history_fetches_total", source=key.source)
        start_text = intervals.format_date(start)
        timeout = self.settings.HISTORY_TIMEOUT
        return await provider.get_history(
            key.name, key.interval, start_text, "now UTC", count, timeout
        )

    def on_provider_ready(self, source: str) -> None:
        """A provider (re)started: refill what its keys' clients missed meanwhile (held live
        updates follow), and replay every open subscription into it."""
        self._unready.discard(source)
        for series in self.cache.for_source(source):
            series.live = False
            series.epoch += 1
        self.indicating.reset_source(source)
        keys = {key for _, key in self.subs.pairs_for_source(source)}
        refilling = self.refills.start(sorted(keys))
        replayed = self.upstream.replay(source)
        if replayed:
            logger.info(
                "provider %s: resubscribed %d client streams, refilling %d keys",
                source,
                replayed,
                refilling,
            )

    def history_changed(self, source: str, symbol: str) -> None:
        """``source`` says the bars of ``symbol`` it served before changed (a rewritten
        file): what the cache holds of the symbol, at every interval, is forgotten, so the
        next request of it asks the provider. A streamed series keeps its stream (its new
        bars come in) and its clients' charts keep the bars they have."""
        streamed = set(self.subs.keys())
        keys = [s.key for s in self.cache.for_source(source) if s.key.name == symbol]
        for key in keys:
            if key in streamed:
                series = self.cache.get(key)
                series.reset()
                self.indicating.live.reset_series(key)
        dropped = [key for key in keys if key not in streamed]
        self.cache.drop(dropped)
        self._forget(dropped)
        if keys:
            logger.info(
                "provider %s: the bars of %s changed: %d series forgotten",
                source,
                symbol,
                len(keys),
            )

    def on_provider_events(self, source: str, events: list[WireEvent]) -> None:
        """Events from a provider process (see ``Fanout.on_provider_events``)."""
        self.fanout.on_provider_events(source, events)

    # ------------------------------------------------------------------ introspection

    def health(self) -> dict[str, Any]:
        from backend import __version__

        health: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "clients": len(self.clients),
            "subscriptions": len(self.subs),
            "cached_series": len(self.cache),
            "providers": {key: p.health() for key, p in self.supervisor.providers.items()},
        }
        if isinstance(self.supervisor, ReportsBus):
            bus = self.supervisor.bus_health()
            health["pid"] = os.getpid()
            health["bus"] = bus
            if bus.get("state") != "up":
                health["status"] = "degraded"
                health["reason"] = f"bus: {bus.get('reason') or 'down'}"
            else:
                orphans = [k for k, p in health["providers"].items() if p["state"] == "no_node"]
                if orphans:
                    health["status"] = "degraded"
                    health["reason"] = f"no provider node holds {', '.join(sorted(orphans))}"
        troubled = unserved(health["providers"])
        if troubled and health["status"] == "ok":
            health["status"] = "degraded"
            health["reason"] = "; ".join(troubled)
        parts = [("store", "bar store", self.store.health() if self.store else None)]
        parts.append(("alert_store", "alert store", self.alerting.journal.writes.health()))
        for key, what, part in parts:
            if part is None:
                continue
            health[key] = part
            if part["state"] != "ok" and health["status"] == "ok":
                health["status"] = "degraded"
                health["reason"] = f"{what} cannot write DB: {part['error']}"
        return health

    def conflated(self) -> int:
        """Forming-bar updates replaced in a client's outbox by a newer state of the same
        bar before they were written, since the start (those of clients that left too)."""
        live = sum(client.outbox.conflations for client in self.clients.values())
        return self._departed_conflations + live

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("candlewire_clients", lambda: len(self.clients), "connected WebSocket clients")
        m.gauge("candlewire_subscriptions", lambda: len(self.subs), "client subscriptions")
        m.gauge("candlewire_cached_bars", self.cache.bar_count, "bars in memory")
        m.gauge(
            "candlewire_outbox_frames",
            lambda: sum(len(c.outbox) for c in self.clients.values()),
            "frames waiting in client outboxes",
        )
        m.counter(
            "candlewire_updates_conflated_total",
            self.conflated,
            "unsent forming-bar updates (a data_update, with the indicator_updates sent with it)"
            " replaced by a newer state of the same bar: their client, or the hub, was behind",
        )
        m.gauge(
            "candlewire_chat_conversations",
            lambda: len(self.chatting.conversations),
            "AI chat conversations kept in memory",
        )
        m.gauge(
            "candlewire_chat_budget_callers",
            self.chatting.budgets.keys,
            "callers with chat turns in the last hour (MAX_LLM_REQUESTS_PER_HOUR)",
        )
        store = self.store
        if store is not None:
            m.gauge(
                "candlewire_store_failing",
                lambda: float(store.writes.error is not None),
                "1 while writes to the bar store (DB) fail, bars kept in memory; else 0",
            )
            m.gauge(
                "candlewire_store_queued_bars",
                lambda: store.queued_bars,
                "bars waiting to be written to the bar store",
            )
            m.counter(
                "candlewire_store_given_up_bars_total",
                lambda: store.given_up,
                "queued bars not stored: writes failing and the queue at CACHE_MAX_BARS",
            )
            m.counter(
                "candlewire_store_write_failures_total",
                lambda: store.writes.failures,
                "failed writes (flushes) of the bar store since the start",
            )
        journal = self.alerting.journal
        m.gauge(
            "candlewire_alert_store_failing",
            lambda: float(journal.writes.error is not None),
            "1 while writes of alerts and their deliveries to DB fail (deliveries wait); else 0",
        )
        # Event counters without labels are exported from the start (at 0), so a scrape tells
        # "none yet" from "not exported" (Prometheus' advice for metrics known in advance).
        for name, help_text in (
            (
                "candlewire_slow_client_disconnects_total",
                "clients closed with 1013 because they could not keep up",
            ),
            ("candlewire_connections_total", "WebSocket clients accepted since the start"),
            ("candlewire_clients_rejected_total", "WebSocket clients refused at MAX_CLIENTS"),
            ("candlewire_internal_errors_total", "failures of the server's own code, logged"),
        ):
            m.describe(name, help_text)
            m.inc(name, 0)
        m.describe("candlewire_bar_updates_total", "bar updates received from providers")
        m.describe(
            "candlewire_future_bars_dropped_total",
            "stray bars dropped: far after the bar before them and past their provider's clock",
        )
        m.describe(
            "candlewire_bad_bars_dropped_total",
            "live bars dropped: a high below the low, or opening a day and 100 bars before the"
            " newest bar",
        )
        m.describe("candlewire_updates_delivered_total", "data_update frames queued to clients")
        m.describe("candlewire_history_fetches_total", "get_history calls made to providers")
        m.describe("candlewire_request_errors_total", "error messages sent, by code")


def _series_of_row(row: dict[str, Any]) -> SeriesId:
    """The series of a search row as :func:`may_read` reads it (its source and name)."""
    details = row.get("details")
    details = details if isinstance(details, dict) else {}
    return SeriesId(str(details.get("source", "")), str(details.get("name", "")), "")
