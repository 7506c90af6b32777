"""OpenBB Workspace as a client, written from OpenBB's own documents and front-end code, not
from ours: it reads ``/widgets.json`` and ``/apps.json`` and checks them against the shapes
Workspace validates (the widgets.json and apps.json references, and the zod schemas of the
Workspace front end: ``ParamDef``, ``TableColumnDefs``, ``WidgetType``, ``AppsJson``), calls
every widget's endpoint with the parameters the widget declares (defaults, each option its
``optionsEndpoint`` gives, bad values, missing ones), drives the live grid as the front end's
``useWebsocketData`` does, and reads the UDF datafeed under the ``advanced_charting``
widget's base (``{backend}{endpoint}``) from the Workspace origin, preflights included.

What the front end does, in short (``AgWebSockets`` / ``WebSocketGrid``):

- the REST ``endpoint`` gives the rows; parameters whose value is ``""`` or undefined are
  left out of the query string;
- the socket URL is ``wsEndpoint`` resolved against the backend URL with ``http`` replaced
  by ``ws``; on open it sends ``{"type": "params", "params": <every widget param>}`` and the
  same message, on the same socket, whenever a parameter changes; with no truthy parameter
  left it closes the socket; there is no reconnect: a new socket comes with a new feed;
- each frame is one row object or an array of them; a row whose ``wsRowIdColumns`` values
  (joined by ``-``) name no row of the snapshot is dropped, and only columns with
  ``enableCellChangeWs`` truthy change, where both the old and the new value are defined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.harness import ServerProcess, base_env, eventually, populate, seconds

ORIGIN = "https://pro.openbb.co"

# ---------------------------------------------------------------- the documented shapes

WIDGET_TYPES = {
    "advanced_charting", "chart", "chart-highcharts", "chart-vegalite", "file_viewer",
    "html", "iframe", "live_grid", "markdown", "metric", "multi_file_viewer", "newsfeed",
    "note", "rich_note", "omni", "pdf", "table", "ssrm_table", "ssrm_advanced", "youtube",
}  # fmt: skip
WIDGET_KEYS = {
    "name", "showTitle", "description", "category", "subCategory", "schemaName", "source",
    "widgetId", "widgetType", "endpoint", "fileEndpoint", "wsEndpoint", "params",
    "groupById", "data", "type", "defaultViz", "gridData", "staleTime", "refetchInterval",
    "dataUpdateDisplay", "runButton", "disableRetrievalForCopilot", "copilotParseAs",
    "inputType", "raw", "exportable", "storage", "imgUrl", "mcp_tool",
}  # fmt: skip
PARAM_TYPES = {"text", "date", "ticker", "number", "boolean", "endpoint", "button", "tabs"}
CELL_TYPES = {"text", "number", "boolean", "date", "dateString", "object"}
CHART_TYPES = {"category", "series", "time", "excluded"}
FORMATTERS = {"int", "none", "percent", "normalized", "normalizedPercent", "dateToYear"}
RENDER_FNS = {"greenRed", "titleCase", "hoverCard", "cellOnClick", "columnColor", "showCellChange"}
APP_KEYS = {
    "templateId", "id", "name", "description", "selected_agent", "img", "img_dark",
    "img_light", "authentication", "tabs", "groups", "prompts", "mcpServers",
    "allowCustomization",
}  # fmt: skip


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def param_problems(param: dict[str, Any]) -> list[str]:
    """What Workspace's ``ParamDef`` schema would refuse in one parameter."""
    problems = []
    kind = param.get("type", "text")
    if not (isinstance(param.get("paramName"), str) and param["paramName"]):
        problems.append("paramName must be a non-empty string")
    if kind not in PARAM_TYPES:
        problems.append(f"type {kind!r}")
    value = param.get("value")
    if value is not None:
        if kind in ("text", "tabs", "ticker", "date") and not isinstance(value, str):
            problems.append(f"a {kind} value must be a string, not {value!r}")
        if kind == "number" and not number(value):
            problems.append(f"a number value must be a number, not {value!r}")
        if kind == "boolean" and not isinstance(value, bool):
            problems.append(f"a boolean value must be a boolean, not {value!r}")
    for option in param.get("options") or []:
        if not isinstance(option.get("label"), str):
            problems.append(f"option label {option!r}")
        if not (option.get("value") is None or isinstance(option["value"], str | int | float)):
            problems.append(f"option value {option!r}")
    width = (param.get("style") or {}).get("popupWidth")
    if width is not None and not (number(width) and 100 <= width <= 1000):
        problems.append(f"popupWidth {width!r}")
    if param.get("multiple") and kind != "text":
        problems.append("multiple is only for text parameters")
    if kind == "endpoint" and not isinstance(param.get("optionsEndpoint", ""), str):
        problems.append("optionsEndpoint must be a string")
    return problems


