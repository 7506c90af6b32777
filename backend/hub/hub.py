"""The hub: clients, subscriptions, fan-out of live bars, and history answers.

It ties the pieces together: the :class:`Subscriptions` registry decides who gets what, the
:class:`Supervisor` runs the providers, the :class:`HistoryPlanner` answers history from the
:class:`BarCache`. Each live update is merged into the cache, encoded once, and pushed into
the outbox of every subscriber; nothing here awaits a client's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.errors import ProviderUnavailable
from backend.history.cache import BarCache, Series
from backend.history.planner import HistoryPlanner
from backend.hub.listeners import BarListener, Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Change, Subscriptions
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, WireKeys
from backend.runtime.clocks import Clocks
from backend.runtime.messages import Clock, Notice, StartStreaming, Status, StopStreaming, WireEvent
from backend.runtime.supervisor import Supervisor
from backend.wire import protocol
from backend.wire.frames import text_frame
from backend.wire.outbox import Outbox

if TYPE_CHECKING:
    from backend.history.store import BarStore
    from backend.settings import Settings
    from backend.symbols.index import SymbolIndex

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
TICK_SECONDS = 1.0
RETENTION_EVERY = 3600.0
DETAILS_CACHE_SIZE = 10_000


class Client:
    """One connected WebSocket client as the hub sees it."""

    __slots__ = ("id", "kick", "outbox", "peer")

    def __init__(
        self, client_id: int, peer: str, outbox: Outbox, kick: Callable[[int, str], None]
    ) -> None:
        self.id = client_id
        self.peer = peer
        self.outbox = outbox
        self.kick = kick


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
    ) -> None:
        self.settings = settings
        self.symbols = symbols
        self.metrics = metrics
        self.store = store
        self.subs = Subscriptions()
        self.clients: dict[int, Client] = {}
        self.deliver: dict[SeriesId, dict[int, Client]] = {}
        self.listeners = Listeners()
        self.cache = BarCache()
        self.clocks = Clocks()
        self.supervisor = Supervisor(settings, self.on_provider_events, self.on_provider_ready)
        self.planner = HistoryPlanner(self.cache, self._fetch, self.clocks, store, self._persists)
        self.planner.after_request = self.enforce_memory
        self.started_at = time.time()
        self._ids = itertools.count(1)
        self._lingering: dict[SeriesId, tuple[int, asyncio.TimerHandle]] = {}
        self._wire: dict[SeriesId, WireKeys] = {}
        self._updates: dict[SeriesId, protocol.UpdateEncoder] = {}
        self._delivered = 0  # updates handed to outboxes in the current provider batch
        self._details: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._register_gauges()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.supervisor.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for _, handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        await self.supervisor.stop()

    async def _tick(self) -> None:
        last_retention = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._close_slow_clients()
            keep = set(self.subs.keys())
            evicted = self.cache.evict_idle(self.settings.CACHE_IDLE_SECONDS, keep)
            self._forget(evicted + self.cache.enforce(self.settings.CACHE_MAX_BARS, keep))
            if time.monotonic() - last_retention > RETENTION_EVERY:
                last_retention = time.monotonic()
                await self._apply_retention()

    def _forget(self, keys: list[SeriesId]) -> None:
        for key in keys:
            self.planner.forget(key)
            self._wire.pop(key, None)
            self._updates.pop(key, None)

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
        provider = self.supervisor.get(source)
        if provider is None:
            return False
        await provider.wait_ready(self.settings.HISTORY_TIMEOUT)
        return provider.persist

    # ------------------------------------------------------------------ clients

    def add_client(self, peer: str, kick: Callable[[int, str], None]) -> Client | None:
        """Register a connection; None when ``MAX_CLIENTS`` is reached."""
        if len(self.clients) >= self.settings.MAX_CLIENTS:
            self.metrics.inc("candlewire_clients_rejected_total")
            return None
        outbox = Outbox(self.settings.OUTBOX_MAX_MESSAGES, max_bytes=self.settings.OUTBOX_MAX_BYTES)
        client = Client(next(self._ids), peer, outbox, kick)
        self.clients[client.id] = client
        self.metrics.inc("candlewire_connections_total")
        logger.info("client %d connected from %s (%d clients)", client.id, peer, len(self.clients))
        return client

    def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        # What it had not received is dropped now, and the client's objects no longer refer
        # to each other (outbox <-> writer, client <-> connection): they are freed at once.
        client.outbox.close()
        client.kick = _departed
        self.listeners.drop(client.id)
        for key, change in self.subs.drop_client(client.id):
            self._forget_delivery(client.id, key)
            self._release(client.id, key, change)
        logger.info("client %d disconnected (%d clients)", client.id, len(self.clients))

    def send(self, client: Client, message: bytes, slot: Any = None) -> None:
        """Queue one encoded message (``protocol.*``) for ``client``."""
        if not client.outbox.push(text_frame(message), slot):
            self._kick(client, "outbox hard limit reached")

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
        """Answer one client frame: ``data`` requests first (concurrently), then the rest."""
        requests = protocol.parse_frame(
            text, self.settings.MAX_REQUESTS_PER_FRAME, self.settings.MAX_COUNT
        )
        data = [r for r in requests if isinstance(r, protocol.DataRequest)]
        if data:
            await asyncio.gather(*(self._data(client, r) for r in data))
        for request in requests:
            await self._dispatch(client, request)

    async def _dispatch(self, client: Client, request: protocol.Request) -> None:
        match request:
            case protocol.DataRequest():
                pass  # answered above
            case protocol.HistoryRequest():
                await self._history(client, request)
            case protocol.SearchRequest(search):
                results = await self.symbols.search(search, 100)
                self.send(client, protocol.encode({"type": "search_data_done", "results": results}))
            case protocol.SearchIndicatorsRequest():
                self.send(
                    client, protocol.encode({"type": "search_indicators_done", "results": []})
                )
            case protocol.UnsubscribeRequest(series, raw):
                self._unsubscribe(client, series, raw)
            case protocol.PingRequest(raw):
                self.send(client, protocol.encode({"type": "pong", "id": raw.get("id")}))
            case protocol.BadRequest():
                self._bad_request(client, request)

    def _bad_request(self, client: Client, bad: protocol.BadRequest) -> None:
        self.metrics.inc("candlewire_request_errors_total", code=bad.code)
        self.send(client, protocol.error_message(bad.code, bad.message, bad.raw))
        if bad.series is not None and bad.reply_type is not None:
            self.send(client, protocol.series_message(bad.reply_type, bad.series, []))

    async def _data(self, client: Client, request: protocol.DataRequest) -> None:
        key = request.series
        details = await self._validate(client, key, request.raw, "data_init")
        if details is None:
            return
        subscribe = request.stream
        if subscribe and self._over_subscription_limit(client, key):
            self.send(
                client,
                protocol.error_message(
                    "limit_reached",
                    f"at most {self.settings.MAX_SUBSCRIPTIONS_PER_CLIENT} subscriptions per "
                    "connection; this one is not streamed",
                    request.raw,
                ),
            )
            subscribe = False
        if subscribe:
            self._subscribe(client, key)
        answer = await self.planner.latest(key, request.count, self.subs.has(key))
        if client.id not in self.clients:
            return
        wire = self.wire_keys(key, details)
        async with client.outbox.room():  # paced by the client's reading
            if client.id not in self.clients:
                return
            self.send(
                client,
                protocol.series_message("data_init", key, wire.datapoints(answer.bars), details),
            )
        if answer.error is not None:
            self._provider_error(client, answer.error, request.raw)
        if subscribe and client.id in self.subs.subscribers(key):
            self.deliver.setdefault(key, {})[client.id] = client

    async def _history(self, client: Client, request: protocol.HistoryRequest) -> None:
        key = request.series
        details = await self._validate(client, key, request.raw, "data_history")
        if details is None:
            return
        answer = await self.planner.before(key, request.end, request.count)
        wire = self.wire_keys(key, details)
        async with client.outbox.room():  # paced by the client's reading
            if client.id not in self.clients:
                return
            self.send(
                client, protocol.series_message("data_history", key, wire.datapoints(answer.bars))
            )
        if answer.error is not None:
            self._provider_error(client, answer.error, request.raw)

    def _provider_error(self, client: Client, error: Exception, raw: Any) -> None:
        code = getattr(error, "code", "provider_error")
        self.metrics.inc("candlewire_request_errors_total", code=code)
        self.send(client, protocol.error_message(code, str(error), raw))

    async def _validate(
        self, client: Client, key: SeriesId, raw: Any, reply_type: str
    ) -> dict[str, Any] | None:
        """The symbol's dataset row, or None after answering with an error."""
        problem: tuple[str, str] | None = None
        details = None
        if self.supervisor.get(key.source) is None:
            enabled = ", ".join(self.supervisor.providers)
            problem = ("unknown_source", f"unknown source {key.source!r}; enabled: {enabled}")
        elif (details := await self._lookup(key.source, key.name)) is None:
            problem = ("unknown_symbol", f"unknown symbol {key.source}:{key.name}")
        elif key.interval not in details.get("intervals", intervals.INTERVALS):
            known = ", ".join(details.get("intervals", ()))
            problem = (
                "unknown_interval",
                f"unknown interval {key.interval!r} for {key.source}:{key.name}; known: {known}",
            )
        if problem is None:
            return details
        self._bad_request(client, protocol.BadRequest(*problem, raw, key, reply_type))
        return None

    async def _lookup(self, source: str, name: str) -> dict[str, Any] | None:
        cache_key = (source, name)
        if cache_key in self._details:
            return self._details[cache_key]
        details: dict[str, Any] | None = await self.symbols.details(source, name)
        if details is None:
            return None  # not cached: a populate may add it while the server runs
        if len(self._details) >= DETAILS_CACHE_SIZE:
            self._details.clear()
        self._details[cache_key] = details
        return details

    def wire_keys(self, key: SeriesId, details: dict[str, Any]) -> WireKeys:
        """The wire column names of ``key`` (computed once per key)."""
        wire = self._wire.get(key)
        if wire is None:
            wire = self._wire[key] = WireKeys(key, str(details.get("type", "candlestick")))
        return wire

    def _over_subscription_limit(self, client: Client, key: SeriesId) -> bool:
        keys = self.subs.keys_of(client.id)
        return key not in keys and len(keys) >= self.settings.MAX_SUBSCRIPTIONS_PER_CLIENT

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, client: Client, key: SeriesId) -> None:
        change = self.subs.add(client.id, key)
        if change is Change.ALREADY:
            return
        provider = self.supervisor.get(key.source)
        if provider is None:
            return
        provider.send(StartStreaming(client.id, key.name, key.interval))
        lingering = self._lingering.pop(key, None)
        if lingering is not None:
            old_client, handle = lingering
            handle.cancel()
            provider.send(StopStreaming(old_client, key.name, key.interval))

    def watch(self, client: Client, key: SeriesId, listener: BarListener) -> None:
        """Stream ``key`` to ``listener`` (not as frames); upstream starts as for ``data``."""
        self._subscribe(client, key)
        self.listeners.add(client.id, key, listener)

    def unwatch(self, client: Client, key: SeriesId) -> None:
        """Undo ``watch``; the upstream stops after the linger when nobody is left."""
        self.listeners.remove(client.id, key)
        change = self.subs.remove(client.id, key)
        if change is not Change.ABSENT:
            self._release(client.id, key, change)

    def _unsubscribe(self, client: Client, key: SeriesId, raw: Any) -> None:
        change = self.subs.remove(client.id, key)
        if change is Change.ABSENT:
            self.send(
                client, protocol.error_message("not_subscribed", f"not subscribed to {key}", raw)
            )
            return
        self._forget_delivery(client.id, key)
        self._release(client.id, key, change)
        self.send(
            client,
            protocol.encode(
                {
                    "type": "unsubscribed",
                    "source": key.source,
                    "name": key.name,
                    "interval": key.interval,
                }
            ),
        )

    def _forget_delivery(self, client_id: int, key: SeriesId) -> None:
        targets = self.deliver.get(key)
        if targets is not None:
            targets.pop(client_id, None)
            if not targets:
                del self.deliver[key]

    def _release(self, client_id: int, key: SeriesId, change: Change) -> None:
        provider = self.supervisor.get(key.source)
        if provider is None:
            return
        if change is Change.REMOVED:
            provider.send(StopStreaming(client_id, key.name, key.interval))
        elif change is Change.LAST:
            handle = asyncio.get_running_loop().call_later(
                self.settings.STREAM_LINGER_SECONDS, self._stop_upstream, key, client_id
            )
            self._lingering[key] = (client_id, handle)

    def _stop_upstream(self, key: SeriesId, client_id: int) -> None:
        self._lingering.pop(key, None)
        provider = self.supervisor.get(key.source)
        if provider is not None:
            provider.send(StopStreaming(client_id, key.name, key.interval))
        series = self.cache.peek(key)
        if series is not None:
            series.live = False
            series.epoch += 1

    # ------------------------------------------------------------------ providers

    async def _fetch(self, key: SeriesId, start: int, end: int | None, count: int) -> list[Bar]:
        provider = self.supervisor.get(key.source)
        if provider is None:
            raise ProviderUnavailable(f"provider {key.source!r} is not enabled")
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

    def on_provider_ready(self, source: str) -> None:
        """A provider (re)started: replay every open subscription into it."""
        for key in [k for k in self._lingering if k.source == source]:
            self._lingering.pop(key)[1].cancel()
        for series in self.cache.for_source(source):
            series.live = False
            series.epoch += 1
        provider = self.supervisor.get(source)
        pairs = self.subs.pairs_for_source(source)
        if provider is not None:
            for client_id, key in pairs:
                provider.send(StartStreaming(client_id, key.name, key.interval))
        if pairs:
            logger.info("provider %s: resubscribed %d client streams", source, len(pairs))

    def on_provider_events(self, source: str, events: list[WireEvent]) -> None:
        """Events from a provider process, in batches; the hot path of the hub."""
        bars = 0
        for event in events:
            if type(event) is tuple:  # a bar update (ipc.WireBar)
                self._on_bar(SeriesId(source, event[0], event[1]), event[2])
                bars += 1
                continue
            match event:
                case Clock():
                    self.clocks.set(source, event)
                case Notice(symbol, interval, code, message):
                    self._notify(SeriesId(source, symbol, interval), code, message)
                case Status(state, detail):
                    logger.info("provider %s status: %s %s", source, state, detail)
        if bars:
            self.metrics.inc("candlewire_bar_updates_total", bars, source=source)
            self.metrics.inc("candlewire_updates_delivered_total", self._delivered)
            self._delivered = 0
            provider = self.supervisor.get(source)
            if provider is not None:
                provider.last_update = time.time()

    def _on_bar(self, key: SeriesId, bar: Bar) -> None:
        series = self.cache.peek(key)
        if series is None:
            if not self.subs.has(key):
                return
            series = self.cache.get(key)
        previous = series.newest
        newest = series.upsert(bar)
        series.live_seq += 1
        t = bar[0]
        if (
            series.live
            and previous is not None
            and t > previous
            and series.coverage.span_at(previous - 1) is not None
        ):
            series.coverage.add(previous, t - 1)
        if series.loaded and series.persist and self.store is not None:
            self._store_live(series, bar, newest, previous)
        if not newest:
            return
        self.listeners.notify(key, bar)
        targets = self.deliver.get(key)
        if not targets:
            return
        encoder = self._updates.get(key)
        if encoder is None:
            wire = self._wire.get(key)
            if wire is None:
                return
            encoder = self._updates[key] = protocol.UpdateEncoder(key, wire)
        frame = encoder.frame(bar)
        slot = (key, t)
        for client in list(targets.values()):
            if not client.outbox.push(frame, slot):
                self._kick(client, "outbox hard limit reached")
        self._delivered += len(targets)

    def _store_live(self, series: Series, bar: Bar, newest: bool, previous: int | None) -> None:
        """Persist what a live bar settled: the bar it superseded as newest (closed now),
        or an older bar it corrected. The forming bar itself is not written on every
        update: after a restart it comes from the provider with the tail anyway."""
        assert self.store is not None
        if not newest:
            self.store.put_bars(series.key, [bar])
        elif previous is not None and bar[0] > previous and len(series.bars) > 1:
            self.store.put_bars(series.key, [series.bars[-2]])
            if series.live:
                self.store.put_coverage(
                    series.key, series.coverage.spans(), series.exhausted_before
                )

    def _notify(self, key: SeriesId, code: str, message: str) -> None:
        frame = text_frame(
            protocol.error_message(
                code, message, {"source": key.source, "name": key.name, "interval": key.interval}
            )
        )
        for client in list(self.deliver.get(key, {}).values()):
            if not client.outbox.push(frame):
                self._kick(client, "outbox hard limit reached")

    # ------------------------------------------------------------------ introspection

    def health(self) -> dict[str, Any]:
        from backend import __version__

        return {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "clients": len(self.clients),
            "subscriptions": len(self.subs),
            "cached_series": len(self.cache),
            "providers": {key: p.health() for key, p in self.supervisor.providers.items()},
        }

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
        m.describe(
            "candlewire_slow_client_disconnects_total",
            "clients closed with 1013 because they could not keep up",
        )
        m.describe("candlewire_bar_updates_total", "bar updates received from providers")
        m.describe("candlewire_updates_delivered_total", "data_update frames queued to clients")
        m.describe("candlewire_history_fetches_total", "get_history calls made to providers")
        m.describe("candlewire_request_errors_total", "error messages sent, by code")
