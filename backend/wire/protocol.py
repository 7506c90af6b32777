"""The hub's wire protocol at ``/websocket/`` (DESIGN 5.1): parsing requests, encoding replies.

Client frames are parsed once, here, into typed requests; anything malformed becomes a
:class:`BadRequest` that the endpoint answers with an ``error`` message (and, where the
request names a series, the empty ``data_init``/``data_history`` the protocol requires).
Server messages are encoded with orjson, which writes NaN and infinities as ``null``.

Hostile input is bounded here: :func:`load_frame` (shared by every socket endpoint) turns
invalid JSON, frames of more than :data:`MAX_VALUES` values and nesting deeper than
:data:`MAX_DEPTH` into a :class:`ProtocolError`, and an ``error`` reply never echoes more
than about :data:`ECHO_LIMIT` bytes of the request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from backend.errors import ProtocolError
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, WireKeys
from backend.wire.frames import text_frame, text_frame_header
from backend.wire.requests import check_count, check_interval, clip, quote

DEFAULT_COUNT = 300
# Deepest JSON nesting accepted in a frame (the frame's array counts as one level).
MAX_DEPTH = 32
# Most JSON values (arrays, objects and their items) in a frame, counted before it is decoded:
# an 8 MiB frame of empty objects decodes to 2.8 million dicts (about 350 MB, and seconds of
# the event loop's time). Real frames hold at most a few thousand (their size is in strings);
# 100,000 decode to about 12 MB in well under a second, and a frame of a hostile 5,000 scan
# rules is still read, so that its scan is refused and ended as the front end expects.
MAX_VALUES = 100_000
_STRING = re.compile(r'"[^"]*"')
_STRING_BYTES = re.compile(rb'"[^"]*"')
# Most bytes of a request echoed in an ``error`` reply, and characters of its message.
ECHO_LIMIT = 1024
MESSAGE_LIMIT = 400
MAX_ID_CHARS = 256
MAX_FIELD_CHARS = 200  # of a source, name or interval
MAX_TYPE_ECHO = 32  # characters of an unknown type quoted back (the known list is long)
# Request types of the indicators and the scanner (backend.indicators.messages.TYPES).
INDICATOR_TYPES = ("search_indicators", "indicator", "indicator_history", "scan", "scan_stop")
# Alerts (spec section 3 and the ``alerts`` / ``alert_delete`` extensions) and the AI chat.
ALERT_TYPES = ("vapid_public_key", "alert", "alerts", "alert_delete")
CHAT_TYPES = ("prompt", "prompt_reply")
# Tradiny features this server answers with ``error`` ``unsupported``.
UNSUPPORTED_TYPES = ("optimize_indicator_params",)


@dataclass(frozen=True, slots=True)
class DataRequest:
    series: SeriesId
    count: int
    stream: bool
    raw: dict[str, Any]
    capped: bool = False  # it asked for more than MAX_COUNT bars: ``count`` is MAX_COUNT


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    series: SeriesId
    end: int
    count: int
    raw: dict[str, Any]
    capped: bool = False  # it asked for more than MAX_COUNT bars: ``count`` is MAX_COUNT


@dataclass(frozen=True, slots=True)
class SearchRequest:
    search: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IndicatorsRequest:
    """``search_indicators``, ``indicator``, ``indicator_history``, ``scan`` or ``scan_stop``.

    Routed here, parsed by the hub with :mod:`backend.indicators.messages` (a layer the
    wire may not import), which answers a malformed one with ``error`` and the empty reply.
    """

    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlertRequest:
    """``vapid_public_key``, ``alert``, ``alerts`` or ``alert_delete`` (``hub.alerting``)."""

    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """``prompt`` or ``prompt_reply`` (``hub.chatting``)."""

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
    | IndicatorsRequest
    | AlertRequest
    | ChatRequest
    | UnsubscribeRequest
    | PingRequest
    | BadRequest
)


def load_frame(text: str | bytes) -> Any:
    """The JSON value of one client frame, for every socket endpoint.

    Raises :class:`ProtocolError`: ``bad_json`` for anything that is not JSON (invalid
    UTF-8, NaN, infinities included), ``bad_request`` for nesting deeper than ``MAX_DEPTH``,
    ``limit_reached`` for more than ``MAX_VALUES`` values (before decoding them).
    """
    if len(text) > MAX_VALUES and _values_over(text, MAX_VALUES):
        raise ProtocolError(
            "limit_reached",
            f"frame holds more than {MAX_VALUES} JSON values (arrays, objects and their items)",
        )
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1024 levels)
            raise _too_deep() from None
        raise ProtocolError(
            "bad_json", f"frame is not valid JSON: {clip(str(exc), MESSAGE_LIMIT // 2)}"
        ) from None
    if _bracket_count(text) > MAX_DEPTH and nesting_exceeds(payload, MAX_DEPTH):
        raise _too_deep()
    return payload


def _values_over(text: str | bytes, limit: int) -> bool:
    """Whether the JSON ``text`` holds more than about ``limit`` values, read at C speed
    without decoding it: outside strings, every ``[`` and ``{`` opens a value and every
    ``,`` comes before one. They are counted in the whole text first (enough for a frame
    whose size is a string: a chat prompt's image), then outside its strings. For invalid
    JSON the count bounds what the decoder builds before it stops at the first error."""
    if isinstance(text, bytes):
        if text.count(b",") + text.count(b"[") + text.count(b"{") <= limit:
            return False
        bare = text.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes never end a string
        if bare.count(b'"') > 2 * limit:  # that many strings are that many values (or keys)
            return True
        bare = _STRING_BYTES.sub(b"", bare)
        return bare.count(b",") + bare.count(b"[") + bare.count(b"{") > limit
    if text.count(",") + text.count("[") + text.count("{") <= limit:
        return False
    plain = text.replace("\\\\", "").replace('\\"', "")
    if plain.count('"') > 2 * limit:
        return True
    plain = _STRING.sub("", plain)
    return plain.count(",") + plain.count("[") + plain.count("{") > limit


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if type(item) is dict else item:
            if type(child) is dict or type(child) is list:  # orjson makes exact types
                stack.append((child, depth + 1))
    return False


def _bracket_count(text: str | bytes) -> int:
    """An upper bound of the nesting depth, cheap to compute: most frames stop here."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


def _too_deep() -> ProtocolError:
    return ProtocolError("bad_request", f"JSON nested deeper than {MAX_DEPTH} levels")


def parse_frame(text: str | bytes, max_requests: int, max_count: int) -> list[Request]:
    """Parse one client frame: a JSON array of requests (a bare object is accepted)."""
    try:
        payload = load_frame(text)
    except ProtocolError as exc:
        return [BadRequest(exc.code, exc.message, None)]
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
            f"unknown request type {_quote_type(kind)}; known: {', '.join(_CORE_TYPES)} "
            "and the indicator, scanner, alert and chat types of the README",
            item,
        )
    return parser(item, max_count)


def _quote_type(kind: Any) -> str:
    """An unknown ``type``, quoted short: the list of known types that follows is long."""
    return quote(clip(kind, MAX_TYPE_ECHO) if isinstance(kind, str) else kind)


def _parse_data(item: dict[str, Any], max_count: int) -> Request:
    try:
        series = _series(item)
    except ProtocolError as exc:
        return BadRequest(exc.code, exc.message, item, reply_type="data_init")
    try:
        # A series added to a Tradiny chart asks for as many bars as the chart holds, more
        # than MAX_COUNT after a long scroll back: it gets the latest MAX_COUNT (the rest
        # pages in with data_history), not an empty data_init that drops its pane.
        count, capped = _count(item, max_count)
        stream = item.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise ProtocolError("invalid_field", "'stream' must be true or false")
        check_interval(series)
    except ProtocolError as exc:
        return BadRequest(exc.code, exc.message, item, series, "data_init")
    return DataRequest(series, count, stream, item, capped)


def _parse_history(item: dict[str, Any], max_count: int) -> Request:
    try:
        series = _series(item)
    except ProtocolError as exc:
        return BadRequest(exc.code, exc.message, item, reply_type="data_history")
    try:
        # How far back to page is how far past its left edge the front end's view reaches
        # (Tradiny: the oldest row's index + |domain[0]|), unbounded when zoomed out: more
        # than MAX_COUNT gets the newest MAX_COUNT bars up to ``end``, and paging goes on.
        count, capped = _count(item, max_count)
        check_interval(series)
        end = item.get("end")
        if end is None or end == "":
            raise ProtocolError("missing_field", "data_history needs 'end' (YYYY-MM-DD HH:MM:SS)")
        if not isinstance(end, str):
            raise ProtocolError("invalid_field", "'end' must be a date string YYYY-MM-DD HH:MM:SS")
        try:
            end_t = intervals.parse_date(end)
        except ValueError:
            raise ProtocolError(
                "invalid_field", f"'end' {quote(end)} is not YYYY-MM-DD HH:MM:SS"
            ) from None
    except ProtocolError as exc:
        return BadRequest(exc.code, exc.message, item, series, "data_history")
    return HistoryRequest(series, end_t, count, item, capped)


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
    except ProtocolError as exc:
        return BadRequest(exc.code, exc.message, item)


def _parse_indicators(item: dict[str, Any], max_count: int) -> Request:
    return IndicatorsRequest(item)


def _parse_alert(item: dict[str, Any], max_count: int) -> Request:
    return AlertRequest(item)


def _parse_chat(item: dict[str, Any], max_count: int) -> Request:
    return ChatRequest(item)


def _parse_unsupported(item: dict[str, Any], max_count: int) -> Request:
    kind = _quote_type(item.get("type"))
    return BadRequest("unsupported", f"{kind} is not supported by this server", item)


def _parse_ping(item: dict[str, Any], max_count: int) -> Request:
    ping_id = item.get("id")
    if isinstance(ping_id, dict | list) or (
        isinstance(ping_id, str) and len(ping_id) > MAX_ID_CHARS
    ):
        return BadRequest(
            "invalid_field",
            f"'id' must be a number or a string of at most {MAX_ID_CHARS} chars",
            item,
        )
    return PingRequest(item)


_CORE_TYPES = ("data", "data_history", "search_data", "unsubscribe", "ping")
_PARSERS: dict[str, Callable[[dict[str, Any], int], Request]] = {
    "data": _parse_data,
    "data_history": _parse_history,
    "search_data": _parse_search,
    **dict.fromkeys(INDICATOR_TYPES, _parse_indicators),
    **dict.fromkeys(ALERT_TYPES, _parse_alert),
    **dict.fromkeys(CHAT_TYPES, _parse_chat),
    **dict.fromkeys(UNSUPPORTED_TYPES, _parse_unsupported),
    "unsubscribe": _parse_unsubscribe,
    "ping": _parse_ping,
}


def _series(item: dict[str, Any]) -> SeriesId:
    values = []
    for field in ("source", "name", "interval"):
        value = item.get(field)
        if value is None:
            raise ProtocolError("missing_field", f"request needs {field!r}")
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD_CHARS:
            raise ProtocolError(
                "invalid_field", f"{field!r} must be a string of 1 to {MAX_FIELD_CHARS} characters"
            )
        values.append(value)
    return SeriesId(*values)


def _count(item: dict[str, Any], max_count: int) -> tuple[int, bool]:
    """The request's ``count`` (none or null: 300, or ``max_count`` if that is smaller),
    and whether it asked for more than ``max_count`` (then ``max_count``:
    :func:`capped_message` says so); below 1 is ``count_out_of_range``."""
    count = item.get("count")
    if count is None:
        return min(DEFAULT_COUNT, max_count), False
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool):
        raise ProtocolError("invalid_field", "'count' must be an integer")
    if count > max_count:
        return max_count, True
    check_count(count, max_count)
    return count, False


def capped_message(max_count: int, request: Any) -> bytes:
    """The ``error`` ``count_out_of_range`` of a ``data`` / ``data_history`` that asked for
    more than ``max_count`` bars and is answered with ``max_count`` of them (a Tradiny chart
    zoomed out or scrolled far back asks for more; it pages on from the oldest)."""
    message = f"count is at most {max_count}: the newest {max_count} bars are sent"
    return error_message("count_out_of_range", message, request)


# ---------------------------------------------------------------- server messages


def encode(message: dict[str, Any]) -> bytes:
    """One server message as UTF-8 JSON (the payload of one text frame)."""
    return orjson.dumps(message)


def empty_reply(kind: str, item: Mapping[str, Any]) -> bytes:
    """The empty ``data_init`` / ``data_history`` of a request whose source, name or
    interval is not a usable string: each echoed when a string (clipped to
    :data:`MAX_FIELD_CHARS`), else null, so that a client waiting for the reply of that
    request gets one."""
    echoed = {}
    for field in ("source", "name", "interval"):
        value = item.get(field)
        echoed[field] = value[:MAX_FIELD_CHARS] if isinstance(value, str) else None
    return encode({"type": kind, **echoed, "metadata": None, "data": []})


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


# The pieces of ``series_message`` for a frame cached in parts (``backend.history.encoded``):
# series_head() + datapoints_json(closed bars) + "," + datapoints_json([last bar]) + SERIES_END
# is byte for byte the message ``series_message`` encodes for the same bars.
SERIES_END = b"]}"


def series_head(kind: str, series: SeriesId, metadata: Any = None) -> bytes:
    """``series_message(kind, series, data, metadata)`` up to its first datapoint."""
    head = encode(
        {
            "type": kind,
            "source": series.source,
            "name": series.name,
            "interval": series.interval,
            "metadata": metadata,
        }
    )
    return head[:-1] + b',"data":['


def datapoints_json(wire: WireKeys, bars: Sequence[Bar]) -> bytes:
    """The datapoints of ``bars`` as ``series_message`` writes them, without the brackets."""
    if not bars:
        return b""
    return orjson.dumps([wire.raw_datapoint(bar) for bar in bars])[1:-1]


def series_frame(
    start: Sequence[bytes | memoryview], has_closed: bool, last: bytes
) -> tuple[bytes, int, int]:
    """The text frame of ``start`` (the head and the closed bars' datapoints, in pieces),
    then ``last`` (the last datapoint, or nothing). Returns the frame, where its payload
    starts and where ``start`` ends in it (the part a later frame can reuse)."""
    separator = b"," if has_closed and last else b""
    size = sum(len(part) for part in start)
    header = text_frame_header(size + len(separator) + len(last) + len(SERIES_END))
    frame = b"".join((header, *start, separator, last, SERIES_END))
    return frame, len(header), len(header) + size


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
    """An ``error`` reply; the message and the echoed request are shortened when long."""
    return encode(
        {
            "type": "error",
            "code": code,
            "message": clip(message, MESSAGE_LIMIT),
            "request": echo(request),
        }
    )


def rate_limited_message(retry_after: float, request: Any = None) -> bytes:
    """The ``error rate_limited`` answer to a request over the client's request rate."""
    wait = round(retry_after, 1)
    return encode(
        {
            "type": "error",
            "code": "rate_limited",
            "message": f"too many requests; retry after {wait:g} s",
            "request": echo(request),
            "retry_after": wait,
        }
    )


# ---------------------------------------------------------------- bounding echoes

_SHORT_STRING = 96
_SHORT_KEY = 32


def echo(request: Any) -> Any:
    """``request`` as echoed in an ``error`` reply: itself when it encodes in at most
    ``ECHO_LIMIT`` bytes, else its first scalar fields, shortened, within that budget."""
    try:
        if len(orjson.dumps(request)) <= ECHO_LIMIT:
            return request
    except orjson.JSONEncodeError:
        pass  # nested too deep to encode: shortened below, which never recurses
    if isinstance(request, dict):
        return _shorten_fields(request.items())
    if isinstance(request, list):
        return f"<array of {len(request)} items>"
    if isinstance(request, str):
        return clip(request, _SHORT_STRING)
    return None


def _shorten_fields(items: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    shortened: dict[str, Any] = {}
    budget = ECHO_LIMIT - 2
    for key, value in items:
        name = clip(str(key), _SHORT_KEY)
        short = _short_value(value)
        cost = len(orjson.dumps(name)) + len(orjson.dumps(short)) + 2
        if cost > budget:
            break
        shortened[name] = short
        budget -= cost
    return shortened


def _short_value(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value, _SHORT_STRING)
    if isinstance(value, dict):
        return "{\u2026}"
    if isinstance(value, list):
        return "[\u2026]"
    if (
        value is None
        or isinstance(value, bool | float)
        or (isinstance(value, int) and -(1 << 63) <= value < 1 << 64)
    ):
        return value
    return clip(repr(value), _SHORT_STRING)  # what orjson cannot encode (a huge int, ...)