def column_problems(column: dict[str, Any]) -> list[str]:
    """What Workspace's ``TableColumnDefs`` schema would refuse in one column."""
    problems = []
    for key in ("field", "headerName"):
        if not isinstance(column.get(key), str):
            problems.append(f"{key} must be a string")
    checks = {
        "cellDataType": CELL_TYPES,
        "chartDataType": CHART_TYPES,
        "formatterFn": FORMATTERS,
    }
    for key, allowed in checks.items():
        if key in column and column[key] not in allowed:
            problems.append(f"{key} {column[key]!r}")
    if "enableCellChangeWs" in column and not isinstance(column["enableCellChangeWs"], bool):
        problems.append("enableCellChangeWs must be a boolean")
    places = column.get("decimalPlaces")
    if places is not None and not (number(places) and 0 <= places <= 6):
        problems.append(f"decimalPlaces {places!r}")
    render = column.get("renderFn")
    if render is not None:
        names = render.split(",") if isinstance(render, str) else render
        problems += [f"renderFn {n!r}" for n in names if str(n).strip() not in RENDER_FNS]
    if column.get("pinned") not in (None, "left", "right", True, False):
        problems.append(f"pinned {column['pinned']!r}")
    return problems


def widget_problems(widget: dict[str, Any]) -> list[str]:
    """What Workspace's widget schema (and the widgets.json reference) would refuse."""
    problems = [f"unknown key {k!r}" for k in widget if k not in WIDGET_KEYS]
    for key in ("name", "description", "endpoint"):
        if not isinstance(widget.get(key), str) or not widget[key]:
            problems.append(f"{key} is required as a string")
    if widget.get("type", "table") not in WIDGET_TYPES:
        problems.append(f"type {widget.get('type')!r}")
    grid = widget.get("gridData")
    if grid is not None:
        if not (number(grid.get("w")) and number(grid.get("h"))):
            problems.append(f"gridData {grid!r}")
        elif grid["w"] > 40 or grid["h"] > 100:
            problems.append(f"gridData beyond 40 x 100: {grid!r}")
    refetch = widget.get("refetchInterval")
    timed = refetch is not None and refetch is not False and not isinstance(refetch, str)
    if timed and not (number(refetch) and refetch >= 1000):
        problems.append(f"refetchInterval {refetch!r}")
    stale = widget.get("staleTime")
    if stale is not None and stale is not False and not (number(stale) and stale >= 1000):
        problems.append(f"staleTime {stale!r}")
    for param in widget.get("params") or []:
        problems += param_problems(param)
    data = widget.get("data") or {}
    for column in (data.get("table") or {}).get("columnsDefs") or []:
        problems += column_problems(column)
    if widget.get("type") == "live_grid":
        if not isinstance(widget.get("wsEndpoint"), str):
            problems.append("a live_grid needs its wsEndpoint")
        if not isinstance(data.get("wsRowIdColumn"), str | list):
            problems.append("a live_grid needs its wsRowIdColumn")
    return problems


