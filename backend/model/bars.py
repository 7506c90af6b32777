"""Bars: the compact tuple the hub stores, and its conversion to and from wire datapoints.

A bar is ``(t, open, high, low, close, volume)``: ``t`` is the open time in UTC seconds,
values are floats or ``None``. A line series stores its value in all four price fields and
``None`` as volume, so aggregation and storage treat both kinds alike.

A *datapoint* is the wire form (DESIGN 5.1): ``{"date": "YYYY-MM-DD HH:MM:SS",
"{source}-{name}-{interval}-open": ..., ...}`` for candlesticks, and
``{"date": ..., "{source}-{name}-{interval}": value}`` for lines.
"""

from __future__ import annotations

import calendar
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

from backend.model import intervals

Value = float | None
Bar = tuple[int, Value, Value, Value, Value, Value]

FIELDS = ("open", "high", "low", "close", "volume")
CANDLESTICK = "candlestick"
LINE = "line"


class SeriesId(NamedTuple):
    """A subscription key: ``(source, name, interval)``."""

    source: str
    name: str
    interval: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}:{self.interval}"


class WireKeys:
    """The column names of one series on the wire, computed once per key."""

    __slots__ = ("candle_keys", "kind", "line_key")

    def __init__(self, series: SeriesId, kind: str) -> None:
        base = f"{series.source}-{series.name}-{series.interval}"
        self.kind = kind
        self.line_key = base
        self.candle_keys = tuple(f"{base}-{field}" for field in FIELDS)

    def datapoint(self, bar: Bar, date: str | None = None) -> dict[str, Any]:
        """The wire datapoint for ``bar`` (``date`` may be passed if already formatted)."""
        point: dict[str, Any] = {"date": date or intervals.format_date(bar[0])}
        if self.kind == LINE:
            point[self.line_key] = _finite(bar[4])
        else:
            o, h, lo, c, v = self.candle_keys
            point[o] = _finite(bar[1])
            point[h] = _finite(bar[2])
            point[lo] = _finite(bar[3])
            point[c] = _finite(bar[4])
            point[v] = _finite(bar[5])
        return point

    def raw_datapoint(self, bar: Bar) -> dict[str, Any]:
        """:meth:`datapoint` without replacing non-finite values: only for orjson, which
        writes NaN and infinities as ``null`` itself (the hot path of live updates)."""
        if self.kind == LINE:
            return {"date": intervals.format_date(bar[0]), self.line_key: bar[4]}
        o, h, lo, c, v = self.candle_keys
        return {
            "date": intervals.format_date(bar[0]),
            o: bar[1],
            h: bar[2],
            lo: bar[3],
            c: bar[4],
            v: bar[5],
        }

    def datapoints(self, bars: Iterable[Bar]) -> list[dict[str, Any]]:
        return [self.datapoint(bar) for bar in bars]


def _finite(value: Value) -> Value:
    if value is None or math.isfinite(value):
        return value
    return None


