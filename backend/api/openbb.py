"""OpenBB Workspace custom backend: ``widgets.json``, ``apps.json`` and the widget endpoints.

Workspace is pointed at the server's base URL (DESIGN 5.2, protocols.md section 2). It reads
``/widgets.json`` (an object keyed by widget id) and ``/apps.json`` (an array of app
layouts) and then calls each widget's endpoint with the widget's parameters as a query
string. Three widgets are offered:

- ``candlewire_live_grid`` (``live_grid``): one row per symbol from ``/openbb/live_grid``,
  then row updates keyed by ``symbol`` pushed over ``/openbb/live_grid_ws``. A row's price
  is the close of the forming bar of the symbol's daily interval (its coarsest interval if
  it has no daily one); ``change`` and ``change_percent`` compare it with the close of the
  bar before (for daily bars: the previous day's close).
- ``candlewire_bars`` (``table``): the last ``count`` bars of one symbol and interval.
- ``candlewire_chart`` (``advanced_charting``): the TradingView chart on ``/udf``.

``change_percent`` is in percent and shown with a ``%`` sign (``formatterFn: "percent"``);
columns use only the fields of the ``columnsDefs`` reference. ``apps.json`` names its
thumbnails (``img``, ``img_dark``, ``img_light``), served as SVG under ``/openbb/``, by
absolute URLs under ``PUBLIC_URL`` or a ``Host`` that names this machine (:func:`public_base`);
under any other ``Host`` it names none. The live
grid's ``symbol`` may come comma-joined or as repeated ``symbol=`` parameters; on the socket,
a symbol that cannot be streamed gets its row with ``error`` once, like in the snapshot.

A symbol is ``source:name`` or a bare name resolved through the symbol database
(:func:`backend.api.udf.resolve_symbol`); the row id stays the text Workspace sent, so rows and
updates match. Unknown symbols give a row with ``error`` set, or a JSON error; never a 500.

This module holds the endpoints; :mod:`.openbb_widgets` what the JSON files say and
:mod:`.openbb_grid` the live grid's rows and socket session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response

from backend.access.credentials import token_of
from backend.access.identity import may_read
from backend.api.openbb_grid import (
    LiveGridSession,
    bar_row,
    grid_row,
    option,
    resolve_grid_symbols,
    split_symbols,
)
from backend.api.openbb_widgets import (
    BARS_PATH,
    DEFAULT_BARS,
    DEFAULT_INTERVAL,
    DEFAULT_OPTIONS,
    GRID_PATH,
    GRID_WS_PATH,
    INTERVAL_OPTIONS_PATH,
    MAX_OPTIONS,
    SYMBOL_OPTIONS_PATH,
    THUMBNAIL_PATH,
    apps,
    pick_defaults,
    thumbnail,
    widgets,
)
from backend.api.udf import canonical_source, full_name, int_param, json_response, resolve_symbol
from backend.errors import ProtocolError
from backend.model import intervals
from backend.model.bars import SeriesId
from backend.wire import requests

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

router = APIRouter(tags=["openbb"])

# ---------------------------------------------------------------- hub-backed helpers


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _error(status: int, code: str, message: str) -> Response:
    """The REST error shape, plus ``detail``, which Workspace shows in the widget."""
    return json_response({"error": code, "message": message, "detail": message}, status)


# ---------------------------------------------------------------- endpoints


@router.get("/widgets.json")
async def widgets_json(request: Request) -> Response:
    """Widget definitions; default parameters come from the symbol database. With ``AUTH``
    on, the live grid's socket URL carries the caller's own key (Workspace opens that socket
    without its connection's headers or query parameters), and the answer is not stored."""
    hub = _hub(request)
    results = await hub.symbols.search("", 50)
    rows = [r["details"] for r in results if isinstance(r.get("details"), dict)]
    defaults = pick_defaults(rows, set(hub.supervisor.providers))
    key = None
    if hub.settings.AUTH != "none":
        key = token_of(request.scope.get("headers", ()), request.scope.get("query_string", b""))
    response = json_response(widgets(defaults, key))
    if key is not None:
        response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/apps.json")
async def apps_json(request: Request) -> Response:
    return json_response(apps(public_base(request)))


def public_base(request: Request) -> str | None:
    """The base of the URLs ``apps.json`` names: ``PUBLIC_URL``, else this request's own base
    URL if its ``Host`` names this machine (a loopback name or address, or the address the
    server listens on); else None, and the document names no URL. Any other ``Host`` is the
    caller's to choose: its URLs would reach whoever a cache or proxy hands the answer on to."""
    settings = _hub(request).settings
    if settings.PUBLIC_URL:
        return settings.PUBLIC_URL
    host = (request.url.hostname or "").lower()
    return str(request.base_url) if _local(host) or host == settings.HOST.lower() else None


def _local(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@router.get(THUMBNAIL_PATH)
async def thumbnail_svg(theme: str) -> Response:
    """The app's thumbnail image (``apps.json`` ``img``)."""
    svg = thumbnail(theme)
    if svg is None:
        return _error(404, "not_found", f"no thumbnail {requests.quote(theme)}")
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})


