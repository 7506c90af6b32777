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
thumbnails (``img``, ``img_dark``, ``img_light``), served as SVG under ``/openbb/``. The live
grid's ``symbol`` may come comma-joined or as repeated ``symbol=`` parameters; on the socket,
a symbol that cannot be streamed gets its row with ``error`` once, like in the snapshot.

A symbol is ``source:name`` or a bare name resolved through the symbol database
(:func:`backend.api.udf.resolve_symbol`); the row id stays the text Workspace sent, so rows and
updates match. Unknown symbols give a row with ``error`` set, or a JSON error; never a 500.

The live-grid socket is a hub client that *watches* its keys (:mod:`backend.hub.listeners`):
the upstream stream starts and stops, with linger, exactly as for a ``/websocket/`` client.
Updates are conflated per symbol, so a slow browser costs one pending row per symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

from backend.access.identity import may_read
from backend.api.udf import PREFIX as UDF_PREFIX
from backend.api.udf import full_name, int_param, json_response, resolve_symbol
from backend.errors import CandlewireError, ProtocolError
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.wire import protocol, requests
from backend.ws.endpoint import frames

if TYPE_CHECKING:
    from backend.hub.hub import Client, Hub

logger = logging.getLogger(__name__)

router = APIRouter(tags=["openbb"])

LIVE_GRID = "candlewire_live_grid"
BARS_TABLE = "candlewire_bars"
CHART = "candlewire_chart"

GRID_PATH = "/openbb/live_grid"
GRID_WS_PATH = "/openbb/live_grid_ws"
BARS_PATH = "/openbb/bars"
SYMBOL_OPTIONS_PATH = "/openbb/symbol_options"
INTERVAL_OPTIONS_PATH = "/openbb/interval_options"
THUMBNAIL_PATH = "/openbb/thumbnail-{theme}.svg"

DEFAULT_GRID_SYMBOLS = 3
DEFAULT_BARS = 100
DEFAULT_OPTIONS = 1000
MAX_OPTIONS = 1000  # the symbol index caps a search at 1000 rows
MAX_SYMBOL_CHARS = 200
CHART_UPDATE_MS = 5000
CLOSE_TIMEOUT = 2.0
# Fields of a row that never change over the socket.
STATIC_FIELDS = frozenset({"symbol", "name", "error"})


# ---------------------------------------------------------------- widgets.json, apps.json


@dataclass(frozen=True, slots=True)
class Defaults:
    """Default parameter values, taken from the symbol database when widgets are listed."""

    grid_symbols: tuple[str, ...] = ()
    symbol: str = ""
    interval: str = "1h"


def _column(field: str, header: str, live: bool, **extra: Any) -> dict[str, Any]:
    return {"field": field, "headerName": header, "enableCellChangeWs": live, **extra}


def _symbol_param(value: Any, multi: bool) -> dict[str, Any]:
    return {
        "paramName": "symbol",
        "label": "Symbols" if multi else "Symbol",
        "description": "source:name, or a bare name looked up in the symbol database",
        "type": "endpoint",
        "optionsEndpoint": SYMBOL_OPTIONS_PATH.lstrip("/"),
        "multiSelect": multi,
        "value": value,
        "style": {"popupWidth": 450},
    }


