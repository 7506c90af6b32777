"""The hub's wire protocol at ``/websocket/`` (DESIGN 5.1): parsing requests, encoding replies.

Client frames are parsed once, here, into typed requests; anything malformed becomes a
:class:`BadRequest` that the endpoint answers with an ``error`` message (and, where the
request names a series, the empty ``data_init``/``data_history`` the protocol requires).
Server messages are encoded with orjson, which writes NaN and infinities as ``null``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from backend.model import intervals
from backend.model.bars import Bar, SeriesId, WireKeys
from backend.wire.frames import text_frame

DEFAULT_COUNT = 300


@dataclass(frozen=True, slots=True)
class DataRequest:
    series: SeriesId
    count: int
    stream: bool
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    series: SeriesId
    end: int
    count: int
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    search: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SearchIndicatorsRequest:
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    series: SeriesId
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PingRequest:
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that cannot be served. ``reply_type`` names the empty reply it still gets."""

    code: str
    message: str
    raw: Any
    series: SeriesId | None = None
    reply_type: str | None = None


Request = (
    DataRequest
    | HistoryRequest
    | SearchRequest
    | SearchIndicatorsRequest
    | UnsubscribeRequest
    | PingRequest
    | BadRequest
)


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_frame(text: str | bytes, max_requests: int, max_count: int) -> list[Request]:
    """Parse one client frame: a JSON array of requests (a bare object is accepted)."""
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return [BadRequest("bad_json", f"frame is not valid JSON: {exc}", None)]
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        kind = type(payload).__name__
        return [
            BadRequest(
                "bad_request", f"frame must be a JSON array of requests, not {kind}", payload
            )
        ]
    if len(payload) > max_requests:
        return [
            BadRequest(
                "limit_reached",
                f"{len(payload)} requests in one frame; at most {max_requests}",
                None,
            )
        ]
    return [parse_request(item, max_count) for item in payload]


def parse_request(item: Any, max_count: int) -> Request:
    """Parse one request object."""
    if not isinstance(item, dict):
        return BadRequest("bad_request", "each request must be a JSON object", item)
    kind = item.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        if kind is None:
            return BadRequest("missing_field", "request has no 'type'", item)
        return BadRequest(
            "unknown_type",
            f"unknown request type {kind!r}; known: " + ", ".join(sorted(_PARSERS)),
            item,
        )
    return parser(item, max_count)


def _parse_data(item: dict[str, Any], max_count: int) -> Request:
    try:
        series = _series(item)
    except _Invalid as exc:
        return BadRequest(exc.code, exc.message, item)
    try:
        count = _count(item, max_count)
        stream = item.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise _Invalid("invalid_field", "'stream' must be true or false")
        _check_interval(series)
    except _Invalid as exc:
        return BadRequest(exc.code, exc.message, item, series, "data_init")
    return DataRequest(series, count, stream, item)


def _parse_history(item: dict[str, Any], max_count: int) -> Request:
    try:
        series = _series(item)
    except _Invalid as exc:
        return BadRequest(exc.code, exc.message, item)
    try:
        count = _count(item, max_count)
        _check_interval(series)
        end = item.get("end")
        if end is None or end == "":
            raise _Invalid("missing_field", "data_history needs 'end' (YYYY-MM-DD HH:MM:SS)")
        if not isinstance(end, str):
            raise _Invalid("invalid_field", "'end' must be a date string YYYY-MM-DD HH:MM:SS")
        try:
            end_t = intervals.parse_date(end)
        except ValueError:
            raise _Invalid("invalid_field", f"'end' {end!r} is not YYYY-MM-DD HH:MM:SS") from None
    except _Invalid as exc:
        return BadRequest(exc.code, exc.message, item, series, "data_history")
    return HistoryRequest(series, end_t, count, item)


