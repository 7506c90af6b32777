"""Typed indicator and scanner requests, and the reply builders (spec sections 1, 2, 4).

:func:`parse_request` turns one request object of type ``search_indicators``,
``indicator``, ``indicator_history``, ``scan`` or ``scan_stop`` into a dataclass, or raises
the typed error (:class:`~backend.errors.IndicatorError`, :class:`~backend.errors.RuleError`,
:class:`~backend.errors.ProtocolError`). :func:`failure_replies` gives what the client must
still receive when a request fails: the ``error`` and, where the front end waits for one,
the empty reply. Replies are plain dicts for the hub's encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.errors import ProtocolError, RuleError
from backend.indicators.config import IndicatorConfig, parse_indicator_config
from backend.indicators.rules import RuleSet, parse_rule_set
from backend.model import intervals

DEFAULT_COUNT = 300
SCAN_DONE = "scan_done"
"""Our extension: the last message of every scan (Tradiny sends none, spec 4.6.2)."""


@dataclass(frozen=True)
class SearchIndicators:
    search: str


@dataclass(frozen=True)
class IndicatorRequest:
    """``indicator`` (``history`` False) or ``indicator_history``."""

    config: IndicatorConfig
    history: bool
    since: int | None  # range[0] as a bar time; None: the last ``count`` rows
    count: int
    stream: bool
    until: int | None = None  # ``indicator_history``: its ``end`` (the page's last row)

    @property
    def chart_id(self) -> str:
        return self.config.chart_id


@dataclass(frozen=True)
class ScanRequest:
    search: str
    rules: RuleSet
    template: tuple[str, str] | None  # (source, name) the rules were written for


@dataclass(frozen=True)
class ScanStop:
    pass


Request = SearchIndicators | IndicatorRequest | ScanRequest | ScanStop
TYPES = ("search_indicators", "indicator", "indicator_history", "scan", "scan_stop")


def parse_request(item: Mapping[str, Any]) -> Request:
    """Parse one request whose ``type`` is one of :data:`TYPES`."""
    match item.get("type"):
        case "search_indicators":
            search = item.get("search")
            return SearchIndicators(search if isinstance(search, str) else "")
        case "indicator" | "indicator_history" as kind:
            return _indicator(item, history=kind == "indicator_history")
        case "scan":
            return _scan(item)
        case "scan_stop":
            return ScanStop()
    raise ProtocolError("unknown_type", f"not an indicator request: {item.get('type')!r}")


def _indicator(item: Mapping[str, Any], history: bool) -> IndicatorRequest:
    config = parse_indicator_config(item)
    stream = item.get("stream", True) is not False and not history
    until = _until(item) if history else None
    since = _since(item)
    if since is not None and until is not None and since > until:
        raise ProtocolError("invalid_field", "'range' starts after 'end'")
    return IndicatorRequest(config, history, since, _count(item), stream, until)


def _until(item: Mapping[str, Any]) -> int | None:
    """``indicator_history``'s ``end``: the oldest row the chart already holds a value for,
    so the page ends there (like ``data_history``). Absent, null or empty: up to the
    latest (as Tradiny); anything but a date is ``invalid_field``, as for ``data_history``."""
    end = item.get("end")
    if end is None or end == "":
        return None
    if not isinstance(end, str):
        raise ProtocolError("invalid_field", "'end' must be a date string YYYY-MM-DD HH:MM:SS")
    try:
        return intervals.parse_date(end[:64])
    except ValueError:
        raise ProtocolError(
            "invalid_field", f"'end' {end[:64]!r} is not YYYY-MM-DD HH:MM:SS"
        ) from None


def _since(item: Mapping[str, Any]) -> int | None:
    span = item.get("range")
    if span is None:
        return None
    if not isinstance(span, list) or not span or not isinstance(span[0], str):
        raise ProtocolError("invalid_field", "'range' must be [first date, last date]")
    try:
        return intervals.parse_date(span[0][:64])
    except ValueError:
        raise ProtocolError("invalid_field", f"'range' date {span[0][:64]!r} unreadable") from None


def _count(item: Mapping[str, Any]) -> int:
    """The ``count``, a whole number; its range (1 to the server's ``MAX_COUNT``) is checked
    where that setting is known, by the hub, as for ``data`` (only without a ``range``:
    beside one the count is ignored)."""
    count = item.get("count", DEFAULT_COUNT)
    if count is None:
        return DEFAULT_COUNT
    if isinstance(count, bool) or not isinstance(count, int | float) or count != int(count):
        raise ProtocolError("invalid_field", "'count' must be an integer")
    return int(count)


def _scan(item: Mapping[str, Any]) -> ScanRequest:
    search = item.get("search")
    if not isinstance(search, str) or not search.strip():
        raise ProtocolError("invalid_field", "'search' must be a non-empty string")
    rules = parse_rule_set(item.get("rules"), item.get("operators"), item.get("indicators"))
    template = _template(item.get("dataProviderConfig"))
    if template is None:
        read = rules.symbols()
        if len(read) > 1:
            raise RuleError(
                "bad_rule",
                "the rules read several symbols: 'dataProviderConfig.data' must name the one "
                "they are rebound from for each symbol scanned (its last data item)",
            )
        template = read[0] if read else None
    return ScanRequest(search.strip()[:200], rules, template)


def _template(config: object) -> tuple[str, str] | None:
    """The last data item of ``dataProviderConfig.data`` (spec 4.2): ``"type": "data"``, or
    no ``type`` at all (a script's plain ``{source, name, interval}``); other types, such as
    the chart's indicator items, are skipped."""
    items = config.get("data") if isinstance(config, dict) else None
    found = None
    for entry in items if isinstance(items, list) else ():
        if isinstance(entry, dict) and entry.get("type", "data") in ("data", None):
            source, name = entry.get("source"), entry.get("name")
            if isinstance(source, str) and isinstance(name, str):
                found = (source, name)
    return found


# ---------------------------------------------------------------- replies


def search_indicators_done(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "search_indicators_done", "results": list(results)}


def indicator_rows(
    request: IndicatorRequest, data: list[dict[str, object]], last_dates: Mapping[str, str]
) -> dict[str, Any]:
    """``indicator_init`` or ``indicator_history`` (same shape, spec 2.3)."""
    kind = "indicator_history" if request.history else "indicator_init"
    return {
        "type": kind,
        "id": request.chart_id,
        "data": data,
        "annotations": None,
        "last_dates": dict(last_dates),
    }


def indicator_update(
    chart_id: str, row: Mapping[str, object], last_dates: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "type": "indicator_update",
        "id": chart_id,
        "data": dict(row),
        "annotations": None,
        "last_dates": dict(last_dates),
    }


def no_data(chart_id: str) -> dict[str, Any]:
    """Tradiny's ``no_data``; we answer with an empty ``indicator_init`` instead (2.7.1)."""
    return {"type": "no_data", "id": chart_id}


def scan_progress(message: str) -> dict[str, Any]:
    return {"type": "scan_progress", "message": message}


def scan_result(row: Mapping[str, Any], values: Mapping[str, float]) -> dict[str, Any]:
    return {"type": "scan_result", "data": dict(row), "data_values": dict(values)}


def scan_done(scanned: int, matched: int, total: int, stopped: bool) -> dict[str, Any]:
    return {
        "type": SCAN_DONE,
        "scanned": scanned,
        "matched": matched,
        "total": total,
        "stopped": stopped,
    }


def error(code: str, message: str, request: object = None) -> dict[str, Any]:
    """The hub's ``error`` message (same shape as :func:`backend.wire.protocol.error_message`)."""
    return {"type": "error", "code": code, "message": message, "request": request}


def failure_replies(item: Mapping[str, Any], exc: ProtocolError) -> list[dict[str, Any]]:
    """``error``, then the empty reply the front end waits for, if the request has one."""
    replies = [error(exc.code, exc.message, dict(item))]
    kind, chart_id = item.get("type"), item.get("id")
    if kind in ("indicator", "indicator_history") and isinstance(chart_id, str):
        reply = "indicator_history" if kind == "indicator_history" else "indicator_init"
        replies.append(
            {"type": reply, "id": chart_id, "data": [], "annotations": None, "last_dates": {}}
        )
    elif kind == "scan":
        replies.append(scan_progress(f"Error: {exc.message}"))
        replies.append(scan_done(0, 0, 0, stopped=True))
    elif kind == "search_indicators":
        replies.append(search_indicators_done([]))
    return replies