def widgets(defaults: Defaults) -> dict[str, dict[str, Any]]:
    """The ``widgets.json`` object, keyed by widget id."""
    number = {"cellDataType": "number"}
    text = {"cellDataType": "text"}
    return {
        LIVE_GRID: {
            "name": "Candlewire live prices",
            "description": "Streaming last price, daily change and volume per symbol.",
            "category": "Candlewire",
            "type": "live_grid",
            "endpoint": GRID_PATH.lstrip("/"),
            "wsEndpoint": GRID_WS_PATH.lstrip("/"),
            "gridData": {"w": 16, "h": 12},
            "data": {
                "wsRowIdColumn": "symbol",
                "table": {
                    "showAll": True,
                    "columnsDefs": [
                        _column("symbol", "Symbol", False, pinned="left", **text),
                        _column("name", "Name", False, **text),
                        _column(
                            "price",
                            "Price",
                            True,
                            renderFn="showCellChange",
                            renderFnParams={"colorValueKey": "change"},
                            **number,
                        ),
                        _column("change", "Change", True, renderFn="greenRed", **number),
                        _column(
                            "change_percent",
                            "Change %",
                            True,
                            renderFn="greenRed",
                            formatterFn="percent",
                            decimalPlaces=2,
                            **number,
                        ),
                        _column("volume", "Volume", True, **number),
                        _column("date", "Bar (UTC)", True, **text),
                        _column("error", "Error", True, **text),
                    ],
                },
            },
            "params": [_symbol_param(list(defaults.grid_symbols), multi=True)],
        },
        BARS_TABLE: {
            "name": "Candlewire bars",
            "description": "The latest OHLCV bars of one symbol and interval, oldest first.",
            "category": "Candlewire",
            "type": "table",
            "endpoint": BARS_PATH.lstrip("/"),
            "gridData": {"w": 16, "h": 12},
            "refetchInterval": 60_000,
            "staleTime": 30_000,
            "data": {
                "table": {
                    "showAll": True,
                    "columnsDefs": [
                        {"field": "date", "headerName": "Date (UTC)", "chartDataType": "time"},
                        *(
                            {"field": f, "headerName": f.title(), **number}
                            for f in ("open", "high", "low", "close", "volume")
                        ),
                    ],
                }
            },
            "params": [
                _symbol_param(defaults.symbol, multi=False),
                {
                    "paramName": "interval",
                    "label": "Interval",
                    "description": "Bar interval",
                    "type": "endpoint",
                    "optionsEndpoint": INTERVAL_OPTIONS_PATH.lstrip("/"),
                    "optionsParams": {"symbol": "$symbol"},
                    "value": defaults.interval,
                },
                {
                    "paramName": "count",
                    "label": "Bars",
                    "description": "How many bars, newest last",
                    "type": "number",
                    "value": DEFAULT_BARS,
                },
            ],
        },
        CHART: {
            "name": "Candlewire chart",
            "description": "TradingView advanced chart fed by Candlewire's UDF datafeed.",
            "category": "Candlewire",
            "type": "advanced_charting",
            "endpoint": UDF_PREFIX,
            "gridData": {"w": 24, "h": 24},
            "data": {"defaultSymbol": defaults.symbol, "updateFrequency": CHART_UPDATE_MS},
        },
    }


def thumbnail(theme: str) -> str | None:
    """The app's thumbnail, a candle chart drawn for a ``dark`` or ``light`` background."""
    colors = {"dark": ("#131722", "#d1d4dc"), "light": ("#ffffff", "#131722")}.get(theme)
    if colors is None:
        return None
    background, text = colors
    candles = [(40, 90, 60, 70, 1), (80, 70, 45, 80, 1), (120, 60, 75, 55, 0), (160, 40, 50, 65, 1),
               (200, 30, 35, 55, 1), (240, 45, 40, 50, 0), (280, 20, 25, 45, 1)]  # fmt: skip
    shapes = []
    for x, top, body_top, body_height, up in candles:
        color = "#26a69a" if up else "#ef5350"
        shapes.append(
            f'<rect x="{x + 9}" y="{top}" width="2" height="{body_top + body_height - top + 20}" '
            f'fill="{color}"/><rect x="{x}" y="{body_top}" width="20" height="{body_height}" '
            f'rx="2" fill="{color}"/>'
        )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 340 200" width="340" height="200">'
        f'<rect width="340" height="200" fill="{background}"/>{"".join(shapes)}'
        f'<text x="20" y="188" font-family="sans-serif" font-size="18" fill="{text}">'
        "Candlewire</text></svg>"
    )


def apps(base_url: str = "") -> list[dict[str, Any]]:
    """The ``apps.json`` array: one "Candlewire" app laying out the three widgets; its
    thumbnails are absolute URLs under ``base_url``."""
    base = base_url.rstrip("/")
    layout = [
        {"i": LIVE_GRID, "x": 0, "y": 2, "w": 16, "h": 12, "groups": []},
        {"i": CHART, "x": 16, "y": 2, "w": 24, "h": 24, "groups": []},
        {"i": BARS_TABLE, "x": 0, "y": 14, "w": 16, "h": 12, "groups": []},
    ]
    return [
        {
            "name": "Candlewire",
            "description": "Live prices, a TradingView chart and recent bars from Candlewire.",
            "img": base + THUMBNAIL_PATH.format(theme="dark"),
            "img_dark": base + THUMBNAIL_PATH.format(theme="dark"),
            "img_light": base + THUMBNAIL_PATH.format(theme="light"),
            "allowCustomization": True,
            "tabs": {"markets": {"id": "markets", "name": "Markets", "layout": layout}},
            "groups": [],
            "prompts": [],
        }
    ]


