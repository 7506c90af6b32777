"""Live indicator subscriptions, sans-I/O: who holds which indicator instance, and one
computation per (indicator, inputs, dataMap) per update however many clients hold it.

The hub calls :meth:`LiveIndicators.subscribe` after answering an ``indicator`` request,
:meth:`~LiveIndicators.on_bar` after fanning out a ``data_update``, :meth:`~LiveIndicators.
drop_client` when a socket closes and :meth:`~LiveIndicators.reset_series` when a provider
restarts. :meth:`~LiveIndicators.on_bar` returns one :class:`IndicatorUpdate` per chart id
(each with its clients) for the hub to encode once and send; :meth:`~LiveIndicators.compute`
gives the same rows without an object per update: the chart ids grouped by the clients that
hold them (:data:`Group`), each with the rows of its :class:`Shared` computation. This
module never awaits or touches a socket. A client is any hashable handle the hub chooses.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from time import perf_counter
from typing import NamedTuple

from backend.errors import IndicatorError
from backend.indicators.engine import BoundIndicator, Columns, Computed, Fetch, LiveComputation
from backend.indicators.incremental import RECENT, Incremental, Row, peek_all
from backend.model import intervals
from backend.model.bars import SeriesId

logger = logging.getLogger(__name__)

LIVE_BUDGET_SECONDS = 0.25  # a live computation that takes longer stops (it blocks the hub)
_clock = perf_counter

Key = tuple[object, ...]


class IndicatorUpdate(NamedTuple):
    """The newest row of one chart id, for every client that holds it."""

    chart_id: str
    names: tuple[str, ...]  # the row's keys: "date", then "<chart id>-<output>" per output
    values: tuple[object, ...]  # the row's values: the date, then one per output
    clients: frozenset[Hashable]  # the same object from one update to the next while they hold it
    series: tuple[SeriesId, ...] = ()  # what it reads, for ``last_dates``
    time: int = 0  # the bar time of the row

    @property
    def row(self) -> dict[str, object]:
        """``{"date": ..., "<chart id>-<output>": value or None, ...}``."""
        return dict(zip(self.names, self.values, strict=True))


@dataclass
class Chart:
    """One chart id of a shared computation: its row's keys and the clients holding it."""

    names: tuple[str, ...]  # "date", then "<chart id>-<output name>" per output
    clients: set[Hashable] = field(default_factory=set)
    _holders: frozenset[Hashable] | None = None

    def holders(self) -> frozenset[Hashable]:
        """The clients, as a frozenset made once per change of them (its hash is cached)."""
        if self._holders is None:
            self._holders = frozenset(self.clients)
        return self._holders

    def add(self, client: Hashable) -> None:
        self.clients.add(client)
        self._holders = None

    def discard(self, client: Hashable) -> None:
        self.clients.discard(client)
        self._holders = None

    def adopt(self, holders: frozenset[Hashable]) -> None:
        """Use ``holders``, an equal set, as :meth:`holders` (one object per group)."""
        if holders == self.clients:
            self._holders = holders


_NO_ROWS: list[Row] = []


@dataclass
class Shared:
    """One computation (indicator, inputs, dataMap) and the chart ids that show it."""

    computation: LiveComputation
    charts: dict[str, Chart]  # chart id -> its keys and clients
    # what the update in progress computed: (bar time, the value of each output), oldest first
    rows: list[Row] = field(default_factory=list)


Group = list[tuple[Shared, str, Chart]]
"""Chart ids over one series held by the same clients (each chart's ``holders()`` is the same
frozenset object), with their shared computations."""
_NO_GROUPS: list[Group] = []


@dataclass
class Plan:
    """The shared computations over one series, by how an update computes them, and their
    chart ids grouped by the clients that hold them (the order of :meth:`LiveIndicators.
    on_bar`'s updates)."""

    running: list[Shared] = field(default_factory=list)  # running computations over it
    incrementals: list[Incremental] = field(default_factory=list)  # theirs, in that order
    on_tail: list[Shared] = field(default_factory=list)  # recomputed over its tail
    size: int = 0  # the longest tail of ``on_tail``
    others: list[Shared] = field(default_factory=list)  # each the batch way (``step``)
    groups: list[Group] = field(default_factory=list)


