"""HTTP endpoints: ``/health``, ``/metrics``, ``/api/symbols`` and ``/api/history``.

Errors are JSON ``{"error": code, "message": text}`` with a fitting status code.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from backend.hub.hub import Hub
from backend.model import intervals
from backend.model.bars import FIELDS, LINE, SeriesId

router = APIRouter()


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Process state per provider (pid, restarts, last update), clients, version."""
    return _hub(request).health()


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format."""
    text = _hub(request).metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/api/symbols", response_model=None)
async def symbols(
    request: Request,
    q: str = "",
    source: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Search the symbol database (the same search as ``search_data``)."""
    results = await _hub(request).symbols.search(q, limit, source)
    return {"query": q, "results": results}


@router.get("/api/history", response_model=None)
async def history(
    request: Request,
    source: str,
    name: str,
    interval: str,
    count: int = 300,
    end: str | None = None,
    format: str = "json",
) -> Response:
    """The last ``count`` bars up to ``end`` (default: now) as JSON, or CSV with a header."""
    hub = _hub(request)
    if not intervals.is_interval(interval):
        return _error(
            400,
            "unknown_interval",
            f"unknown interval {interval!r}; known: " + ", ".join(intervals.INTERVALS),
        )
    if not 1 <= count <= hub.settings.MAX_COUNT:
        return _error(
            400, "count_out_of_range", f"count {count} out of range 1..{hub.settings.MAX_COUNT}"
        )
    if format not in ("json", "csv"):
        return _error(400, "invalid_field", "format must be 'json' or 'csv'")
    try:
        end_t = intervals.parse_date(end) if end else None
    except ValueError:
        return _error(400, "invalid_field", f"end {end!r} is not YYYY-MM-DD HH:MM:SS")
    if hub.supervisor.get(source) is None:
        enabled = ", ".join(hub.supervisor.providers)
        return _error(404, "unknown_source", f"unknown source {source!r}; enabled: {enabled}")
    details = await hub.symbols.details(source, name)
    if details is None:
        return _error(404, "unknown_symbol", f"unknown symbol {source}:{name}")
    key = SeriesId(source, name, interval)
    answer = await hub.planner.before(key, end_t, count)
    if answer.error is not None and not answer.bars:
        return _error(503, getattr(answer.error, "code", "provider_error"), str(answer.error))
    kind = str(details.get("type", "candlestick"))
    if format == "csv":
        return _csv_response(key, kind, answer.bars)
    points = hub.wire_keys(key, details).datapoints(answer.bars)
    body: dict[str, Any] = {
        "source": source,
        "name": name,
        "interval": interval,
        "metadata": details,
        "data": points,
    }
    if answer.error is not None:
        body["error"] = {
            "code": getattr(answer.error, "code", "provider_error"),
            "message": str(answer.error),
        }
    return JSONResponse(body)


def _csv_response(key: SeriesId, kind: str, bars: list[Any]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if kind == LINE:
        writer.writerow(["date", "value"])
        writer.writerows([intervals.format_date(b[0]), _cell(b[4])] for b in bars)
    else:
        writer.writerow(["date", *FIELDS])
        writer.writerows([intervals.format_date(b[0]), *(_cell(v) for v in b[1:6])] for b in bars)
    filename = f"{key.source}-{key.name}-{key.interval}.csv".replace("/", "_")
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)