def pick_defaults(rows: Sequence[dict[str, Any]], enabled: Collection[str]) -> Defaults:
    """Defaults from the first dataset rows of enabled providers."""
    usable = [row for row in rows if row.get("source") in enabled and row.get("name")]
    if not usable:
        return Defaults()
    first = usable[0]
    offered = list(first.get("intervals") or intervals.INTERVALS)
    interval = "1h" if "1h" in offered else offered[0] if offered else "1h"
    return Defaults(
        grid_symbols=tuple(full_name(row) for row in usable[:DEFAULT_GRID_SYMBOLS]),
        symbol=full_name(first),
        interval=interval,
    )


# ---------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class GridSymbol:
    """One requested symbol: the row id as sent, and the key streamed for it (or an error)."""

    symbol: str
    key: SeriesId | None = None
    label: str | None = None
    error: str | None = None


def split_symbols(value: object, limit: int | None = None) -> list[str]:
    """Symbols from a parameter value: a comma-joined string or a list; deduplicated."""
    if isinstance(value, str):
        parts: list[object] = [value]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        return []
    seen: dict[str, None] = {}
    for part in parts:
        if not isinstance(part, str):
            continue
        for item in part.split(","):
            symbol = item.strip()[:MAX_SYMBOL_CHARS]
            if symbol:
                seen[symbol] = None
    symbols = list(seen)
    return symbols if limit is None else symbols[:limit]


def parse_params_message(text: str | bytes, limit: int | None = None) -> list[str] | None:
    """The symbol set of a Workspace params message, or None if it is not one.

    Both shapes are accepted: ``{"params": {...}}`` and ``{"type": "params", "params":
    {...}}``. A params message without symbols yields ``[]`` (the set becomes empty).
    Frames are decoded as on ``/websocket/`` (:func:`backend.wire.protocol.load_frame`), so
    invalid UTF-8 or deep nesting is just not a params message.
    """
    try:
        message = protocol.load_frame(text)
    except ProtocolError:
        return None
    if not isinstance(message, dict):
        return None
    if message.get("type", "params") != "params":
        return None
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    return split_symbols(params.get("symbol"), limit)


def grid_interval(details: dict[str, Any]) -> str | None:
    """The interval a live-grid row follows: ``1d``, else the symbol's coarsest interval."""
    offered = [i for i in intervals.INTERVALS if i in (details.get("intervals") or ())]
    if "1d" in offered:
        return "1d"
    return offered[-1] if offered else None


def build_row(
    symbol: str, label: str | None, bars: Sequence[Bar], error: str | None = None
) -> dict[str, Any]:
    """A live-grid row from the last two bars (previous, forming); missing values are None."""
    last = bars[-1] if bars else None
    prev = bars[-2] if len(bars) >= 2 else None
    price = last[4] if last is not None else None
    prev_close = prev[4] if prev is not None else None
    change = None
    change_percent = None
    if price is not None and prev_close is not None:
        change = round(price - prev_close, 10)
        if prev_close:
            change_percent = round((price - prev_close) / abs(prev_close) * 100, 6)
    return {
        "symbol": symbol,
        "name": label,
        "price": price,
        "change": change,
        "change_percent": change_percent,
        "volume": last[5] if last is not None else None,
        "date": intervals.format_date(last[0]) if last is not None else None,
        "error": error,
    }


def update_of(row: dict[str, Any]) -> dict[str, Any]:
    """The socket form of a row: its id plus every live field that has a value."""
    update = {"symbol": row["symbol"]}
    update.update({k: v for k, v in row.items() if k not in STATIC_FIELDS and v is not None})
    return update


def bar_row(bar: Bar) -> dict[str, Any]:
    return {
        "date": intervals.format_date(bar[0]),
        "open": bar[1],
        "high": bar[2],
        "low": bar[3],
        "close": bar[4],
        "volume": bar[5],
    }


