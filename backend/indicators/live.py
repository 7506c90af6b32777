"""Live indicator subscriptions, sans-I/O: who holds which indicator instance, and one
computation per (indicator, inputs, dataMap) per update however many clients hold it.

The hub calls :meth:`LiveIndicators.subscribe` after answering an ``indicator`` request,
:meth:`~LiveIndicators.on_bar` after fanning out a ``data_update``, :meth:`~LiveIndicators.
drop_client` when a socket closes and :meth:`~LiveIndicators.reset_series` when a provider
restarts. :meth:`~LiveIndicators.on_bar` returns one :class:`IndicatorUpdate` per chart id
(each with its clients) for the hub to encode once and send; this module never awaits or
touches a socket. A client is any hashable handle the hub chooses.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

from backend.errors import IndicatorError
from backend.indicators.engine import BoundIndicator, Columns, Computed, Fetch, LiveComputation
from backend.model import intervals
from backend.model.bars import SeriesId

logger = logging.getLogger(__name__)

Key = tuple[object, ...]


class IndicatorUpdate(NamedTuple):
    """The newest row of one chart id, for every client that holds it."""

    chart_id: str
    row: dict[str, object]
    clients: frozenset[Hashable]  # the same object from one update to the next while they hold it
    series: tuple[SeriesId, ...] = ()  # what it reads, for ``last_dates``
    time: int = 0  # the bar time of ``row``


@dataclass
class _Chart:
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


@dataclass
class _Shared:
    computation: LiveComputation
    charts: dict[str, _Chart]  # chart id -> its keys and clients


class LiveIndicators:
    """The indicator subscriptions of every client; one shared computation per key."""

    def __init__(self) -> None:
        self._shared: dict[Key, _Shared] = {}
        self._by_series: dict[SeriesId, dict[Key, _Shared]] = {}
        self._by_client: dict[Hashable, dict[str, Key]] = {}
        self.computations = 0  # shared computations run by on_bar (for the metrics)

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
            shared = self._shared[key] = _Shared(LiveComputation(bound, seed), {})
            for series in bound.series:
                self._by_series.setdefault(series, {})[key] = shared
        chart = shared.charts.get(chart_id)
        if chart is None:
            names = ("date", *(f"{chart_id}-{o.name}" for o in bound.indicator.outputs))
            chart = shared.charts[chart_id] = _Chart(names)
        chart.add(client)
        self._by_client.setdefault(client, {})[chart_id] = key

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
        if not shared.charts:
            self._forget(key)

    def drop_client(self, client: Hashable) -> None:
        """Forget every indicator of a closed socket."""
        for chart_id in list(self._by_client.get(client, {})):
            self.unsubscribe(client, chart_id)

    def drop_series(self, client: Hashable, series: SeriesId) -> None:
        """Forget the indicators of ``client`` that read ``series`` (it unsubscribed)."""
        for chart_id, key in list(self._by_client.get(client, {}).items()):
            if series in self._shared[key].computation.bound.series:
                self.unsubscribe(client, chart_id)

    def held_by(self, client: Hashable) -> list[str]:
        return sorted(self._by_client.get(client, {}))

    def watches(self, series: SeriesId) -> bool:
        return series in self._by_series

    def reset_series(self, series: SeriesId) -> None:
        """The series was reloaded (provider restart): recompute running totals in full."""
        for shared in self._by_series.get(series, {}).values():
            shared.computation.reset()

    def on_bar(
        self, series: SeriesId, fetch: Fetch, since: int | None = None
    ) -> list[IndicatorUpdate]:
        """After a ``data_update`` of ``series``: one computation per key, one update per
        chart id. A computation that fails is logged and skipped; the others still run.
        The computations that read only a bounded tail of ``series`` share one fetch of the
        longest tail and its columns; when the updates began at ``since``, a bar older than
        the newest (it closed since: its last update was never computed), they also give
        the row of the bar before the newest, first."""
        updates: list[IndicatorUpdate] = []
        on_tail: list[_Shared] = []
        size = 0
        for shared in list(self._by_series.get(series, {}).values()):
            tail = shared.computation.tail
            if tail is not None and tail[0] == series:
                on_tail.append(shared)
                size = max(size, tail[1])
                continue
            self.computations += 1
            try:
                newest = shared.computation.step(fetch)
            except IndicatorError as exc:
                _failed(shared, exc)
                continue
            if newest is not None:
                updates.extend(_fan_out(shared, *newest))
        if on_tail:
            updates.extend(self._on_tail(series, fetch, on_tail, size, since))
        return updates

    def _on_tail(
        self,
        series: SeriesId,
        fetch: Fetch,
        on_tail: list[_Shared],
        size: int,
        since: int | None,
    ) -> list[IndicatorUpdate]:
        try:
            columns = Columns(fetch(series, size if since is None else size + 1))
        except IndicatorError as exc:
            for shared in on_tail:
                _failed(shared, exc)
            return []
        if len(columns) == 0:
            return []
        tails = [columns]
        if since is not None and len(columns) > 1:
            closed = columns.before_last()
            if since <= closed.time:
                tails.insert(0, closed)
        updates: list[IndicatorUpdate] = []
        for tail in tails:
            time = tail.time
            date = intervals.format_date(time)
            for shared in on_tail:
                self.computations += 1
                try:
                    values = shared.computation.newest(tail)
                except IndicatorError as exc:
                    _failed(shared, exc)
                    continue
                updates.extend(_fan_out(shared, time, values, date))
        return updates

    def _forget(self, key: Key) -> None:
        shared = self._shared.pop(key)
        for series in shared.computation.bound.series:
            keys = self._by_series.get(series)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._by_series[series]


def _failed(shared: _Shared, exc: IndicatorError) -> None:
    logger.warning("live indicator %s: %s", shared.computation.bound.indicator_id, exc.message)


def _fan_out(
    shared: _Shared, time: int, values: list[float | None], date: str | None = None
) -> list[IndicatorUpdate]:
    row = (date or intervals.format_date(time), *values)
    series = shared.computation.bound.series
    return [
        IndicatorUpdate(
            chart_id, dict(zip(chart.names, row, strict=True)), chart.holders(), series, time
        )
        for chart_id, chart in shared.charts.items()
    ]