class LiveIndicators:
    """The indicator subscriptions of every client; one shared computation per key."""

    def __init__(self) -> None:
        self._shared: dict[Key, Shared] = {}
        self._by_series: dict[SeriesId, dict[Key, Shared]] = {}
        self._by_client: dict[Hashable, dict[str, Key]] = {}
        self._plans: dict[SeriesId, Plan] = {}  # made on the first update after a change
        # series whose running computations may have to open (all open: newest bars only)
        self._opening: set[SeriesId] = set()
        self.computations = 0  # shared computations run by on_bar (for the metrics)
        self._too_slow: list[tuple[Shared, float]] = []  # over LIVE_BUDGET_SECONDS

    def __len__(self) -> int:
        """The number of shared computations."""
        return len(self._shared)

    def subscribe(
        self, client: Hashable, chart_id: str, bound: BoundIndicator, seed: Computed | None = None
    ) -> None:
        """``client`` holds ``chart_id`` (deduplicated by chart id, spec 2.7.6)."""
        self.unsubscribe(client, chart_id)
        key: Key = bound.key
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = Shared(LiveComputation(bound, seed), {})
            for series in bound.series:
                self._by_series.setdefault(series, {})[key] = shared
        chart = shared.charts.get(chart_id)
        if chart is None:
            names = ("date", *(f"{chart_id}-{o.name}" for o in bound.indicator.outputs))
            chart = shared.charts[chart_id] = Chart(names)
        chart.add(client)
        self._by_client.setdefault(client, {})[chart_id] = key
        self._replan(bound.series)

    def unsubscribe(self, client: Hashable, chart_id: str) -> None:
        held = self._by_client.get(client)
        key = held.pop(chart_id, None) if held is not None else None
        if held is not None and not held:
            del self._by_client[client]
        if key is None:
            return
        shared = self._shared[key]
        chart = shared.charts[chart_id]
        chart.discard(client)
        if not chart.clients:
            del shared.charts[chart_id]
        self._replan(shared.computation.bound.series)
        if not shared.charts:
            self._forget(key)

    def _replan(self, series: tuple[SeriesId, ...]) -> None:
        for one in series:
            self._plans.pop(one, None)
            self._opening.add(one)

    def drop_client(self, client: Hashable) -> None:
        """Forget every indicator of a closed socket."""
        for chart_id in list(self._by_client.get(client, {})):
            self.unsubscribe(client, chart_id)

    def drop_series(self, client: Hashable, series: SeriesId) -> int:
        """Forget the indicators of ``client`` that read ``series`` (it unsubscribed); how
        many there were."""
        dropped = 0
        for chart_id, key in list(self._by_client.get(client, {}).items()):
            if series in self._shared[key].computation.bound.series:
                self.unsubscribe(client, chart_id)
                dropped += 1
        return dropped

    def held_by(self, client: Hashable) -> list[str]:
        return sorted(self._by_client.get(client, {}))

    def watches(self, series: SeriesId) -> bool:
        return series in self._by_series

    def reset_series(self, series: SeriesId) -> None:
        """The series was reloaded (provider restart): recompute running totals in full."""
        self._opening.add(series)
        for shared in self._by_series.get(series, {}).values():
            shared.computation.reset()

    def resync_series(self, series: SeriesId) -> None:
        """Closed bars of ``series`` changed other than by a bar appended (a correction, a
        merge, a trim): running computations open again from the tail."""
        self._opening.add(series)
        for shared in self._by_series.get(series, {}).values():
            shared.computation.resync()

    def on_bar(
        self, series: SeriesId, fetch: Fetch, since: int | None = None
    ) -> list[IndicatorUpdate]:
        """After a ``data_update`` of ``series``: one computation per key, one update per
        chart id and row (see :meth:`compute`)."""
        return [
            update for group in self.compute(series, fetch, since) for update in updates_of(group)
        ]

    def compute(self, series: SeriesId, fetch: Fetch, since: int | None = None) -> list[Group]:
        """After a ``data_update`` of ``series``: one computation per key, its rows in its
        :attr:`Shared.rows`; returns the chart ids over ``series`` grouped by their holders
        (the same list object until a subscription over ``series`` changes). A computation
        that fails is logged and has no rows; the others still run. The computations that
        read only a bounded tail of ``series`` share one fetch of the longest tail and its
        columns; when the updates began at ``since``, a bar older than the newest (it
        closed since: its last update was never computed), they also give the row of the
        bar before the newest, first."""
        plan = self._plans.get(series)
        if plan is None:
            if series not in self._by_series:
                return _NO_GROUPS
            plan = self._plans[series] = self._plan(series)
        for shared in plan.others:
            shared.rows = _NO_ROWS
            self.computations += 1
            started = _clock()
            try:
                newest = shared.computation.step(fetch)
            except IndicatorError as exc:
                _failed(shared, exc)
                continue
            finally:
                self._timed(shared, started)
            if newest is not None:
                shared.rows = [newest]
        if plan.running:
            self._on_running(series, fetch, plan, since)
        if plan.on_tail:
            self._on_tail(series, fetch, plan.on_tail, plan.size, since)
        return plan.groups

    def usual(self, series: SeriesId) -> Plan | None:
        """The plan of ``series`` when each computation over it is a running computation
        that need not open: its usual update (each peeks at the forming bar) may then be
        made from them directly, as ``GroupFrames.usual`` does, the caller adding
        ``len(plan.running)`` to :attr:`computations`. ``None`` when :meth:`compute` must
        run: the first update after a subscription changed, a computation that must open,
        or one computed another way."""
        plan = self._plans.get(series)
        if plan is None or plan.others or plan.on_tail or series in self._opening:
            return None
        return plan

    def _plan(self, series: SeriesId) -> Plan:
        plan = Plan()
        groups: dict[frozenset[Hashable], list[tuple[Shared, str, Chart]]] = {}
        for shared in self._by_series[series].values():
            computation = shared.computation
            tail = computation.tail
            incremental = computation.incremental
            if computation.running == series and incremental is not None:
                plan.running.append(shared)
                plan.incrementals.append(incremental)
            elif tail is not None and tail[0] == series:
                plan.on_tail.append(shared)
                plan.size = max(plan.size, tail[1])
            else:
                plan.others.append(shared)
            for chart_id, chart in shared.charts.items():
                holders = chart.holders()
                group = groups.get(holders)
                if group is None:
                    group = groups[holders] = []
                else:  # one frozenset object per group: the hub joins by identity
                    chart.adopt(group[0][2].holders())
                group.append((shared, chart_id, chart))
        plan.groups = list(groups.values())
        return plan

    def _on_running(self, series: SeriesId, fetch: Fetch, plan: Plan, since: int | None) -> None:
        """The computations kept by a running computation share one read of the newest bars
        (of the longest tail any of them opens on, if one must open). The usual update (each
        only peeks at the forming bar) goes in one loop (:func:`peek_all`), else each its
        own way (:meth:`Incremental.advance`)."""
        running = plan.running
        size: int | None = RECENT
        opening = False
        if series in self._opening:
            for shared in running:
                opens, bars = shared.computation.opening
                if opens:
                    opening = True
                    size = None if bars is None or size is None else max(size, bars)
            if not opening:
                self._opening.discard(series)
        try:
            recent = fetch(series, size)
        except IndicatorError as exc:
            for shared in running:
                shared.rows = _NO_ROWS
                _failed(shared, exc)
            return
        self.computations += len(running)
        if not opening:
            rows = peek_all(plan.incrementals, recent, since)
            if rows is not None:
                for shared, row in zip(running, rows, strict=True):
                    shared.rows = [row]
                return
        tail = recent if opening else None
        for shared, incremental in zip(running, plan.incrementals, strict=True):
            try:
                rows = incremental.advance(recent, fetch, series, since, tail)
                if rows is None:
                    rows = shared.computation.batch_rows(fetch)
            except IndicatorError as exc:
                shared.rows = _NO_ROWS
                _failed(shared, exc)
                continue
            shared.rows = rows
        if opening and all(not shared.computation.opening[0] for shared in running):
            self._opening.discard(series)

    def _on_tail(
        self,
        series: SeriesId,
        fetch: Fetch,
        on_tail: list[Shared],
        size: int,
        since: int | None,
    ) -> None:
        for shared in on_tail:
            shared.rows = []
        try:
            columns = Columns(fetch(series, size if since is None else size + 1))
        except IndicatorError as exc:
            for shared in on_tail:
                _failed(shared, exc)
            return
        if len(columns) == 0:
            return
        tails = [columns]
        if since is not None and len(columns) > 1:
            closed = columns.before_last()
            if since <= closed.time:
                tails.insert(0, closed)
        for tail in tails:
            time = tail.time
            for shared in on_tail:
                self.computations += 1
                started = _clock()
                try:
                    values = shared.computation.newest(tail)
                except IndicatorError as exc:
                    _failed(shared, exc)
                    continue
                finally:
                    self._timed(shared, started)
                shared.rows.append((time, values))

    def _timed(self, shared: Shared, started: float) -> None:
        """Note a computation that took longer than :data:`LIVE_BUDGET_SECONDS` (its owner
        stops it: :meth:`take_too_slow`); it runs on the event loop, between two batches."""
        spent = _clock() - started
        if spent > LIVE_BUDGET_SECONDS:
            self._too_slow.append((shared, spent))

    def take_too_slow(self) -> list[tuple[Shared, float]]:
        """The computations that ran over their budget since the last call, and how long."""
        found, self._too_slow = self._too_slow, []
        return found

    def _forget(self, key: Key) -> None:
        shared = self._shared.pop(key)
        for series in shared.computation.bound.series:
            self._plans.pop(series, None)
            keys = self._by_series.get(series)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._by_series[series]
                    self._opening.discard(series)


def _failed(shared: Shared, exc: IndicatorError) -> None:
    logger.warning("live indicator %s: %s", shared.computation.bound.indicator_id, exc.message)


def updates_of(group: Group) -> list[IndicatorUpdate]:
    """The rows computed for ``group``, one update per chart id and row (each with the same
    ``clients`` object)."""
    updates = []
    new = tuple.__new__  # IndicatorUpdate(...) without the Python-level __new__
    dates: dict[int, str] = {}
    for shared, chart_id, chart in group:
        holders = chart.holders()
        reads = shared.computation.bound.series
        for time, values in shared.rows:
            date = dates.get(time)
            if date is None:
                date = dates[time] = intervals.format_date(time)
            update = (chart_id, chart.names, (date, *values), holders, reads, time)
            updates.append(new(IndicatorUpdate, update))
    return updates