def option(details: dict[str, Any]) -> dict[str, str]:
    """A dropdown option ``{label, value}`` for a dataset row; the value is ``source:name``."""
    name = str(details["name"])
    label = str(details.get("name_label") or "")
    where = str(details.get("source_label") or details["source"])
    text = f"{name} - {label} ({where})" if label and label != name else f"{name} ({where})"
    return {"label": text, "value": full_name(details)}


# ---------------------------------------------------------------- hub-backed helpers


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _error(status: int, code: str, message: str) -> Response:
    """The REST error shape, plus ``detail``, which Workspace shows in the widget."""
    return json_response({"error": code, "message": message, "detail": message}, status)


async def resolve_grid_symbol(hub: Hub, symbol: str) -> GridSymbol:
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return GridSymbol(symbol, error=f"unknown symbol {symbol}")
    label = str(details.get("name_label") or details["name"])
    interval = grid_interval(details)
    if interval is None:
        return GridSymbol(symbol, label=label, error=f"{symbol} offers no interval")
    source = str(details["source"])
    if hub.supervisor.get(source) is None:
        return GridSymbol(symbol, label=label, error=f"provider {source!r} is not enabled")
    return GridSymbol(symbol, SeriesId(source, str(details["name"]), interval), label)


async def grid_row(hub: Hub, item: GridSymbol) -> dict[str, Any]:
    if item.key is None:
        return build_row(item.symbol, item.label, [], item.error)
    answer = await hub.planner.latest(item.key, 2, hub.subs.has(item.key))
    problem = str(answer.error) if answer.error is not None and not answer.bars else None
    return build_row(item.symbol, item.label, answer.bars, problem)


# ---------------------------------------------------------------- endpoints


@router.get("/widgets.json")
async def widgets_json(request: Request) -> Response:
    """Widget definitions; default parameters come from the symbol database."""
    hub = _hub(request)
    results = await hub.symbols.search("", 50)
    rows = [r["details"] for r in results if isinstance(r.get("details"), dict)]
    return json_response(widgets(pick_defaults(rows, set(hub.supervisor.providers))))


@router.get("/apps.json")
async def apps_json(request: Request) -> Response:
    return json_response(apps(str(request.base_url)))


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
    limit, problem = int_param(request, "limit")
    if problem is not None:
        return _error(400, "invalid_field", problem)
    limit = max(1, min(limit or DEFAULT_OPTIONS, MAX_OPTIONS))
    results = await _hub(request).symbols.search(query, limit, source or None)
    return json_response(
        [option(r["details"]) for r in results if isinstance(r.get("details"), dict)]
    )


@router.get(INTERVAL_OPTIONS_PATH)
async def interval_options(request: Request, symbol: str = "") -> Response:
    """``[{label, value}]`` of the intervals a symbol offers (all of them without one)."""
    offered: Collection[str] = intervals.INTERVALS
    if symbol.strip():
        details = await resolve_symbol(_hub(request), symbol)
        if details is not None:
            offered = details.get("intervals") or intervals.INTERVALS
    return json_response([{"label": i, "value": i} for i in intervals.INTERVALS if i in offered])


@router.get(GRID_PATH)
async def live_grid(request: Request) -> Response:
    """The live grid's initial rows: one per requested symbol, in request order; every
    ``symbol=`` parameter counts, each may be comma-joined."""
    hub = _hub(request)
    given = request.query_params.getlist("symbol")
    wanted = split_symbols(given, hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT)
    items = await asyncio.gather(*(resolve_grid_symbol(hub, s) for s in wanted))
    rows = await asyncio.gather(*(grid_row(hub, item) for item in items))
    return json_response(list(rows))


@router.get(BARS_PATH)
async def bars_table(request: Request, symbol: str = "", interval: str = "1h") -> Response:
    """The last ``count`` bars (including the forming one) of one symbol and interval."""
    hub = _hub(request)
    count, problem = int_param(request, "count")
    if problem is not None:
        return _error(400, "invalid_field", problem)
    count = DEFAULT_BARS if count is None else count
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return _error(404, "unknown_symbol", f"unknown symbol {requests.quote(symbol)}")
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
        code = getattr(answer.error, "code", "provider_error")
        return _error(503, str(code), str(answer.error))
    return json_response([bar_row(bar) for bar in answer.bars])


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


