"""An indicator instance as the front end describes it (spec section 2.1), parsed once.

The same object appears in ``indicator`` / ``indicator_history`` requests and inside the
``indicators`` map of ``alert`` and ``scan`` rules, so :mod:`.messages` and :mod:`.rules`
both read it through :func:`parse_indicator_config`. Every malformed field is an
:class:`~backend.errors.IndicatorError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from backend.errors import IndicatorError
from backend.indicators.engine import Binding
from backend.model import intervals
from backend.model.bars import FIELDS, SeriesId

MAX_TEXT = 1000
MAX_COLUMNS = 16
MAX_INPUTS = 32


@dataclass(frozen=True)
class IndicatorConfig:
    """``id`` (the chart-level instance id), the registry id, raw inputs and the dataMap."""

    chart_id: str
    indicator_id: str
    inputs: Mapping[str, object]
    bindings: tuple[Binding, ...]

    def rebound(self, old: tuple[str, str], new: tuple[str, str]) -> IndicatorConfig:
        """The same indicator over ``new`` (source, name) wherever it read ``old``."""
        bindings = tuple(
            replace(b, series=SeriesId(*new, b.series.interval))
            if (b.series.source, b.series.name) == old
            else b
            for b in self.bindings
        )
        return replace(self, bindings=bindings)


def parse_indicator_config(item: Mapping[str, Any]) -> IndicatorConfig:
    """Read ``id``, ``indicator.id``, ``inputs`` and ``dataMap``."""
    chart_id = text(item, "id")
    indicator = item.get("indicator")
    if not isinstance(indicator, dict):
        raise IndicatorError("invalid_field", "'indicator' must be the catalogue entry")
    inputs = item.get("inputs", {})
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict) or len(inputs) > MAX_INPUTS:
        raise IndicatorError("bad_input", "'inputs' must be an object of input values")
    return IndicatorConfig(chart_id, text(indicator, "id"), dict(inputs), _bindings(item))


def text(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise IndicatorError(
            "invalid_field", f"{name!r} must be a non-empty string of at most {MAX_TEXT} characters"
        )
    return value


def _bindings(item: Mapping[str, Any]) -> tuple[Binding, ...]:
    data_map = item.get("dataMap")
    if not isinstance(data_map, dict) or not data_map or len(data_map) > MAX_COLUMNS:
        raise IndicatorError("missing_columns", "'dataMap' must map each column to a series")
    return tuple(_binding(str(column), entry) for column, entry in data_map.items())


def _binding(column: str, entry: object) -> Binding:
    if not isinstance(entry, dict):
        raise IndicatorError("missing_columns", f"dataMap[{column!r}] must be an object")
    series = SeriesId(text(entry, "source"), text(entry, "name"), text(entry, "interval"))
    if not intervals.is_interval(series.interval):
        raise IndicatorError(
            "unknown_interval", f"dataMap[{column!r}]: unknown interval {series.interval!r}"
        )
    return Binding(column, series, _field(column, series, entry))


def _field(column: str, series: SeriesId, entry: Mapping[str, Any]) -> str:
    """The bar field of ``value`` (``Binance-BTCUSDT-1h-close`` -> ``close``; a line key
    without a field reads the line's value, stored as the close)."""
    base = f"{series.source}-{series.name}-{series.interval}"
    value = entry.get("value")
    if value == base:
        return "close"
    field: object = entry.get("dataKey")
    if isinstance(value, str) and value.startswith(base + "-"):
        field = value[len(base) + 1 :]
    if field not in FIELDS:
        raise IndicatorError(
            "missing_columns",
            f"dataMap[{column!r}]: {str(value)[:100]!r} names no field of {base} "
            f"({', '.join(FIELDS)})",
        )
    return str(field)