def to_number(value: object) -> Value:
    """A float from a number or numeric string; ``None`` for missing or non-finite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def to_epoch(value: object) -> int:
    """UTC seconds from a date string, a datetime or date, or epoch seconds/milliseconds (also
    written as a string of digits, as some APIs send them, or as a numpy number)."""
    if isinstance(value, str):
        if value.isdecimal():
            value = int(value)
        else:
            return intervals.parse_date(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return intervals.parse_date(value.strftime(intervals.DATE_FORMAT))
        return int(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = int(value)
        return number // 1000 if abs(number) >= 100_000_000_000 else number
    if isinstance(value, date):  # a day, as vendors date daily bars: its midnight UTC
        return calendar.timegm(value.timetuple())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy's numbers
        return to_epoch(float(value))
    raise ValueError(f"cannot read a bar time from {value!r}")


def from_datapoint(point: Mapping[str, Any], series: SeriesId | None = None) -> Bar:
    """Read a bar from a datapoint dict as providers return them.

    Accepts the wire keys (``{source}-{name}-{interval}-open`` ...), bare field names
    (``open`` ...), the line key ``{source}-{name}-{interval}``, or a single ``value``.
    Raises ``ValueError`` when there is no usable date.
    """
    if "date" in point:
        t = to_epoch(point["date"])
    elif "time" in point:
        t = to_epoch(point["time"])
    else:
        raise ValueError("datapoint has no 'date'")
    found: dict[str, Value] = {}
    line_value: Value = None
    line_seen = False
    base = f"{series.source}-{series.name}-{series.interval}" if series else None
    for key, raw in point.items():
        if key in ("date", "time"):
            continue
        field = key.rsplit("-", 1)[-1] if "-" in key else key
        if field in FIELDS and (base is None or key in (field, f"{base}-{field}")):
            found[field] = to_number(raw)
        elif key in (base, "value") or (base is None and "-" in key):
            line_value, line_seen = to_number(raw), True
    if not found and line_seen:
        return (t, line_value, line_value, line_value, line_value, None)
    if base is not None and not found.keys() - {"volume"}:
        _check_prefix(point, base)
    close = found.get("close")
    return (
        t,
        found.get("open", close),
        found.get("high", close),
        found.get("low", close),
        close,
        found.get("volume"),
    )


def _check_prefix(point: Mapping[str, Any], base: str) -> None:
    """Raise ``ValueError`` for a datapoint without a price whose keys name a price of
    another series (a provider copied from the seed and registered under another key keeps
    its ``my_provider-...`` keys): say which key, instead of "no price"."""
    for key in point:
        if isinstance(key, str) and "-" in key and key.rsplit("-", 1)[1] in FIELDS[:4]:
            field = key.rsplit("-", 1)[1]
            raise ValueError(
                f"datapoint key {key!r} is not of {base}: name it {base + '-' + field!r} "
                f"or {field!r}"
            )


def to_bar(value: object, series: SeriesId | None = None) -> Bar:
    """The one bar conversion: a bar from whatever a provider publishes or returns.

    Accepts a ``Bar`` tuple (returned as it is when already clean, so bars parsed by a
    provider are not converted twice), a datapoint dict (:func:`from_datapoint`), or a
    kline-like sequence ``[time, open, high, low, close(, volume)]`` with the time as a date
    string, a datetime, or epoch seconds or milliseconds. Raises ``ValueError``.
    """
    if (
        type(value) is tuple
        and len(value) == 6
        and type(value[0]) is int
        and all(v is None or (type(v) is float and math.isfinite(v)) for v in value[1:])
    ):
        t = value[0]
        return value if t < 100_000_000_000 else (t // 1000, *value[1:])
    if isinstance(value, Mapping):
        return from_datapoint(value, series)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) >= 5:
        o, h, lo, c = (to_number(x) for x in value[1:5])
        v = to_number(value[5]) if len(value) > 5 else None
        return (to_epoch(value[0]), o, h, lo, c, v)
    raise ValueError(f"cannot read a bar from {value!r:.200}")


def flaw(bar: Bar) -> str | None:
    """What makes ``bar`` impossible, or ``None``: an open time outside 1970-9999 (one in
    milliseconds, or garbage: no date can be written for it), no price at all (open, high,
    low and close all missing: fields that are no numbers, which would blank a real bar) or
    a high below its low (an upstream that swapped the fields, or garbage). Open and close
    outside the range are left alone: some feeds (Polygon's trade conditions) update them
    without the high and low."""
    t = bar[0]
    if not MIN_TIME <= t <= MAX_TIME:
        return f"an open time of {t} s, not between 1970 and 9999 (milliseconds?)"
    if bar[1] is None and bar[2] is None and bar[3] is None and bar[4] is None:
        return "no price (open, high, low and close missing or not numbers)"
    high, low = bar[2], bar[3]
    if high is not None and low is not None and high < low:
        return f"high {high} below low {low}"
    return None


MIN_TIME = 0  # 1970-01-01 00:00:00 UTC
MAX_TIME = 253_402_300_799  # 9999-12-31 23:59:59 UTC: the last date the wire format writes


def fold(current: Bar | None, t: int, update: Bar) -> Bar:
    """Fold ``update`` (a finer bar) into the bar opening at ``t``; ``current`` may be None."""
    _, o, h, lo, c, v = update
    if current is None:
        return (t, o, h, lo, c, v)
    _, co, ch, cl, _, cv = current
    return (
        t,
        co if co is not None else o,
        _max(ch, h),
        _min(cl, lo),
        c if c is not None else current[4],
        _add(cv, v),
    )


def _max(a: Value, b: Value) -> Value:
    if a is None:
        return b
    return a if b is None or a >= b else b


def _min(a: Value, b: Value) -> Value:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _add(a: Value, b: Value) -> Value:
    if a is None:
        return b
    return a if b is None else a + b