class LiveGridSession:
    """One live-grid socket: the current symbol set, the keys it watches, pending rows.

    The reader applies params messages one at a time; each replaces the whole set. The hub
    calls :meth:`on_bar` for watched keys; it only marks the symbols of that key as pending
    and wakes the writer, which builds each row from the cache when it sends it, and only
    for symbols still in the current set.
    """

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client: Client | None = None
        self.symbols: dict[str, GridSymbol] = {}
        self.by_key: dict[SeriesId, set[str]] = {}
        self.pending: dict[str, None] = {}
        self.wake = asyncio.Event()
        self.closing = False

    # -- hub side (BarListener)

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        symbols = self.by_key.get(key)
        if not symbols:
            return
        for symbol in symbols:
            self.pending[symbol] = None
        self.wake.set()

    def kick(self, code: int, reason: str) -> None:
        """Close from the hub's side."""
        if self.closing:
            return
        self.closing = True
        task = asyncio.get_running_loop().create_task(self.close(code, reason))
        task.add_done_callback(_log_failure)

    # -- socket side

    async def read_loop(self) -> None:
        limit = self.hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT
        async for text in frames(self.websocket, self.hub.settings.MAX_FRAME_BYTES, self.close):
            if self.closing:
                return
            wanted = parse_params_message(text, limit)
            if wanted is None:
                logger.debug("live grid: ignored a message that is not params: %.200r", text)
                continue
            await self.apply_logged(wanted)

    async def apply_logged(self, wanted: list[str]) -> None:
        """:meth:`apply`; a failure costs this message, never the socket."""
        try:
            await self.apply(wanted)
        except CandlewireError:  # e.g. the symbol database failed
            logger.exception("live grid: could not apply %d symbols", len(wanted))
        except Exception:  # a bug: logged (rate-limited by backend.logs) and counted
            logger.exception("live grid: applying %d symbols failed", len(wanted))
            self.hub.metrics.inc("candlewire_internal_errors_total")

    async def apply(self, wanted: list[str]) -> None:
        """Replace the symbol set: watch new keys, unwatch dropped ones, send fresh rows."""
        assert self.client is not None
        items = await asyncio.gather(*(resolve_grid_symbol(self.hub, s) for s in wanted))
        by_key: dict[SeriesId, set[str]] = {}
        for item in items:
            if item.key is not None:
                by_key.setdefault(item.key, set()).add(item.symbol)
        added = [key for key in by_key if key not in self.by_key]
        for key in [key for key in self.by_key if key not in by_key]:
            self.hub.unwatch(self.client, key)
        for key in added:
            self.hub.watch(self.client, key, self)
        self.symbols = {item.symbol: item for item in items}
        self.by_key = by_key
        self.pending = {s: None for s in self.pending if s in self.symbols}
        if self.client.id not in self.hub.clients:
            return
        answers = await asyncio.gather(
            *(self.hub.planner.latest(key, 2, self.hub.subs.has(key)) for key in added)
        )
        for key, answer in zip(added, answers, strict=True):
            if answer.error is not None:
                logger.info("live grid: %s: %s", key, answer.error)
        for symbols in self.by_key.values():
            self.pending.update(dict.fromkeys(symbols))
        self.pending.update(dict.fromkeys(i.symbol for i in items if i.key is None))
        self.wake.set()

    async def write_loop(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.pending:
                    symbol = next(iter(self.pending))
                    del self.pending[symbol]
                    frame = self.frame(symbol)
                    if frame is not None:
                        await self.websocket.send_text(frame)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug("live grid: writer stopped: %r", exc)

    def frame(self, symbol: str) -> str | None:
        """The update frame of ``symbol`` from the cache; None if it left the set."""
        item = self.symbols.get(symbol)
        if item is None:
            return None
        if item.key is None:  # sent once per params message, like the snapshot's row
            return orjson.dumps(build_row(symbol, item.label, [], item.error)).decode()
        series = self.hub.cache.peek(item.key)
        if series is None or not series.bars:
            return None
        row = build_row(symbol, item.label, series.bars[-2:])
        return orjson.dumps(update_of(row)).decode()

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        with contextlib.suppress(TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            await asyncio.wait_for(self.websocket.close(code, reason), CLOSE_TIMEOUT)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing a live-grid socket failed", exc_info=task.exception())
