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
from dataclasses import dataclass

from backend.errors import IndicatorError
from backend.indicators.engine import BoundIndicator, Computed, Fetch, LiveComputation
from backend.model import intervals
from backend.model.bars import SeriesId

logger = logging.getLogger(__name__)

Key = tuple[object, ...]


@dataclass(frozen=True)
class IndicatorUpdate:
    """The newest row of one chart id, for every client that holds it."""

    chart_id: str
    row: dict[str, object]
    clients: frozenset[Hashable]
    series: tuple[SeriesId, ...] = ()  # what it reads, for ``last_dates``


@dataclass
class _Shared:
    computation: LiveComputation
    charts: dict[str, set[Hashable]]  # chart id -> clients


class LiveIndicators:
    """The indicator subscriptions of every client; one shared computation per key."""

    def __init__(self) -> None:
        self._shared: dict[Key, _Shared] = {}
        self._by_series: dict[SeriesId, set[Key]] = {}
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
                self._by_series.setdefault(series, set()).add(key)
        shared.charts.setdefault(chart_id, set()).add(client)
        self._by_client.setdefault(client, {})[chart_id] = key

    def unsubscribe(self, client: Hashable, chart_id: str) -> None:
        held = self._by_client.get(client)
        key = held.pop(chart_id, None) if held is not None else None
        if held is not None and not held:
            del self._by_client[client]
        if key is None:
            return
        shared = self._shared[key]
        clients = shared.charts[chart_id]
        clients.discard(client)
        if not clients:
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
        for key in self._by_series.get(series, ()):
            self._shared[key].computation.reset()

    def on_bar(self, series: SeriesId, fetch: Fetch) -> list[IndicatorUpdate]:
        """After a ``data_update`` of ``series``: one computation per key, one update per
        chart id. A computation that fails is logged and skipped; the others still run."""
        updates: list[IndicatorUpdate] = []
        for key in list(self._by_series.get(series, ())):
            shared = self._shared[key]
            self.computations += 1
            try:
                newest = shared.computation.step(fetch)
            except IndicatorError as exc:
                logger.warning("live indicator %s: %s", key[0], exc.message)
                continue
            if newest is not None:
                updates.extend(_fan_out(shared, *newest))
        return updates

    def _forget(self, key: Key) -> None:
        shared = self._shared.pop(key)
        for series in shared.computation.bound.series:
            keys = self._by_series.get(series)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_series[series]


def _fan_out(shared: _Shared, time: int, values: list[float | None]) -> list[IndicatorUpdate]:
    date = intervals.format_date(time)
    bound = shared.computation.bound
    outputs = [output.name for output in bound.indicator.outputs]
    updates = []
    for chart_id, clients in shared.charts.items():
        row: dict[str, object] = {"date": date}
        row.update(zip((f"{chart_id}-{name}" for name in outputs), values, strict=True))
        updates.append(IndicatorUpdate(chart_id, row, frozenset(clients), bound.series))
    return updates
