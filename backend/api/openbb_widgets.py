"""OpenBB Workspace: what ``/widgets.json`` and ``/apps.json`` say (widget ids, paths,
columns, parameters, thumbnails). Pure functions of the symbol database's defaults; the
endpoints that serve them are in :mod:`backend.api.openbb`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from backend.api.udf import PREFIX as UDF_PREFIX
from backend.api.udf import full_name
from backend.model import intervals

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

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
DEFAULT_INTERVAL = "1h"  # the bars widget's, when a symbol offers it
DEFAULT_OPTIONS = 1000
MAX_OPTIONS = 1000  # the symbol index caps a search at 1000 rows
CHART_UPDATE_MS = 5000


# ---------------------------------------------------------------- widgets.json, apps.json


@dataclass(frozen=True, slots=True)
class Defaults:
    """Default parameter values, taken from the symbol database when widgets are listed."""

    grid_symbols: tuple[str, ...] = ()
    symbol: str = ""
    interval: str = DEFAULT_INTERVAL


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


def grid_ws_endpoint(token: str | None = None) -> str:
    """The live grid's ``wsEndpoint``, carrying ``token`` as its ``token`` query parameter.

    Workspace sends its connection's key (header or query parameter) with every HTTP
    request, but opens the grid's socket at ``{backend}/{wsEndpoint}`` with ``http``
    replaced by ``ws`` and nothing added; with ``AUTH`` on, the socket needs the key in the
    URL Workspace is given."""
    path = GRID_WS_PATH.lstrip("/")
    return f"{path}?token={quote(token, safe='')}" if token else path


def widgets(defaults: Defaults, ws_token: str | None = None) -> dict[str, dict[str, Any]]:
    """The ``widgets.json`` object, keyed by widget id; ``ws_token`` goes into the live
    grid's ``wsEndpoint`` (:func:`grid_ws_endpoint`)."""
    number = {"cellDataType": "number"}
    text = {"cellDataType": "text"}
    return {
        LIVE_GRID: {
            "name": "Candlewire live prices",
            "description": "Streaming last price, daily change and volume per symbol.",
            "category": "Candlewire",
            "type": "live_grid",
            "endpoint": GRID_PATH.lstrip("/"),
            "wsEndpoint": grid_ws_endpoint(ws_token),
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


def apps(base_url: str | None = None) -> list[dict[str, Any]]:
    """The ``apps.json`` array: one "Candlewire" app laying out the three widgets; its
    thumbnails are absolute URLs under ``base_url`` (Workspace's browser fetches them from
    its own page), and left out without one."""
    layout = [
        {"i": LIVE_GRID, "x": 0, "y": 2, "w": 16, "h": 12, "groups": []},
        {"i": CHART, "x": 16, "y": 2, "w": 24, "h": 24, "groups": []},
        {"i": BARS_TABLE, "x": 0, "y": 14, "w": 16, "h": 12, "groups": []},
    ]
    images = {}
    if base_url is not None:
        base = base_url.rstrip("/")
        dark, light = (base + THUMBNAIL_PATH.format(theme=t) for t in ("dark", "light"))
        images = {"img": dark, "img_dark": dark, "img_light": light}
    return [
        {
            "name": "Candlewire",
            "description": "Live prices, a TradingView chart and recent bars from Candlewire.",
            **images,
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
    interval = DEFAULT_INTERVAL if DEFAULT_INTERVAL in offered or not offered else offered[0]
    return Defaults(
        grid_symbols=tuple(full_name(row) for row in usable[:DEFAULT_GRID_SYMBOLS]),
        symbol=full_name(first),
        interval=interval,
    )