def _parse_search(item: dict[str, Any], max_count: int) -> Request:
    search = item.get("search", "")
    if search is None:
        search = ""
    if not isinstance(search, str):
        return BadRequest("invalid_field", "'search' must be a string", item)
    return SearchRequest(search[:200], item)


def _parse_unsubscribe(item: dict[str, Any], max_count: int) -> Request:
    try:
        return UnsubscribeRequest(_series(item), item)
    except _Invalid as exc:
        return BadRequest(exc.code, exc.message, item)


def _parse_search_indicators(item: dict[str, Any], max_count: int) -> Request:
    return SearchIndicatorsRequest(item)


def _parse_ping(item: dict[str, Any], max_count: int) -> Request:
    return PingRequest(item)


_PARSERS: dict[str, Callable[[dict[str, Any], int], Request]] = {
    "data": _parse_data,
    "data_history": _parse_history,
    "search_data": _parse_search,
    "search_indicators": _parse_search_indicators,
    "unsubscribe": _parse_unsubscribe,
    "ping": _parse_ping,
}


def _series(item: dict[str, Any]) -> SeriesId:
    values = []
    for field in ("source", "name", "interval"):
        value = item.get(field)
        if value is None:
            raise _Invalid("missing_field", f"request needs {field!r}")
        if not isinstance(value, str) or not value or len(value) > 200:
            raise _Invalid("invalid_field", f"{field!r} must be a non-empty string")
        values.append(value)
    return SeriesId(*values)


def _check_interval(series: SeriesId) -> None:
    if not intervals.is_interval(series.interval):
        raise _Invalid(
            "unknown_interval",
            f"unknown interval {series.interval!r} for {series.source}:{series.name}; "
            f"known: {', '.join(intervals.INTERVALS)}",
        )


def _count(item: dict[str, Any], max_count: int) -> int:
    count = item.get("count", DEFAULT_COUNT)
    if count is None:
        return DEFAULT_COUNT
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool):
        raise _Invalid("invalid_field", "'count' must be an integer")
    if not 1 <= count <= max_count:
        raise _Invalid("count_out_of_range", f"'count' {count} out of range 1..{max_count}")
    return count


# ---------------------------------------------------------------- server messages


def encode(message: dict[str, Any]) -> bytes:
    """One server message as UTF-8 JSON (the payload of one text frame)."""
    return orjson.dumps(message)


def series_message(
    kind: str, series: SeriesId, data: list[dict[str, Any]], metadata: Any = None
) -> bytes:
    """``data_init`` or ``data_history``."""
    return encode(
        {
            "type": kind,
            "source": series.source,
            "name": series.name,
            "interval": series.interval,
            "metadata": metadata,
            "data": data,
        }
    )


def update_message(series: SeriesId, point: dict[str, Any]) -> bytes:
    return encode(
        {
            "type": "data_update",
            "source": series.source,
            "name": series.name,
            "interval": series.interval,
            "data": point,
        }
    )


class UpdateEncoder:
    """The ``data_update`` frames of one series: everything but the datapoint is encoded
    once, and each frame is a complete WebSocket frame shared by every subscriber."""

    __slots__ = ("_prefix", "_wire")

    def __init__(self, series: SeriesId, wire: WireKeys) -> None:
        head = encode(
            {
                "type": "data_update",
                "source": series.source,
                "name": series.name,
                "interval": series.interval,
            }
        )
        self._prefix = head[:-1] + b',"data":'
        self._wire = wire

    def frame(self, bar: Bar) -> bytes:
        """The frame of ``update_message(series, datapoint(bar))``."""
        return text_frame(self._prefix + orjson.dumps(self._wire.raw_datapoint(bar)) + b"}")


def search_done(search: str, results: list[dict[str, Any]]) -> bytes:
    """``search_data_done``: the rows found for ``search``, which it echoes."""
    return encode({"type": "search_data_done", "search": search, "results": results})


def error_message(code: str, message: str, request: Any = None) -> bytes:
    return encode({"type": "error", "code": code, "message": message, "request": request})
