"""Validation of a series request, the same for ``/websocket/``, REST, UDF and OpenBB.

A request for bars names a series (source, symbol, interval) and usually a count. It can be
served when the interval is one we know, the count is in range, the source is an enabled
provider, the symbol is in the symbol database, and that symbol offers the interval.
:func:`validate_series` checks exactly that, in that order, and either returns the
symbol's dataset row or raises :class:`ProtocolError` with the wire code and a message that
names the value (:func:`quote` keeps a hostile value short). Each caller maps the code to
its own reply (an ``error`` message, an HTTP status, a UDF ``s: error``).

The symbol lookup is passed in, so the hub can use its cache and the HTTP endpoints that
resolve bare names first can hand over the row they found (:func:`known`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from backend.errors import ProtocolError
from backend.model import intervals
from backend.model.bars import SeriesId

Details = dict[str, Any]
Lookup = Callable[[str, str], Awaitable[Details | None]]

# Characters of a client value quoted in a message.
QUOTE_LIMIT = 64
# HTTP status of each validation code (REST and OpenBB answers).
HTTP_STATUS = {
    "unknown_source": 404,
    "unknown_symbol": 404,
    "unknown_interval": 400,
    "count_out_of_range": 400,
    "invalid_field": 400,
    "forbidden": 403,
}


@dataclass(frozen=True, slots=True)
class Failure:
    """The HTTP answer to a history call that failed without bars (REST and OpenBB)."""

    status: int
    code: str
    retry_after: float | None = None  # seconds, for ``rate_limited``

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds (at least 1) when the wait is known."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def failure(error: BaseException) -> Failure:
    """A provider's ``unknown_symbol`` is 404 (as when the database does not know it); a
    ``rate_limited`` refusal (the caller's upstream budget or fair share, or the upstream
    asking to slow down) is 429 with its wait, as the request-rate limit answers; any other
    failure is 503. The refusal was a 503 without ``Retry-After``: "the server is down"
    rather than "this client, wait N s", so HTTP clients retried at once, or gave up."""
    code = str(getattr(error, "code", "provider_error"))
    if code == "unknown_symbol":
        return Failure(404, code)
    if code == "rate_limited":
        wait = getattr(error, "retry_after", None)
        return Failure(429, code, float(wait) if isinstance(wait, int | float) else None)
    return Failure(503, code)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a request is checked against: the enabled providers, the largest count, and
    whether the caller may read a series (``backend.access``: a JWT's sources / symbols)."""

    enabled: Collection[str]
    max_count: int
    may_read: Callable[[SeriesId], bool] | None = None


async def validate_series(
    series: SeriesId, count: int | None, limits: Limits, lookup: Lookup
) -> Details:
    """The dataset row of ``series``; ``ProtocolError`` when it cannot be served.

    ``count`` None skips the count check (a caller that clamps instead of refusing).
    """
    check_interval(series)
    if count is not None:
        check_count(count, limits.max_count)
    if series.source not in limits.enabled:
        enabled = ", ".join(limits.enabled)
        raise ProtocolError(
            "unknown_source", f"unknown source {quote(series.source)}; enabled: {enabled}"
        )
    if limits.may_read is not None and not limits.may_read(series):
        raise ProtocolError("forbidden", f"no permission to read {_where(series)}")
    details = await lookup(series.source, series.name)
    if details is None:
        raise ProtocolError("unknown_symbol", f"unknown symbol {_where(series)}")
    offered = details.get("intervals") or intervals.INTERVALS
    if series.interval not in offered:
        raise ProtocolError(
            "unknown_interval",
            f"unknown interval {quote(series.interval)} for {_where(series)}; "
            f"known: {', '.join(offered)}",
        )
    return details


def check_interval(series: SeriesId) -> None:
    """``unknown_interval`` unless the interval is one of ``intervals.INTERVALS``."""
    if not intervals.is_interval(series.interval):
        raise ProtocolError(
            "unknown_interval",
            f"unknown interval {quote(series.interval)} for {_where(series)}; "
            f"known: {', '.join(intervals.INTERVALS)}",
        )


def check_count(count: int, max_count: int) -> None:
    if not 1 <= count <= max_count:
        raise ProtocolError(
            "count_out_of_range", f"'count' {quote(count)} out of range 1..{max_count}"
        )


def known(details: Details) -> Lookup:
    """A lookup that answers with a row the caller already resolved (and None otherwise)."""

    async def lookup(source: str, name: str) -> Details | None:
        if details.get("source") == source and details.get("name") == name:
            return details
        return None

    return lookup


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def quote(value: Any) -> str:
    """A client value for a message: its ``repr``, at most about ``QUOTE_LIMIT`` characters."""
    if isinstance(value, str):
        return repr(clip(value, QUOTE_LIMIT))
    return clip(repr(value), QUOTE_LIMIT)


def _where(series: SeriesId) -> str:
    return clip(f"{series.source}:{series.name}", 2 * QUOTE_LIMIT)