def app_problems(app: dict[str, Any], widget_ids: set[str]) -> list[str]:
    """What Workspace's ``AppsJson`` schema would refuse in one app."""
    problems = [f"unknown key {k!r}" for k in app if k not in APP_KEYS]
    if not isinstance(app.get("name"), str):
        problems.append("name is required")
    for key in ("description", "img", "img_dark", "img_light"):
        if key in app and not isinstance(app[key], str):
            problems.append(f"{key} must be a string")
    tabs = app.get("tabs")
    if not isinstance(tabs, dict):
        return [*problems, "tabs must be an object"]
    for tab in tabs.values():
        if not (isinstance(tab.get("id"), str) and isinstance(tab.get("name"), str)):
            problems.append(f"tab {tab.get('id')!r} needs id and name")
        for item in tab.get("layout") or []:
            if item.get("i") not in widget_ids:
                problems.append(f"layout names an unknown widget {item.get('i')!r}")
            if not all(number(item.get(k)) for k in ("x", "y", "w", "h")):
                problems.append(f"layout item {item.get('i')!r} needs numeric x, y, w, h")
            groups = item.get("groups", [])
            if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
                problems.append(f"layout item {item.get('i')!r}: groups must be strings")
    return problems


# ---------------------------------------------------------------- a Workspace-like client


class Workspace:
    """The HTTP side of Workspace: every request carries its Origin."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def url(self, endpoint: str) -> str:
        """An endpoint resolved against the backend URL (relative, or with a leading /)."""
        return self.base + "/" + endpoint.lstrip("/")

    def request(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        # Workspace leaves out parameters whose value is "" or undefined; a list value
        # (a multi-select) goes comma-joined.
        query = {
            k: ",".join(map(str, v)) if isinstance(v, list) else v
            for k, v in (params or {}).items()
            if v is not None and v != ""
        }
        full = url + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(
            full, method=method, headers={"Origin": ORIGIN, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=seconds(30)) as response:
                status, raw, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, raw, body = exc.code, exc.headers, exc.read()
        lowered = {k.lower(): v for k, v in raw.items()}
        if method == "OPTIONS" or not body:
            return status, lowered, body.decode()
        assert lowered.get("content-type", "").startswith("application/json"), (full, lowered)
        assert lowered.get("access-control-allow-origin") == ORIGIN, (full, lowered)
        assert lowered.get("access-control-allow-credentials") == "true", (full, lowered)
        return status, lowered, json.loads(body)

    def get(self, endpoint: str, **params: Any) -> tuple[int, Any]:
        status, _, body = self.request(self.url(endpoint), params)
        return status, body


def finite_json(value: Any) -> bool:
    """JSON values a browser parses as they are: no NaN or infinity anywhere."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_json(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_json(v) for v in value)
    return True


class Grid:
    """The live grid as ``AgWebSockets`` keeps it: rows by id, updated from the socket."""

    def __init__(self, widget: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        data = widget["data"]
        ids = data["wsRowIdColumn"]
        self.id_columns: list[str] = [ids] if isinstance(ids, str) else list(ids)
        self.live = [
            c["field"] for c in data["table"]["columnsDefs"] if c.get("enableCellChangeWs")
        ]
        self.rows = {self.row_id(row): dict(row) for row in rows}
        self.frames: list[Any] = []
        self.updates: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []

    def row_id(self, row: dict[str, Any]) -> str:
        return "-".join(str(row.get(c)) for c in self.id_columns)

    def on_frame(self, text: str | bytes) -> None:
        new = json.loads(text)
        self.frames.append(new)
        for row in new if isinstance(new, list) else [new]:
            node = self.rows.get(self.row_id(row))
            if node is None:
                self.dropped.append(row)
                continue
            self.updates.append(row)
            for column in self.live:
                if column in node and column in row:
                    node[column] = row[column]


class Feed:
    """``WebSocketGrid``: one socket, its params messages, the frames it gets."""

    def __init__(self, connection: ClientConnection, grid: Grid) -> None:
        self.connection = connection
        self.grid = grid
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, ws_url: str, grid: Grid, params: dict[str, Any]) -> Feed:
        connection = await connect(ws_url, origin=ORIGIN, open_timeout=seconds(10))  # type: ignore[arg-type]
        feed = cls(connection, grid)
        await feed.params(params)
        return feed

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.connection:
                self.grid.on_frame(raw)

    async def params(self, params: dict[str, Any]) -> None:
        await self.connection.send(json.dumps({"type": "params", "params": params}))

    async def updated(self, ids: set[str], after: int = 0, timeout: float = 15) -> None:
        deadline = time.monotonic() + seconds(timeout)
        while True:
            seen = {self.grid.row_id(u) for u in self.grid.updates[after:]}
            if ids <= seen:
                return
            assert not self.reader.done(), "the live-grid socket closed"
            assert time.monotonic() < deadline, f"no updates for {ids - seen}; saw {seen}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.connection.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