@router.get(SYMBOL_OPTIONS_PATH)
async def symbol_options(request: Request, query: str = "", source: str = "") -> Response:
    """``[{label, value}]`` from the symbol database, for the symbol dropdowns."""
    limit, problem = int_param(request, "limit", whole=True)
    if problem is not None:
        return _error(400, "invalid_field", problem)
    limit = max(1, min(limit or DEFAULT_OPTIONS, MAX_OPTIONS))
    hub = _hub(request)
    # in any case, as the source of a symbol field (``COUNTING:aaa``) and UDF's ``exchange``
    scope = canonical_source(source, hub.supervisor.providers) if source.strip() else None
    results = await hub.search_symbols(query, limit, scope)
    return json_response(
        [option(r["details"]) for r in results if isinstance(r.get("details"), dict)]
    )


@router.get(INTERVAL_OPTIONS_PATH)
async def interval_options(request: Request, symbol: str = "") -> Response:
    """``[{label, value}]`` of the intervals a symbol offers (all of them without one, or
    an unknown one); 403 ``forbidden`` for a symbol the caller may not read, as its bars."""
    offered: Collection[str] = intervals.INTERVALS
    if symbol.strip():
        details = await resolve_symbol(_hub(request), symbol)
        if details is not None:
            key = SeriesId(str(details["source"]), str(details["name"]), "")
            if not may_read(key):
                return _error(403, "forbidden", f"no permission to read {full_name(details)}")
            offered = details.get("intervals") or intervals.INTERVALS
    return json_response([{"label": i, "value": i} for i in intervals.INTERVALS if i in offered])


@router.get(GRID_PATH)
async def live_grid(request: Request) -> Response:
    """The live grid's initial rows: one per requested symbol, in request order; every
    ``symbol=`` parameter counts, each may be comma-joined."""
    hub = _hub(request)
    given = request.query_params.getlist("symbol")
    wanted = split_symbols(given, hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT)
    items = await resolve_grid_symbols(hub, wanted)
    rows = await asyncio.gather(*(grid_row(hub, item) for item in items))
    return json_response(list(rows))


@router.get(BARS_PATH)
async def bars_table(request: Request, symbol: str = "", interval: str = "") -> Response:
    """The last ``count`` bars (including the forming one) of one symbol and interval.

    Without an interval (Workspace may send a cleared field empty) it is ``1h``, or the
    symbol's finest interval if it has no ``1h`` (:func:`_default_interval`): a daily-only
    symbol shows its daily bars, not an error about an interval nobody asked for."""
    hub = _hub(request)
    count, problem = int_param(request, "count", whole=True)
    if problem is not None:
        return _error(400, "invalid_field", problem)
    count = DEFAULT_BARS if count is None else count
    if not symbol.strip():
        return _error(400, "missing_field", "bars needs 'symbol' (source:name, or a name)")
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return _error(404, "unknown_symbol", f"unknown symbol {requests.quote(symbol)}")
    interval = interval.strip() or _default_interval(details)
    key = SeriesId(str(details["source"]), str(details["name"]), interval)
    limits = requests.Limits(hub.supervisor.providers, hub.settings.MAX_COUNT, may_read)
    try:
        await requests.validate_series(key, count, limits, requests.known(details))
    except ProtocolError as exc:
        # The row exists but its provider is not running here: unavailable, not unknown.
        status = 503 if exc.code == "unknown_source" else requests.HTTP_STATUS[exc.code]
        code = "provider_unavailable" if status == 503 else exc.code
        return _error(status, code, exc.message)
    answer = await hub.planner.latest(key, count, hub.subs.has(key))
    if answer.error is not None and not answer.bars:
        failed = requests.failure(answer.error)  # 404, 429 with Retry-After, or 503
        message = str(answer.error)
        body: dict[str, Any] = {"error": failed.code, "message": message, "detail": message}
        if failed.retry_after is not None:
            body["retry_after"] = failed.retry_after
        response = json_response(body, failed.status)
        response.headers.update(failed.headers)
        return response
    return json_response([bar_row(bar) for bar in answer.bars])


def _default_interval(details: dict[str, Any]) -> str:
    """``1h`` if the symbol offers it (or lists no intervals), else its finest interval."""
    offered = [i for i in intervals.INTERVALS if i in (details.get("intervals") or ())]
    return DEFAULT_INTERVAL if DEFAULT_INTERVAL in offered or not offered else offered[0]


@router.websocket(GRID_WS_PATH)
async def live_grid_ws(websocket: WebSocket) -> None:
    """The live grid's socket: params messages in, row updates out."""
    hub: Hub = websocket.app.state.hub
    await websocket.accept()
    session = LiveGridSession(websocket, hub)
    peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    client = hub.add_client(f"{peer} (live grid)", session.kick)
    if client is None:
        await session.close(1013, "server full")
        return
    session.client = client
    writer = asyncio.get_running_loop().create_task(session.write_loop())
    try:
        await session.read_loop()
    finally:
        hub.remove_client(client)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
