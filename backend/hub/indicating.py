"""Indicators at the hub: ``indicator`` / ``indicator_history`` replies from the bar cache,
and the live ``indicator_update`` fan-out after the ``data_update``s of a provider batch.

An ``indicator`` request loads the bars its rows need plus the indicator's warm-up through
the history planner (cache, then store, then the provider's normal path, exactly like
``data``), computes, answers with ``indicator_init`` and, when streamed, subscribes the
client in :class:`~backend.indicators.live.LiveIndicators`. After each provider batch the
fan-out calls :meth:`Indicating.on_updates` with the keys that got a newest bar: each shared
computation (indicator, inputs, dataMap) runs once from a bounded tail of the cache, its
row is encoded once per chart id, and each client gets the frames of all the chart ids it
holds on that key as one outbox entry (one push per client, not per frame).

Owns the live subscriptions of the hub and the counters of indicator work. Not: parsing and
the maths (``backend.indicators``), scans (``scanning``), request order (``requests``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from backend.errors import ProtocolError
from backend.history.cache import Series
from backend.hub.clients import Client
from backend.hub.fanout import Fanout, Kick
from backend.hub.indicator_frames import Encoded, GroupFrames
from backend.indicators import messages
from backend.indicators.engine import (
    Bars,
    BoundIndicator,
    Computed,
    bind,
    compute_history,
    last_dates,
    output_keys,
    rows,
)
from backend.indicators.incremental import RECENT
from backend.indicators.live import (
    LIVE_BUDGET_SECONDS,
    Group,
    IndicatorUpdate,
    LiveIndicators,
    updates_of,
)
from backend.indicators.registry import Indicators
from backend.indicators.tails import Tails
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.wire import protocol
from backend.wire.requests import check_count

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

FULL_WARMUP_BARS = 5000  # warm-up of indicators without a bounded one (VWAP, SAR, OBV, ...)
MAX_LIVE_PER_CLIENT = 200  # streamed indicator instances per connection


class Indicating:
    """The indicator requests and live indicator updates of one hub."""

    def __init__(self, hub: Hub, indicators: Indicators, kick: Kick) -> None:
        self.hub = hub
        self.indicators = indicators
        self.kick = kick
        self.live = LiveIndicators()
        self.fanout: Fanout | None = None  # set by ``attach``
        self.tails = Tails()
        self.delivered = 0  # indicator_update frames queued to clients
        self.seconds = 0.0  # spent computing, encoding and queueing live updates
        self._next_at: dict[SeriesId, float] = {}  # with INDICATOR_UPDATE_SECONDS
        self._scheduled: set[SeriesId] = set()  # keys with a trailing timer
        self._waiting: set[SeriesId] = set()  # keys with an update not computed yet
        # (version, bars, newest time) of each key's cache at its last computation
        self._marks: dict[SeriesId, tuple[int, int, int | None]] = {}
        self.encoded = Encoded(hub.cache)  # the parts of the frames, encoded once
        # series -> its groups of chart ids (``LiveIndicators.compute``) and their encoders
        self._group_frames: dict[SeriesId, tuple[list[Group], list[GroupFrames]]] = {}
        # key -> (holders, ``Fanout.deliver_changes``) when the holders were the key's
        # data_update clients then (``_push_with_data``)
        self._joinable: dict[SeriesId, tuple[frozenset[Hashable], int]] = {}
        # client id -> the streamed indicator requests taken and not answered yet (a ticket
        # each, with the series it reads): an unsubscribe taken meanwhile takes one back
        self._pending: dict[int, dict[object, frozenset[SeriesId]]] = {}
        self._register_gauges()

    @property
    def computed(self) -> int:
        """Live computations run (one per shared indicator per updated key and batch)."""
        return self.live.computations

    def attach(self, fanout: Fanout) -> None:
        """Get the keys with live indicators from ``fanout`` after each provider batch, their
        data_updates held back to go out with the indicator frames."""
        self.fanout = fanout
        fanout.watches = self.live.watches
        fanout.after_updates = self.on_updates
        fanout.hold_back = True

    # ------------------------------------------------------------------ requests

    def search(self, text: str) -> bytes:
        """``search_indicators_done`` for ``text``."""
        found = self.indicators.catalogue.search(text)
        return protocol.encode(messages.search_indicators_done(found))

    def expect_stream(self, client_id: int, request: messages.IndicatorRequest) -> object | None:
        """A streamed ``indicator`` request taken now, answered later in its lane: its ticket
        (for :meth:`answer`), which an ``unsubscribe`` of a series it reads, taken before the
        answer, takes back (:meth:`drop_series`): effects follow the order sent, so the
        indicator is then answered and not streamed. None for a request that does not
        stream."""
        if not request.stream:
            return None
        ticket = object()
        series = frozenset(binding.series for binding in request.config.bindings)
        self._pending.setdefault(client_id, {})[ticket] = series
        return ticket

    async def answer(
        self,
        client: Client,
        request: messages.IndicatorRequest,
        raw: Any,
        ticket: object | None = None,
    ) -> None:
        """``indicator_init`` / ``indicator_history``, or the error and the empty reply; then
        streamed if it asked to be and its ticket (:meth:`expect_stream`) still stands."""
        try:
            await self._answer(client, request, raw, ticket)
        finally:
            pending = self._pending.get(client.id)
            if pending is not None and ticket is not None:
                pending.pop(ticket, None)
                if not pending:
                    del self._pending[client.id]

    async def _answer(
        self,
        client: Client,
        request: messages.IndicatorRequest,
        raw: Any,
        ticket: object | None,
    ) -> None:
        hub = self.hub
        try:
            bound = bind(
                self.indicators,
                request.config.indicator_id,
                request.config.inputs,
                request.config.bindings,
            )
            limit = hub.settings.MAX_COUNT
            if request.since is None:  # with a range, count is ignored (as Tradiny does)
                check_count(request.count, limit)
            # from range[0] to the end (at most MAX_COUNT rows, the newest), else the last count
            count = limit if request.since is not None else request.count
            # history to the socket's budget, as data_history (rows, as bars)
            await hub.requests.pace(client, count)
            if client.id not in hub.clients:
                return
            bars = await self._bars(bound, request)
            # on a thread: a user indicator's calc may be slow, and the loop serves everyone
            # (the bars copied: the cache's lists may grow meanwhile)
            copied = {series: list(rows) for series, rows in bars.items()}
            computed, spent = await asyncio.to_thread(_timed_history, bound, copied)
        except ProtocolError as exc:
            if client.id in hub.clients:
                self.refuse(client, raw, exc)
            return
        if client.id not in hub.clients:
            return
        data = rows(
            computed, output_keys(bound, request.chart_id), request.since, count, request.until
        )
        reply = messages.indicator_rows(request, data, last_dates(bars))
        hub.send(client, protocol.encode(reply))
        hub.requests.settle(client, len(data) - count)
        if request.stream and _live_cost(spent, bound, copied) > LIVE_BUDGET_SECONDS:
            # each live update would take about as long, on the hub's loop: not streamed
            message = (
                f"{bound.indicator.name}: computing it took {spent:.2f} s (a live update may "
                f"take at most {LIVE_BUDGET_SECONDS:g} s); answered, not streamed"
            )
            hub.metrics.inc("candlewire_request_errors_total", code="indicator_failed")
            echo = {"type": "indicator", "id": request.chart_id}
            hub.send(client, protocol.error_message("indicator_failed", message, echo))
        elif request.stream and self._still_expected(client.id, ticket):
            self._stream(client, request, bound, computed, raw)

    def _still_expected(self, client_id: int, ticket: object | None) -> bool:
        """Whether no ``unsubscribe`` took the request's ticket back."""
        return ticket is None or ticket in self._pending.get(client_id, {})

    def _stream(
        self,
        client: Client,
        request: messages.IndicatorRequest,
        bound: BoundIndicator,
        computed: Computed,
        raw: Any,
    ) -> None:
        held = self.live.held_by(client.id)
        if request.chart_id not in held and len(held) >= MAX_LIVE_PER_CLIENT:
            message = f"at most {MAX_LIVE_PER_CLIENT} live indicators per connection; not streamed"
            self.hub.metrics.inc("candlewire_request_errors_total", code="limit_reached")
            self.hub.send(client, protocol.error_message("limit_reached", message, raw))
            return
        self.live.subscribe(client.id, request.chart_id, bound, seed=computed)

    def refuse(self, client: Client, raw: Any, exc: ProtocolError) -> None:
        """``error`` (its echo bounded like every other) and the empty reply, if any."""
        self.hub.metrics.inc("candlewire_request_errors_total", code=exc.code)
        replies = messages.failure_replies(raw if isinstance(raw, dict) else {}, exc)
        self.hub.send(client, protocol.error_message(exc.code, exc.message, raw))
        for reply in replies[1:]:
            self.hub.send(client, protocol.encode(reply))

    async def _bars(
        self, bound: BoundIndicator, request: messages.IndicatorRequest
    ) -> dict[SeriesId, list[Bar]]:
        """The bars of every series of ``bound``: the rows asked for plus the warm-up. Each
        series is checked first as ``data`` checks it (``unknown_source``, ``unknown_symbol``,
        ``unknown_interval``, ``forbidden``), so no provider is asked for one it lacks."""
        hub = self.hub
        for series in bound.series:
            await hub.requests.validate(series)
        bars: dict[SeriesId, list[Bar]] = {}
        for series in bound.series:
            count = self._bars_needed(bound, series, request)
            answer = await hub.planner.before(series, request.until, count, hub.subs.has(series))
            if answer.error is not None and not answer.bars:
                raise ProtocolError(
                    getattr(answer.error, "code", "provider_error"), str(answer.error)
                )
            bars[series] = answer.bars
        return bars

    def _bars_needed(
        self, bound: BoundIndicator, series: SeriesId, request: messages.IndicatorRequest
    ) -> int:
        """The rows asked for (at most ``MAX_COUNT``) plus the warm-up (at most
        ``MAX_COUNT`` too: an indicator that needs more is ``not_enough_history``), so that
        every row but those before the first bar of the series has its value."""
        limit = self.hub.settings.MAX_COUNT
        # without a bounded warm-up, still past the lookback (KAMA's period may be longer)
        warmup = min(bound.warmup_size() or max(FULL_WARMUP_BARS, bound.lookback + 1), limit)
        if request.since is None:
            return min(request.count, limit) + warmup
        end = request.until
        if end is None:
            end = self.hub.clocks.now(series.source, series.name)
        span = max(0, end - request.since) // intervals.nominal_seconds(series.interval) + 1
        return min(span, limit) + warmup

    # ------------------------------------------------------------------ clients

    def drop_client(self, client_id: int) -> None:
        self.live.drop_client(client_id)
        self._pending.pop(client_id, None)
        self._prune()

    def drop_series(self, client_id: int, key: SeriesId) -> bool:
        """``client_id`` unsubscribed ``key``: its indicators over ``key`` stop, those not
        answered yet too (they will not stream); whether it had any."""
        dropped = self.live.drop_series(client_id, key)
        pending = self._pending.get(client_id, {})
        withdrawn = [ticket for ticket, series in pending.items() if key in series]
        for ticket in withdrawn:
            del pending[ticket]
        self._prune()
        return dropped > 0 or bool(withdrawn)

    def _prune(self) -> None:
        """Forget the tails and update times of series no indicator reads any more."""
        self.tails.keep_only(self.live.watches)
        for key in [k for k in self._next_at if not self.live.watches(k)]:
            del self._next_at[key]
        for key in [k for k in self._marks if not self.live.watches(k)]:
            del self._marks[key]
        for key in [k for k in self._group_frames if not self.live.watches(k)]:
            del self._group_frames[key]
        for key in [k for k in self._joinable if not self.live.watches(k)]:
            del self._joinable[key]

    def reset_source(self, source: str) -> None:
        """A provider restarted: running totals are recomputed in full next time."""
        for series in self.hub.cache.for_source(source):
            self.live.reset_series(series.key)

    # ------------------------------------------------------------------ live updates

    def on_updates(self, keys: Mapping[SeriesId, int]) -> None:
        """After a provider batch: the live indicators of ``keys`` (each with the time of
        the first newest bar the batch brought), now, or with ``INDICATOR_UPDATE_SECONDS``
        at most once per that time per key. Now, a bar that closed within the batch (its
        last update and the next bar's first in one batch) gets its final row too, before
        the newest. An update that had to wait is computed with the key's next batch once
        the time is up (in the same turn as its ``data_update``s, so in the same socket
        writes), or by a timer half a period later if no batch comes: the newest bar
        always gets its ``indicator_update``."""
        every = self.hub.settings.INDICATOR_UPDATE_SECONDS
        if every <= 0:
            self._compute(keys.items())
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = []
        for key in keys:
            if now >= self._next_at.get(key, 0.0):
                due.append(key)
                self._next_at[key] = now + every
                self._waiting.discard(key)
                continue
            self._waiting.add(key)
            if key not in self._scheduled:
                self._scheduled.add(key)
                loop.call_at(self._next_at[key] + every / 2, self._trailing, key)
        self._compute((key, None) for key in due)

    def _trailing(self, key: SeriesId) -> None:
        """No batch of ``key`` came since its update had to wait: compute it now."""
        self._scheduled.discard(key)
        if key not in self._waiting:
            return
        self._waiting.discard(key)
        every = self.hub.settings.INDICATOR_UPDATE_SECONDS
        self._next_at[key] = asyncio.get_running_loop().time() + every
        if self.live.watches(key):
            self._compute([(key, None)])

    def _compute(self, keys: Iterable[tuple[SeriesId, int | None]]) -> None:
        """One computation per shared indicator on each key, one ``indicator_update`` frame
        per chart id, queued after the ``data_update``s of the batch; with the time of the
        first bar the batch brought, the row of a bar that closed since too."""
        started = time.perf_counter()
        dates: dict[tuple[SeriesId, ...], bytes] = {}  # last_dates, once per batch
        for key, since in keys:
            try:
                cached = self._check_closed_bars(key)
                if cached is not None and self._usual(key, cached, since, dates):
                    continue
                groups = self.live.compute(key, self._tail, since)
            except Exception:  # a bug in one computation must not stop the fan-out
                logger.exception("live indicators of %s failed", key)
                self.hub.metrics.inc("candlewire_internal_errors_total")
                continue
            if groups:
                self._push_groups(key, groups, dates)
        self._stop_too_slow()
        self.seconds += time.perf_counter() - started

    def _stop_too_slow(self) -> None:
        """Stop the live updates of a computation that took longer than its budget (a user
        indicator's slow ``calc``: it runs on the hub's loop, and every client waits): its
        holders get ``indicator_failed`` naming the time; the rest streams on."""
        for shared, spent in self.live.take_too_slow():
            name = shared.computation.bound.indicator_id
            message = (
                f"{name}: a live update took {spent:.2f} s (at most {LIVE_BUDGET_SECONDS:g} s: "
                "it runs in the hub); its live updates stopped"
            )
            logger.warning("%s", message)
            for chart_id, chart in list(shared.charts.items()):
                for client_id in list(chart.clients):
                    self.live.unsubscribe(client_id, chart_id)
                    client = self.hub.clients.get(client_id)  # type: ignore[call-overload]
                    if client is not None:
                        self.hub.metrics.inc(
                            "candlewire_request_errors_total", code="indicator_failed"
                        )
                        echo = {"type": "indicator", "id": chart_id}
                        self.hub.send(
                            client, protocol.error_message("indicator_failed", message, echo)
                        )
            self._prune()

    def _usual(
        self,
        key: SeriesId,
        cached: Series,
        since: int | None,
        dates: dict[tuple[SeriesId, ...], bytes],
    ) -> bool:
        """The usual update of ``key`` (its cached series ``cached``; no bar closed since
        ``since``, each computation over it peeks at the forming bar, one group of chart ids
        encoded already for these computations) in one pass, :meth:`GroupFrames.usual`,
        queued as :meth:`_push_groups` would; False (nothing done) when it is not the usual
        update: then :meth:`LiveIndicators.compute`."""
        plan = self.live.usual(key)
        if plan is None or len(plan.groups) != 1:
            return False
        known = self._group_frames.get(key)
        if known is None or known[0] is not plan.groups:
            return False
        bars = cached.bars
        if since is not None and (len(bars) < 2 or since <= bars[-2][0]):
            return False
        encoder = known[1][0]
        last_dates = self._last_dates_of(encoder, dates)
        if last_dates is None:
            return False
        made = encoder.usual(bars, self.encoded.date, last_dates)
        if made is None:
            return False
        self.live.computations += len(plan.running)
        fanout = self.fanout
        if fanout is not None:
            if self._push_with_data(key, encoder, made, fanout):
                return True
            fanout.release_held(key)
        bar_time, entry = made
        holders = encoder.group[0][2].holders()
        self._queue(holders, key, bar_time, entry, encoder.count, encoder.chart_ids)
        return True

    def _check_closed_bars(self, key: SeriesId) -> Series | None:
        """Running computations of ``key`` open again, and its tail table is rebuilt, when
        its closed bars changed since its last computation other than by bars appended (the
        cache's ``version`` counts every change but an update of the newest bar in place).
        Returns the key's cached series (None: not cached)."""
        cached = self.hub.cache.peek(key)
        if cached is None:
            return None
        times, version = cached.times, cached.version
        n = len(times)
        mark = self._marks.get(key)
        if mark is not None:
            before, count, newest = mark
            grown = n - count
            if version - before != grown or (grown and (count == 0 or times[-grown - 1] != newest)):
                self.tails.drop(key)
                self.live.resync_series(key)
        self._marks[key] = (version, n, times[-1] if n else None)
        return cached

    def _tail(self, series: SeriesId, count: int | None) -> Bars:
        """The last ``count`` cached bars (all for None): the newest few as they are, a
        longer tail as a table kept up to date."""
        cached = self.hub.cache.peek(series)
        if cached is None:
            return ()
        if count is None:
            return cached.bars
        if count <= RECENT:
            return cached.bars[-count:]
        return self.tails.get(series, cached.bars, count)

    def _push_groups(
        self, key: SeriesId, groups: list[Group], dates: dict[tuple[SeriesId, ...], bytes]
    ) -> None:
        """Queue the rows just computed over ``key``, a group of chart ids (held by the same
        clients) at a time: the frames of the group made in one go (:class:`GroupFrames`)
        when its rows are all of one bar, else one update at a time (:meth:`_push`). When
        one group's clients are exactly the clients of the key's data_update held back
        by the fan-out, each gets the data_update and the group's frames as one entry
        (:meth:`_push_with_data`); else the held data_updates go out first."""
        known = self._group_frames.get(key)
        if known is None or known[0] is not groups:
            known = self._group_frames[key] = (groups, [GroupFrames(group) for group in groups])
        encoders = known[1]
        frames = [self._group_frames_of(encoder, dates) for encoder in encoders]
        fanout = self.fanout
        if fanout is not None:
            first = frames[0] if len(frames) == 1 else None
            if first is not None and self._push_with_data(key, encoders[0], first, fanout):
                return
            fanout.release_held(key)
        for encoder, made in zip(encoders, frames, strict=True):
            if made is None:
                self._push(key, updates_of(encoder.group), dates)
                continue
            bar_time, entry = made
            holders = encoder.group[0][2].holders()
            self._queue(holders, key, bar_time, entry, encoder.count, encoder.chart_ids)

    def _push_with_data(
        self, key: SeriesId, encoder: GroupFrames, made: tuple[int, bytes], fanout: Fanout
    ) -> bool:
        """The held data_update of ``key`` and ``made``, the frames of ``encoder``'s group
        (:meth:`_group_frames_of`), one entry to each client (the data_update's slot: a
        later update of the bar replaces it all), when the group's holders are the key's
        data_update clients and the held update and the rows are of one bar; False (nothing
        done) otherwise."""
        held = fanout.held(key)
        targets = fanout.deliver.get(key)
        if held is None or len(held) != 1 or not targets:
            return False
        holders = encoder.group[0][2].holders()
        known = self._joinable.get(key)
        if known is None or known[0] is not holders or known[1] != fanout.deliver_changes:
            if targets.keys() != holders:
                return False
            self._joinable[key] = (holders, fanout.deliver_changes)
        bar_time, entry = made
        frame = held.get(bar_time)
        if frame is None:
            return False
        fanout.take_held(key)
        fanout.push_frame(key, bar_time, frame + entry, targets)
        self.delivered += len(targets) * encoder.count
        return True

    def _group_frames_of(
        self, encoder: GroupFrames, dates: dict[tuple[SeriesId, ...], bytes]
    ) -> tuple[int, bytes] | None:
        """:meth:`GroupFrames.frames` with the ``last_dates`` of what the group reads."""
        last_dates = self._last_dates_of(encoder, dates)
        if last_dates is None:
            return None
        return encoder.frames(self.encoded.date, last_dates)

    def _last_dates_of(
        self, encoder: GroupFrames, dates: dict[tuple[SeriesId, ...], bytes]
    ) -> bytes | None:
        """The ``last_dates`` of what ``encoder``'s group reads, encoded once per batch
        (``dates``); ``None`` when its chart ids read different series."""
        reads = encoder.reads
        if reads is None:
            return None
        last_dates = dates.get(reads)
        if last_dates is None:
            last_dates = dates[reads] = self.encoded.last_dates(reads)
        return last_dates

    def _push(
        self,
        key: SeriesId,
        updates: list[IndicatorUpdate],
        dates: dict[tuple[SeriesId, ...], bytes],
    ) -> None:
        """Encode each update once, then queue, to each client, the frames of all the
        updates of ``key`` it holds, one entry per bar (see :meth:`_queue`). The clients
        holding the same chart ids of a key (the usual case: one chart's indicators) share
        the joined frames."""
        groups: dict[frozenset[Hashable], list[IndicatorUpdate]] = {}
        for update in updates:
            groups.setdefault(update.clients, []).append(update)
        for holders, held in groups.items():
            frames = [self.encoded.frame(update, dates) for update in held]
            for bar_time in dict.fromkeys(update.time for update in held):  # a closed bar first
                part = [i for i, update in enumerate(held) if update.time == bar_time]
                entry = b"".join(frames[i] for i in part)
                chart_ids = "\n".join(held[i].chart_id for i in part)
                self._queue(holders, key, bar_time, entry, len(part), chart_ids)

    def _queue(
        self,
        holders: frozenset[Hashable],
        key: SeriesId,
        time: int,
        entry: bytes,
        frames: int,
        chart_ids: str,
    ) -> None:
        """Queue ``entry`` (``frames`` frames of bar ``time``, those of ``chart_ids``, one a
        line) to each of ``holders``: appended to its pending ``data_update`` of the same
        bar (one entry, written together), or else as one entry of its own whose slot names
        the chart ids and the bar time, so that an unsent one is replaced by the next one
        of the same forming bar, like a ``data_update``."""
        data_slot = (key, time)  # the slot of that bar's data_update (Fanout._push_update)
        slot = ("indicator_update", chart_ids, time)
        clients = self.hub.clients
        joined: dict[bytes, bytes] = {}  # the holders' data_update frame is one object
        queued = 0
        for client_id in holders:
            client = clients.get(client_id)  # type: ignore[call-overload]
            if client is None:
                continue
            outbox = client.outbox
            if outbox.extend(data_slot, entry, joined) or outbox.push(entry, slot):
                queued += 1
            else:
                self.kick(client, "outbox hard limit reached")
        self.delivered += queued * frames

    def _register_gauges(self) -> None:
        m = self.hub.metrics
        m.gauge(
            "candlewire_indicators", lambda: len(self.indicators), "indicators in the catalogue"
        )
        m.counter(
            "candlewire_indicator_computations_total",
            lambda: self.computed,
            "live indicator computations run since start (one per shared indicator per update)",
        )
        m.counter(
            "candlewire_indicator_updates_delivered_total",
            lambda: self.delivered,
            "indicator_update frames queued to clients since start",
        )
        m.counter(
            "candlewire_indicator_seconds_total",
            lambda: self.seconds,
            "seconds spent computing and queueing live indicator updates since start",
        )
        m.gauge("candlewire_indicator_shared", lambda: len(self.live), "shared live computations")


def _timed_history(
    bound: BoundIndicator, bars: Mapping[SeriesId, list[Bar]]
) -> tuple[Computed, float]:
    """:func:`compute_history` and the seconds it took on its thread: the computation's own
    time, not its wait for a free worker thread (under load, that wait had made ordinary
    indicators look too slow to stream)."""
    started = time.perf_counter()
    computed = compute_history(bound, bars)
    return computed, time.perf_counter() - started


def _live_cost(spent: float, bound: BoundIndicator, bars: Mapping[SeriesId, list[Bar]]) -> float:
    """What a live update of ``bound`` may cost, from ``spent`` on ``bars``: the same over
    its bounded tail's share of the bars (all of them without one)."""
    tail = bound.tail_size()
    loaded = max((len(rows) for rows in bars.values()), default=0)
    if tail is None or loaded <= tail:
        return spent
    return spent * tail / loaded