def subscriptions(server: ServerProcess) -> float:
    """The server's ``candlewire_subscriptions`` (client subscriptions, the live grids'
    series included) from ``/metrics``."""
    text = str(server.get("/metrics"))
    (value,) = re.findall(r"^candlewire_subscriptions (\S+)$", text, re.M)
    return float(value)


def ws_url_of(backend: str, ws_endpoint: str) -> str:
    """The socket URL as Workspace builds it: ``wsEndpoint`` resolved against the backend
    URL, then ``http`` replaced by ``ws`` (so ``https`` gives ``wss``)."""
    return Workspace(backend).url(ws_endpoint).replace("http", "ws", 1)


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("workspace")
    env = base_env(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5", STREAM_LINGER_SECONDS="0.5")
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def workspace(server: ServerProcess) -> Workspace:
    return Workspace(server.url)


@pytest.fixture(scope="module")
def widgets(workspace: Workspace) -> dict[str, dict[str, Any]]:
    status, body = workspace.get("widgets.json")
    assert status == 200
    assert isinstance(body, dict) and body
    return body


def of_type(widgets: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    (widget,) = [w for w in widgets.values() if w.get("type", "table") == kind]
    return widget


def defaults(widget: dict[str, Any]) -> dict[str, Any]:
    return {p["paramName"]: p.get("value") for p in widget.get("params") or []}


# ---------------------------------------------------------------- widgets.json, apps.json


def test_widgets_and_apps_have_the_shapes_workspace_validates(
    workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    problems = {wid: widget_problems(w) for wid, w in widgets.items()}
    assert not any(problems.values()), problems
    status, apps = workspace.get("apps.json")
    assert status == 200 and isinstance(apps, list) and apps
    problems = {a.get("name"): app_problems(a, set(widgets)) for a in apps}
    assert not any(problems.values()), problems


def test_every_endpoint_answers_the_parameters_its_widget_declares(
    workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    """Each table-like widget with its defaults, then with every option its dropdowns offer
    (``optionsParams`` filled from the other parameters, ``$name`` as Workspace does)."""
    for widget in widgets.values():
        if widget.get("type") == "advanced_charting":
            continue
        params = defaults(widget)
        status, rows = workspace.get(widget["endpoint"], **params)
        assert status == 200, (widget["name"], params, rows)
        assert isinstance(rows, list) and rows and finite_json(rows), (widget["name"], rows)
        assert all(isinstance(r, dict) for r in rows)
        fields = {c["field"] for c in widget["data"]["table"]["columnsDefs"]}
        assert all(fields <= set(r) for r in rows), (fields, rows[0])
        assert all(not isinstance(v, dict | list) for r in rows for v in r.values())
        for param in widget.get("params") or []:
            if param.get("type") != "endpoint":
                continue
            query = {
                k: params.get(str(v)[1:]) if str(v).startswith("$") else v
                for k, v in (param.get("optionsParams") or {}).items()
            }
            status, options = workspace.get(param["optionsEndpoint"], **query)
            assert status == 200 and options, (param["paramName"], options)
            for option in options:
                assert isinstance(option["label"], str) and option["value"] not in (None, "")
            values = [o["value"] for o in options]
            if param["paramName"] == "symbol":
                values = values[:3]  # every symbol would fetch every symbol's history
            for value in values:
                chosen = {**params, param["paramName"]: value}
                status, rows = workspace.get(widget["endpoint"], **chosen)
                assert status == 200 and isinstance(rows, list), (chosen, rows)
                assert rows and finite_json(rows), (chosen, rows)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"symbol": "NOPE"}, 404),
        ({"symbol": "counting:AAA", "interval": "7x"}, 400),
        ({"symbol": "counting:AAA", "count": "many"}, 400),
        ({"symbol": "counting:AAA", "count": -5}, 400),
        ({"symbol": "counting:AAA", "count": 10**12}, 400),
        ({"interval": "1h"}, 400),
    ],
)
def test_bad_or_missing_values_get_a_json_error_workspace_can_show(
    workspace: Workspace, widgets: dict[str, dict[str, Any]], params: dict[str, Any], status: int
) -> None:
    """Workspace shows a failed widget's ``detail``; the answer is JSON with CORS."""
    table = of_type(widgets, "table")
    got, body = workspace.get(table["endpoint"], **params)
    assert got == status, body
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"]


