"""HTTP endpoints: ``/health``, ``/metrics``, ``/api/symbols``, ``/api/history`` and
``/api/alerts``.

Errors are JSON ``{"error": code, "message": text}`` with a fitting status code; query
parameters are parsed here (not by FastAPI, whose 422 body has another shape and echoes
the input), and a history request is validated as on ``/websocket/``
(:func:`backend.wire.requests.validate_series`).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any
from urllib.parse import quote as quote_url

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from backend.access.identity import may_read
from backend.api.udf import int_param
from backend.errors import ProtocolError
from backend.hub.hub import Hub
from backend.hub.metrics import CONTENT_TYPE as METRICS_TYPE
from backend.model import intervals
from backend.model.bars import FIELDS, LINE, SeriesId
from backend.wire.protocol import DEFAULT_COUNT
from backend.wire.requests import HTTP_STATUS, Limits, failure, quote, validate_series

router = APIRouter()

DEFAULT_SYMBOLS = 100
MAX_SYMBOLS = 1000


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness for anyone; for an authenticated caller (anyone with ``AUTH=none``) also the
    process state per provider (pid, restarts, last update), clients and cache figures."""
    detail = _hub(request).health()
    identity = getattr(request.state, "identity", None)
    if identity is not None and identity.authenticated:
        return detail
    return {"status": detail.get("status"), "version": detail.get("version")}


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format."""
    text = _hub(request).metrics.render()
    return PlainTextResponse(text, media_type=METRICS_TYPE)


@router.get("/api/symbols", response_model=None)
async def symbols(
    request: Request, q: str = "", source: str | None = None
) -> dict[str, Any] | Response:
    """Search the symbol database (the same search as ``search_data``)."""
    limit, problem = int_param(request, "limit", whole=True)
    if problem is not None:
        return _error(400, "invalid_field", problem)
    limit = DEFAULT_SYMBOLS if limit is None else limit
    if not 1 <= limit <= MAX_SYMBOLS:
        return _error(400, "invalid_field", f"'limit' {limit} out of range 1..{MAX_SYMBOLS}")
    results = await _hub(request).search_symbols(q, limit, source)
    return {"query": q, "results": results}


@router.get("/api/history", response_model=None)
async def history(
    request: Request,
    source: str = "",
    name: str = "",
    interval: str = "",
    end: str | None = None,
    format: str = "json",
) -> Response:
    """The last ``count`` bars up to ``end`` (default: now) as JSON, or CSV with a header."""
    hub = _hub(request)
    if not (source and name and interval):
        return _error(400, "missing_field", "history needs 'source', 'name' and 'interval'")
    count, problem = int_param(request, "count", whole=True)
    if problem is not None:
        return _error(400, "invalid_field", problem)
    if format not in ("json", "csv"):
        return _error(400, "invalid_field", "format must be 'json' or 'csv'")
    try:
        end_t = intervals.parse_date(end) if end else None
    except ValueError:
        return _error(
            400,
            "invalid_field",
            f"end {quote(end)} is no date: YYYY-MM-DD HH:MM:SS (UTC) or ISO 8601 with an offset"
            " (in a URL, write its '+' as %2B)",
        )
    key = SeriesId(source, name, interval)
    count = DEFAULT_COUNT if count is None else count
    limits = Limits(hub.supervisor.providers, hub.settings.MAX_COUNT, may_read)
    try:
        details = await validate_series(key, count, limits, hub.symbols.details)
    except ProtocolError as exc:
        return _error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.message)
    answer = await hub.planner.before(key, end_t, count)
    if answer.error is not None and not answer.bars:
        # 404 for a symbol the provider does not know (its file was removed since
        # populate.py), 429 with Retry-After for a refusal, 503 for a failure
        failed = failure(answer.error)
        body: dict[str, Any] = {"error": failed.code, "message": str(answer.error)}
        if failed.retry_after is not None:
            body["retry_after"] = failed.retry_after
        return JSONResponse(body, status_code=failed.status, headers=failed.headers)
    if format == "csv":
        return _csv_response(key, str(details.get("type", "candlestick")), answer.bars)
    body = {
        "source": source,
        "name": name,
        "interval": interval,
        "metadata": details,
        "data": hub.wire_keys(key, details).datapoints(answer.bars),
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
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": content_disposition(key)},
    )


def content_disposition(key: SeriesId) -> str:
    """``attachment`` with a file name that cannot break the header: an ASCII fallback of
    safe characters, and the exact name percent-encoded (RFC 6266 ``filename*``)."""
    name = f"{key.source}-{key.name}-{key.interval}.csv"
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote_url(name, safe='')}"


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


@router.get("/api/alerts", response_model=None)
async def alerts(request: Request) -> dict[str, Any] | Response:
    """The live alerts of a push ``endpoint`` or an ``owner`` key (the ``alerts`` extension)."""
    params = request.query_params
    try:
        found = await _hub(request).alerting.listed(params.get("endpoint"), params.get("owner"))
    except ProtocolError as exc:
        return _error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.message)
    return {"alerts": found}


@router.delete("/api/alerts/{alert_id}", response_model=None)
async def delete_alert(request: Request, alert_id: int) -> dict[str, Any] | Response:
    """Remove an alert of that ``endpoint`` or ``owner`` (the ``alert_delete`` extension)."""
    params = request.query_params
    try:
        await _hub(request).alerting.delete(alert_id, params.get("endpoint"), params.get("owner"))
    except ProtocolError as exc:
        return _error(404 if exc.code == "not_found" else 400, exc.code, exc.message)
    return {"deleted": alert_id}
