"""Bar intervals: the 14 interval names, their lengths, and UTC bar alignment.

Times are integer seconds since the Unix epoch, UTC. Bars built by Candlewire itself are
UTC-aligned: intraday and daily bars on multiples of their length from midnight, weekly bars
on Monday 00:00, monthly bars on the 1st at 00:00. Upstream aggregates keep their own open
times (DESIGN 5.1); this module only aligns what we aggregate ourselves.
"""

from __future__ import annotations

import calendar
import functools
from datetime import UTC, datetime

INTERVALS: tuple[str, ...] = (
    "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w", "1M",
)  # fmt: skip

_MINUTE = 60
_DAY = 86_400
_WEEK = 7 * _DAY
# 1970-01-01 was a Thursday; the first Monday 00:00 UTC is four days later.
_MONDAY_OFFSET = 4 * _DAY

_FIXED_SECONDS: dict[str, int] = {
    "1m": _MINUTE,
    "3m": 3 * _MINUTE,
    "5m": 5 * _MINUTE,
    "15m": 15 * _MINUTE,
    "30m": 30 * _MINUTE,
    "1h": 60 * _MINUTE,
    "2h": 120 * _MINUTE,
    "4h": 240 * _MINUTE,
    "6h": 360 * _MINUTE,
    "8h": 480 * _MINUTE,
    "12h": 720 * _MINUTE,
    "1d": _DAY,
    "1w": _WEEK,
}
# A month has no fixed length; 43,800 minutes (about 30.4 days) is the lookback unit that
# Tradiny uses for it.
_NOMINAL_MONTH = 43_800 * _MINUTE

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def is_interval(name: object) -> bool:
    """Whether ``name`` is one of the 14 interval names."""
    return isinstance(name, str) and name in _INDEX


def nominal_seconds(interval: str) -> int:
    """Length of one bar in seconds (a month counts as 43,800 minutes)."""
    if interval == "1M":
        return _NOMINAL_MONTH
    return _FIXED_SECONDS[interval]


def floor(t: int, interval: str) -> int:
    """Open time of the UTC-aligned bar of ``interval`` that contains ``t``."""
    if interval == "1M":
        d = datetime.fromtimestamp(t, UTC)
        return calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    if interval == "1w":
        return (t - _MONDAY_OFFSET) // _WEEK * _WEEK + _MONDAY_OFFSET
    step = _FIXED_SECONDS[interval]
    return t - t % step


def next_open(t: int, interval: str) -> int:
    """Open time of the UTC-aligned bar after the one that contains ``t``."""
    if interval == "1M":
        d = datetime.fromtimestamp(t, UTC)
        year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0))
    return floor(t, interval) + _FIXED_SECONDS[interval]


def can_aggregate(base: str, target: str) -> bool:
    """Whether bars of ``target`` can be built exactly from UTC-aligned bars of ``base``."""
    if base == target:
        return True
    if _INDEX[base] > _INDEX[target]:
        return False
    if target == "1M":
        return _DAY % nominal_seconds(base) == 0
    if target == "1w":
        return _DAY % nominal_seconds(base) == 0
    return _FIXED_SECONDS[target] % _FIXED_SECONDS[base] == 0


@functools.lru_cache(maxsize=1 << 16)
def format_date(t: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, the wire format of a bar's ``date`` (memoized: the
    same bar times are formatted again and again for history answers and live updates)."""
    return datetime.fromtimestamp(t, UTC).strftime(DATE_FORMAT)


def parse_date(text: str) -> int:
    """Parse ``YYYY-MM-DD HH:MM:SS`` (or ISO-8601) as UTC seconds; raises ``ValueError``."""
    text = text.strip()
    try:
        d = datetime.strptime(text, DATE_FORMAT)
    except ValueError:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        return calendar.timegm(d.timetuple())
    return int(d.timestamp())


NOW_WORDS = frozenset(("now utc", "now", ""))


def parse_query_time(text: str | None) -> int | None:
    """UTC seconds of a provider hook's query time (``%Y-%m-%d %H:%M:%S``, or ISO-8601);
    ``None`` for ``"now UTC"`` (or empty). Raises ``ValueError`` for anything else."""
    if text is None or text.strip().lower() in NOW_WORDS:
        return None
    return parse_date(text)


_INDEX: dict[str, int] = {name: i for i, name in enumerate(INTERVALS)}