def test_the_live_grid_rows_answer_symbols_as_workspace_sends_them(
    workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    grid = of_type(widgets, "live_grid")
    value = defaults(grid)["symbol"]
    wanted = value if isinstance(value, list) else value.split(",")
    status, rows = workspace.get(grid["endpoint"], symbol=value)
    assert status == 200 and [r["symbol"] for r in rows] == wanted
    # an unknown symbol is a row with its error, not a failed widget
    status, rows = workspace.get(grid["endpoint"], symbol=[*wanted, "NOPE"])
    assert status == 200 and rows[-1]["symbol"] == "NOPE" and rows[-1]["error"]
    # no symbol at all (Workspace leaves an emptied parameter out)
    status, rows = workspace.get(grid["endpoint"])
    assert status == 200 and rows == []


# ---------------------------------------------------------------- the live grid's socket


async def test_the_live_grid_socket_as_workspace_drives_it(
    server: ServerProcess, workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    widget = of_type(widgets, "live_grid")
    params = defaults(widget)
    symbols = params["symbol"] if isinstance(params["symbol"], list) else [params["symbol"]]
    first, rest = symbols[:2], symbols[2:]
    _, rows = workspace.get(widget["endpoint"], symbol=first)
    grid = Grid(widget, rows)
    ws_url = ws_url_of(server.url, widget["wsEndpoint"])
    feed = await Feed.open(ws_url, grid, {**params, "symbol": first})
    try:
        await feed.updated(set(first))
        assert not grid.dropped, grid.dropped[:3]  # every update names a snapshot row
        for update in grid.updates:
            assert set(update) <= set(rows[0]), update  # no column the rows lack
            assert finite_json(update)
        changed = {r["symbol"]: r["price"] for r in grid.rows.values()}
        assert all(isinstance(p, float) for p in changed.values()), changed

        # the parameter changes: the same socket gets the new set, which replaces the old
        _, rows = workspace.get(widget["endpoint"], symbol=rest)
        grid.rows = {grid.row_id(r): dict(r) for r in rows}
        mark, frames = len(grid.updates), len(grid.frames)
        await feed.params({**params, "symbol": ",".join(rest)})  # comma-joined this time
        await feed.updated(set(rest), mark)
        await asyncio.sleep(seconds(1))
        # every row sent, also those the grid drops (no row of its snapshot): after the first
        # of the new set, none of the old one
        sent = [row for f in grid.frames[frames:] for row in (f if isinstance(f, list) else [f])]
        start = next(i for i, row in enumerate(sent) if row.get("symbol") in rest)
        assert {row.get("symbol") for row in sent[start + 1 :]} <= set(rest), sent[start:][:5]

        # junk on the socket: nothing breaks, the set stays
        for junk in (
            b"\x00\xff binary",
            "not json",
            "[]",
            '{"type": "params", "params": null}',
            '{"type": "ping"}',
            # a symbol value that is neither text nor a list is no params message of
            # Workspace's (it sends the multi-select's string or list): it emptied the set
            json.dumps({"type": "params", "params": {"symbol": {"a": 1}}}),
            json.dumps({"params": {"symbol": 5}}),
            json.dumps({"params": {"symbol": True}}),
        ):
            await feed.connection.send(junk)
        mark = len(grid.updates)
        await feed.updated(set(rest), mark)
    finally:
        await feed.close()

    # no reconnect of its own: a new socket comes with the next feed, and streams again
    _, rows = workspace.get(widget["endpoint"], symbol=first)
    again = Grid(widget, rows)
    feed = await Feed.open(ws_url, again, {**params, "symbol": first})
    try:
        await feed.updated(set(first))
        # every parameter emptied: Workspace closes the socket, but a server must also take
        # an empty set without streaming on
        assert subscriptions(server) > 0  # the grid's rows stream
        await feed.params({**params, "symbol": []})
        # once it is applied (the grid's series unsubscribed: a fixed 0.5 s for it was a
        # window a loaded server could miss) and the rows sent before it are read (the
        # pong of a ping comes after them), no row follows
        await eventually(lambda: subscriptions(server) == 0, 10, "the empty set applied")
        await (await feed.connection.ping())
        mark = len(again.updates)
        await asyncio.sleep(seconds(1))
        assert again.updates[mark:] == []
    finally:
        await feed.close()


# ---------------------------------------------------------------- UDF under advanced_charting


def test_the_udf_datafeed_under_the_chart_widget_base(
    workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    chart = of_type(widgets, "advanced_charting")
    base = workspace.base + chart["endpoint"]  # {backend}{widget.endpoint}
    symbol = chart["data"]["defaultSymbol"]
    status, _, config = workspace.request(base + "/config")
    assert status == 200 and config["supports_search"] is True
    assert config["supports_group_request"] is False
    status, _, info = workspace.request(base + "/symbols", {"symbol": symbol})
    assert status == 200 and "s" not in info and info["ticker"]
    status, _, found = workspace.request(base + "/search", {"query": "AAA", "limit": 30})
    assert status == 200 and isinstance(found, list) and found
    status, _, now = workspace.request(base + "/time")
    assert status == 200 and isinstance(now, int)
    status, _, bars = workspace.request(
        base + "/history",
        {"symbol": info["ticker"], "resolution": "60", "from": now - 86400, "to": now + 1,
         "countback": 5},
    )  # fmt: skip
    assert status == 200 and bars["s"] == "ok" and len(bars["t"]) == 5, bars
    status, _, bad = workspace.request(base + "/symbols", {"symbol": "NOPE"})
    assert bad["s"] == "error"
    for path in ("/config", "/history", "/symbols"):
        headers = preflight(workspace, base + path, "x-api-key,content-type")
        assert "x-api-key" in headers["access-control-allow-headers"].lower()


def test_preflights_of_every_widget_endpoint_allow_credentials_and_private_network(
    workspace: Workspace, widgets: dict[str, dict[str, Any]]
) -> None:
    endpoints = {"widgets.json", "apps.json"}
    for widget in widgets.values():
        endpoints.add(widget["endpoint"])
        endpoints.update(
            p["optionsEndpoint"] for p in widget.get("params") or [] if p.get("optionsEndpoint")
        )
    for endpoint in sorted(endpoints):
        preflight(workspace, workspace.url(endpoint), "authorization")


def preflight(workspace: Workspace, url: str, asked_headers: str) -> dict[str, str]:
    """Workspace's CORS preflight of a GET of ``url`` from a private-network backend: allowed
    for its origin, with credentials and private network; the answer's headers."""
    status, headers, _ = workspace.request(
        url,
        method="OPTIONS",
        headers={
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": asked_headers,
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert status in (200, 204), (url, status)
    assert headers["access-control-allow-origin"] == ORIGIN, url
    assert headers["access-control-allow-credentials"] == "true", url
    assert headers["access-control-allow-private-network"] == "true", url
    return headers
