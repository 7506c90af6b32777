"""OpenBB Workspace backend: pure helpers, the listener registry, then the real server
driven the way Workspace drives a custom backend (CORS, widgets, live grid socket)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backend.api import cors, openbb_grid, openbb_widgets
from backend.hub.listeners import Listeners
from backend.model.bars import Bar, SeriesId
from backend.settings import Settings
from tests.harness import ServerProcess, WsClient, base_env, eventually, populate, seconds

WORKSPACE = "https://pro.openbb.co"
KEY = SeriesId("counting", "AAA", "1d")
ROW = {
    "source": "counting",
    "name": "AAA",
    "name_label": "AAA test instrument",
    "type": "candlestick",
    "categories": ["Test"],
    "intervals": ["1m", "1h", "1d"],
    "outputs": [],
}

# ---------------------------------------------------------------- params messages


@pytest.mark.parametrize(
    "message",
    [
        {"params": {"symbol": "AAA,counting:BBB"}},
        {"type": "params", "params": {"symbol": "AAA,counting:BBB"}},
        {"type": "params", "params": {"symbol": ["AAA", "counting:BBB"]}},
        {"params": {"symbol": [" AAA ", "counting:BBB,AAA", ""], "other": 1}},
    ],
)
def test_both_message_shapes_and_both_value_forms_give_the_set(message: dict[str, Any]) -> None:
    assert openbb_grid.parse_params_message(json.dumps(message)) == ["AAA", "counting:BBB"]


def test_params_without_symbols_empty_the_set() -> None:
    assert openbb_grid.parse_params_message('{"params": {}}') == []
    assert openbb_grid.parse_params_message('{"type": "params", "params": {"symbol": ""}}') == []
    assert openbb_grid.parse_params_message('{"params": {"symbol": null}}') == []


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '"params"',
        '{"type": "ping"}',
        '{"params": "AAA"}',
        '{"params": {"symbol": {"a": 1}}}',
        '{"type": "params", "params": {"symbol": 5}}',
        '{"params": {"symbol": true}}',
    ],
)
def test_other_messages_are_not_params(text: str) -> None:
    assert openbb_grid.parse_params_message(text) is None


def test_symbol_lists_are_capped() -> None:
    assert openbb_grid.split_symbols("A,B,C,D", limit=2) == ["A", "B"]
    assert openbb_grid.split_symbols(None) == []
    assert openbb_grid.split_symbols("x" * 500) == ["x" * openbb_grid.MAX_SYMBOL_CHARS]


# ---------------------------------------------------------------- rows


def test_a_row_compares_the_forming_bar_with_the_previous_close() -> None:
    bars: list[Bar] = [(86_400, 10.0, 11.0, 9.0, 10.0, 5.0), (172_800, 10.0, 12.5, 10.0, 12.5, 7.0)]
    row = openbb_grid.build_row("AAA", "AAA test", bars)
    assert row == {
        "symbol": "AAA",
        "name": "AAA test",
        "price": 12.5,
        "change": 2.5,
        "change_percent": 25.0,
        "volume": 7.0,
        "date": "1970-01-03 00:00:00",
        "error": None,
    }


def test_a_row_without_history_or_with_an_error_keeps_every_column() -> None:
    only = openbb_grid.build_row("AAA", None, [(60, 1.0, 1.0, 1.0, 2.0, None)])
    assert (only["price"], only["change"], only["change_percent"]) == (2.0, None, None)
    unknown = openbb_grid.build_row("ZZZ", None, [], "unknown symbol ZZZ")
    assert set(unknown) == set(only)
    assert unknown["error"] == "unknown symbol ZZZ"
    zero = openbb_grid.build_row("Z", None, [(0, 0, 0, 0, 0.0, 0), (60, 0, 0, 0, 1.0, 0)])
    assert zero["change"] == 1.0
    assert zero["change_percent"] is None


def test_socket_updates_carry_the_id_and_live_values_only() -> None:
    row = openbb_grid.build_row("AAA", "label", [(60, 1.0, 1.0, 1.0, 2.0, None)])
    assert openbb_grid.update_of(row) == {
        "symbol": "AAA",
        "price": 2.0,
        "date": "1970-01-01 00:01:00",
    }


def test_the_grid_follows_the_daily_interval_or_the_coarsest() -> None:
    assert openbb_grid.grid_interval(ROW) == "1d"
    assert openbb_grid.grid_interval({**ROW, "intervals": ["1m", "4h"]}) == "4h"
    assert openbb_grid.grid_interval({**ROW, "intervals": []}) is None


def test_options_are_labelled_and_valued_source_name() -> None:
    assert openbb_grid.option(ROW) == {
        "label": "AAA - AAA test instrument (counting)",
        "value": "counting:AAA",
    }


# ---------------------------------------------------------------- widgets.json, apps.json


def test_every_widget_has_the_required_fields_and_every_column_its_ws_flag() -> None:
    defaults = openbb_widgets.pick_defaults([ROW, {**ROW, "name": "BBB"}], {"counting"})
    assert defaults == openbb_widgets.Defaults(
        ("counting:AAA", "counting:BBB"), "counting:AAA", "1h"
    )
    widgets = openbb_widgets.widgets(defaults)
    for widget in widgets.values():
        assert {"name", "description", "endpoint", "type", "gridData"} <= set(widget)
    grid = widgets[openbb_widgets.LIVE_GRID]
    assert grid["type"] == "live_grid"
    assert grid["wsEndpoint"] and grid["data"]["wsRowIdColumn"] == "symbol"
    columns = grid["data"]["table"]["columnsDefs"]
    assert all(isinstance(c["enableCellChangeWs"], bool) for c in columns)
    live = {c["field"] for c in columns if c["enableCellChangeWs"]}
    assert live == {"price", "change", "change_percent", "volume", "date", "error"}
    percent = next(c for c in columns if c["field"] == "change_percent")
    assert percent["formatterFn"] == "percent"  # shown as "25.00%": the value is in percent
    row = openbb_grid.build_row("AAA", None, [])
    assert {c["field"] for c in columns} == set(row)
    symbol = grid["params"][0]
    assert symbol["multiSelect"] is True and symbol["optionsEndpoint"]
    assert symbol["value"] == ["counting:AAA", "counting:BBB"]
    chart = widgets[openbb_widgets.CHART]
    assert chart["type"] == "advanced_charting"
    assert chart["endpoint"] == "/udf"
    assert chart["data"] == {"defaultSymbol": "counting:AAA", "updateFrequency": 5000}


# The columnsDefs fields of the widgets.json reference (protocols.md 2.2).
DOCUMENTED_COLUMN_FIELDS = {
    "field", "headerName", "cellDataType", "chartDataType", "formatterFn", "decimalPlaces",
    "renderFn", "renderFnParams", "width", "minWidth", "maxWidth", "hide", "pinned",
    "headerTooltip", "prefix", "suffix", "sparkline", "enableCellChangeWs",
}  # fmt: skip
DOCUMENTED_FORMATTERS = {"none", "int", "percent", "normalized", "normalizedPercent", "dateToYear"}
DOCUMENTED_RENDERERS = {"greenRed", "titleCase", "hoverCard", "cellOnClick", "columnColor",
                        "showCellChange"}  # fmt: skip


def test_columns_use_only_documented_fields_and_values() -> None:
    for widget in openbb_widgets.widgets(openbb_widgets.Defaults()).values():
        for column in widget.get("data", {}).get("table", {}).get("columnsDefs", []):
            assert set(column) <= DOCUMENTED_COLUMN_FIELDS, column
            assert column.get("formatterFn", "none") in DOCUMENTED_FORMATTERS
            assert column.get("renderFn", "greenRed") in DOCUMENTED_RENDERERS
            assert column.get("cellDataType", "text") in {"text", "number", "date", "dateString"}


def test_the_app_carries_its_thumbnails_for_both_themes() -> None:
    (app,) = openbb_widgets.apps("http://127.0.0.1:8000/")
    assert app["img_dark"] == "http://127.0.0.1:8000/openbb/thumbnail-dark.svg"
    assert app["img_light"] == "http://127.0.0.1:8000/openbb/thumbnail-light.svg"
    assert app["img"] == app["img_dark"]
    assert (openbb_widgets.thumbnail("dark") or "").startswith("<svg")
    assert openbb_widgets.thumbnail("pink") is None


def test_without_a_base_url_the_app_names_no_thumbnails() -> None:
    (app,) = openbb_widgets.apps()
    assert not {"img", "img_dark", "img_light"} & set(app)


@pytest.mark.parametrize(
    "value", ["candles.example.org", "ftp://h/", "https://", "https://h/?x=1", "https://u@h/"]
)
def test_a_public_url_that_is_no_http_base_url_stops_the_start(value: str) -> None:
    with pytest.raises(ValidationError, match="PUBLIC_URL"):
        Settings(PUBLIC_URL=value)
    assert Settings(PUBLIC_URL=" https://h:8443/md/ ").PUBLIC_URL == "https://h:8443/md"


def test_the_app_lays_out_existing_widgets() -> None:
    (app,) = openbb_widgets.apps()
    assert app["name"] == "Candlewire"
    ids = {item["i"] for tab in app["tabs"].values() for item in tab["layout"]}
    assert ids == set(openbb_widgets.widgets(openbb_widgets.Defaults()))


def test_the_grid_socket_url_carries_a_key_only_when_given_one() -> None:
    """Workspace appends ``wsEndpoint`` to the backend URL as it is (no headers, no query
    parameters of its connection): a key travels in it, quoted, or not at all."""
    plain = openbb_widgets.widgets(openbb_widgets.Defaults())[openbb_widgets.LIVE_GRID]
    assert plain["wsEndpoint"] == "openbb/live_grid_ws"
    keyed = openbb_widgets.widgets(openbb_widgets.Defaults(), "a/b+c=&d")
    endpoint = keyed[openbb_widgets.LIVE_GRID]["wsEndpoint"]
    path, _, query = endpoint.partition("?")
    assert path == "openbb/live_grid_ws" and "/" not in query
    assert urllib.parse.parse_qs(query) == {"token": ["a/b+c=&d"]}


def test_defaults_skip_providers_that_are_not_enabled() -> None:
    assert openbb_widgets.pick_defaults([ROW], {"csv"}) == openbb_widgets.Defaults()


def test_origins_come_from_a_comma_list_or_a_sequence() -> None:
    assert cors.origins_of("https://a.example, http://b:1/ ,") == (
        "https://a.example",
        "http://b:1",
    )
    assert cors.origins_of(("https://a.example",)) == ("https://a.example",)
    assert cors.origins_of(None) == ()
    assert cors.origins_of("https://A.Example:8443/") == ("https://a.example:8443",)


# ---------------------------------------------------------------- the listener registry


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[SeriesId, Bar]] = []

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        self.seen.append((key, bar))


class Broken:
    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        raise RuntimeError("boom")


BAR: Bar = (60, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_listeners_are_called_per_key_and_dropped_with_their_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listeners = Listeners()
    first, second = Recorder(), Recorder()
    other = SeriesId("counting", "BBB", "1d")
    listeners.add(1, KEY, first)
    listeners.add(1, other, first)
    listeners.add(2, KEY, Broken())
    listeners.add(3, KEY, second)
    assert listeners.notify(KEY, BAR) == 3  # the broken one is logged, the others still run
    assert first.seen == second.seen == [(KEY, BAR)]
    assert "bar listener of client 2 failed" in caplog.text
    assert sorted(listeners.drop(1)) == sorted([KEY, other])
    assert other not in listeners
    assert listeners.remove(3, KEY) and not listeners.remove(3, KEY)
    assert listeners.keys_of(2) == {KEY}
    assert len(listeners) == 1
    assert listeners.notify(other, BAR) == 0


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openbb")
    env = base_env(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5", STREAM_LINGER_SECONDS="0.5")
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def call(
    server: ServerProcess,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **params: object,
) -> tuple[int, dict[str, str], Any]:
    """One request as Workspace sends it (with its Origin); any status, parsed body."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = server.url + path + ("?" + query if query else "")
    request = urllib.request.Request(
        url, method=method, headers={"Origin": WORKSPACE, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=seconds(30)) as response:
            status, raw_headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, raw_headers, body = exc.code, dict(exc.headers), exc.read()
    parsed = json.loads(body) if body[:1] in (b"{", b"[") else body.decode()
    return status, {k.lower(): v for k, v in raw_headers.items()}, parsed


def provider_log(server: ServerProcess) -> list[str]:
    path = Path(server.env["CANDLEWIRE_TEST_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def test_workspace_reads_widgets_and_apps_with_cors(server: ServerProcess) -> None:
    status, headers, widgets = call(server, "/widgets.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["access-control-allow-origin"] == WORKSPACE
    assert headers["access-control-allow-credentials"] == "true"
    assert isinstance(widgets, dict)
    assert set(widgets) == {
        openbb_widgets.LIVE_GRID,
        openbb_widgets.BARS_TABLE,
        openbb_widgets.CHART,
    }
    assert widgets[openbb_widgets.LIVE_GRID]["params"][0]["value"] == [
        "counting:AAA",
        "counting:BBB",
        "counting:CCC",
    ]
    assert widgets[openbb_widgets.CHART]["data"]["defaultSymbol"] == "counting:AAA"
    status, headers, apps = call(server, "/apps.json")
    assert status == 200
    assert headers["access-control-allow-origin"] == WORKSPACE
    assert isinstance(apps, list) and apps[0]["name"] == "Candlewire"
    layout = apps[0]["tabs"]["markets"]["layout"]
    assert {item["i"] for item in layout} <= set(widgets)
    for key in ("img", "img_dark", "img_light"):
        with urllib.request.urlopen(apps[0][key], timeout=seconds(30)) as response:
            assert response.headers["content-type"] == "image/svg+xml"
            assert response.read().startswith(b"<svg")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_apps_json_names_no_url_of_a_host_header_it_does_not_know(
    server: ServerProcess, host: str
) -> None:
    """Without ``PUBLIC_URL``, a ``Host`` other than this machine's (loopback, or the address
    the server listens on) puts no URL into ``apps.json``: the thumbnails are left out. They
    were ``http://<Host>/openbb/...``, whatever the caller wrote, for a cache or a proxy to
    hand on to others."""
    status, _, apps = call(server, "/apps.json", headers={"Host": host})
    assert status == 200 and apps[0]["name"] == "Candlewire"
    assert "evil" not in json.dumps(apps)
    assert not {"img", "img_dark", "img_light"} & set(apps[0])
    port = server.url.rsplit(":", 1)[1]
    for local in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
        _, _, apps = call(server, "/apps.json", headers={"Host": local})
        assert apps[0]["img_dark"] == f"http://{local}/openbb/thumbnail-dark.svg"


def test_preflight_with_a_custom_header_succeeds(server: ServerProcess) -> None:
    status, headers, _ = call(
        server,
        "/openbb/live_grid",
        method="OPTIONS",
        headers={
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-API-KEY",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == WORKSPACE
    assert headers["access-control-allow-credentials"] == "true"
    assert "x-api-key" in headers["access-control-allow-headers"].lower()
    assert "GET" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-private-network"] == "true"


def test_an_origin_set_with_capitals_gets_cors_as_the_browser_writes_it(
    tmp_path: Path,
) -> None:
    """``CORS_ORIGINS=https://Charts.Example.com`` passes the settings' check (it is an
    origin), and its socket upgrades were let in (compared without case), but HTTP CORS
    compared it with the browser's ``Origin``, always lower case, as it was written: every
    preflight was refused (400 "Disallowed CORS origin") and no answer carried CORS."""
    env = base_env(tmp_path, PROVIDERS="counting", CORS_ORIGINS="https://Charts.Example.com/")
    assert populate(env).returncode == 0
    origin = "https://charts.example.com"
    with ServerProcess(env, tmp_path / "server.log") as running:
        preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
        status, headers, _ = call(running, "/widgets.json", method="OPTIONS", headers=preflight)
        assert status == 200
        assert headers["access-control-allow-origin"] == origin
        status, headers, _ = call(running, "/widgets.json", headers={"Origin": origin})
        assert status == 200
        assert headers["access-control-allow-origin"] == origin


def test_other_origins_get_no_cors_outside_udf(server: ServerProcess) -> None:
    _, headers, _ = call(server, "/widgets.json", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_symbol_options_come_from_the_database(server: ServerProcess) -> None:
    _, _, options = call(server, "/openbb/symbol_options")
    values = [o["value"] for o in options]
    assert values[:3] == ["counting:AAA", "counting:BBB", "counting:CCC"]
    assert all(set(o) == {"label", "value"} for o in options)
    _, _, found = call(server, "/openbb/symbol_options", query="bbb")
    assert found[0]["value"] == "counting:BBB"
    _, _, offered = call(server, "/openbb/interval_options", symbol="counting:AAA")
    assert [o["value"] for o in offered][-1] == "1d"
    assert "1w" not in [o["value"] for o in offered]


@pytest.mark.parametrize("source", ["counting", "COUNTING", " Counting "])
def test_the_symbol_options_source_ignores_case_as_symbols_do(
    server: ServerProcess, source: str
) -> None:
    """``source=COUNTING`` lists the counting symbols, as ``COUNTING:aaa`` names one in every
    OpenBB (and UDF) symbol field; it listed nothing."""
    _, _, options = call(server, "/openbb/symbol_options", source=source, limit=2)
    assert [o["value"] for o in options] == ["counting:AAA", "counting:BBB"]
    _, _, none = call(server, "/openbb/symbol_options", source="nope")
    assert none == []


def test_live_grid_rows_one_per_symbol_with_row_errors(server: ServerProcess) -> None:
    status, _, rows = call(server, "/openbb/live_grid", symbol="AAA,counting:BBB,ZZZ,nope:CCC")
    assert status == 200
    assert [row["symbol"] for row in rows] == ["AAA", "counting:BBB", "ZZZ", "nope:CCC"]
    for row in rows[:2]:
        assert isinstance(row["price"], float)
        assert isinstance(row["change"], float)
        assert row["date"].endswith("00:00:00")  # the forming daily bar
        assert row["error"] is None
    for row in rows[2:]:
        assert row["price"] is None
        assert "unknown symbol" in row["error"]
    assert all(set(row) == set(rows[0]) for row in rows)
    _, _, empty = call(server, "/openbb/live_grid", symbol="")
    assert empty == []


def test_repeated_symbol_parameters_are_all_honoured(server: ServerProcess) -> None:
    url = server.url + "/openbb/live_grid?symbol=AAA&symbol=counting:BBB,CCC&symbol=AAA"
    with urllib.request.urlopen(url, timeout=seconds(30)) as response:
        rows = json.loads(response.read())
    assert [row["symbol"] for row in rows] == ["AAA", "counting:BBB", "CCC"]


def test_bars_table_and_its_json_errors(server: ServerProcess) -> None:
    status, _, rows = call(server, "/openbb/bars", symbol="counting:CCC", interval="1h", count=5)
    assert status == 200
    assert len(rows) == 5
    assert set(rows[0]) == {"date", "open", "high", "low", "close", "volume"}
    assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)
    # A cleared interval field may come empty: the widget's default, not an error.
    status, _, hourly = call(server, "/openbb/bars", symbol="counting:CCC", interval="", count=5)
    assert status == 200 and [r["date"] for r in hourly] == [r["date"] for r in rows]
    for params, code in (
        ({"symbol": "ZZZ", "interval": "1h"}, 404),
        ({"symbol": "CCC", "interval": "7m"}, 400),
        ({"symbol": "CCC", "interval": "1w"}, 400),
        ({"symbol": "CCC", "interval": "1h", "count": 0}, 400),
        ({"symbol": "CCC", "interval": "1h", "count": "many"}, 400),
    ):
        status, _, body = call(server, "/openbb/bars", **params)
        assert status == code, (params, body)
        assert body["detail"] and body["error"], body
    # No symbol is a request that lacks a field (400, as /api/history says), not a symbol
    # named '' that is unknown (404 "unknown symbol ''").
    for params in ({}, {"symbol": " ", "interval": "1h"}):
        status, _, body = call(server, "/openbb/bars", **params)
        assert (status, body["error"]) == (400, "missing_field"), body
        assert "symbol" in body["detail"], body


@pytest.fixture
async def grid(server: ServerProcess) -> AsyncIterator[WsClient]:
    _, _, widgets = call(server, "/widgets.json")
    path = widgets[openbb_widgets.LIVE_GRID]["wsEndpoint"]
    socket = await WsClient.open(server.url.replace("http://", "ws://") + "/" + path)
    yield socket
    await socket.close()


async def rows_for(socket: WsClient, symbols: set[str], after: int = 0) -> None:
    """Wait until every one of ``symbols`` has had an update (from message ``after`` on)."""
    deadline = time.monotonic() + seconds(15)
    while True:
        seen = {m.get("symbol") for m in socket.messages[after:]}
        if symbols <= seen:
            return
        assert time.monotonic() < deadline, f"no rows for {symbols - seen}; saw {seen}"
        await asyncio.sleep(0.05)


async def test_live_grid_streams_exactly_the_current_symbol_set(
    server: ServerProcess, grid: WsClient
) -> None:
    await grid.send_raw(json.dumps({"params": {"symbol": "AAA,counting:BBB"}}))
    await rows_for(grid, {"AAA", "counting:BBB"})
    await asyncio.sleep(seconds(1))
    first = list(grid.messages)
    assert {m["symbol"] for m in first} == {"AAA", "counting:BBB"}
    assert len(first) > 6  # the test provider publishes every 0.1 s
    assert all(isinstance(m["price"], float) for m in first)
    assert {"symbol", "price", "change", "change_percent", "volume", "date"} <= set(first[-1])
    # An error the rows endpoint gave a row (its provider failed then) is cleared by the
    # updates: Workspace keeps a cell until an update names it.
    assert all(m["error"] is None for m in first)

    await grid.send_raw("not json")  # ignored; the socket stays open
    mark = len(grid.messages)
    await grid.send_raw(json.dumps({"type": "params", "params": {"symbol": ["CCC"]}}))
    await rows_for(grid, {"CCC"}, mark)
    start = next(i for i in range(mark, len(grid.messages)) if grid.messages[i]["symbol"] == "CCC")
    await asyncio.sleep(seconds(1))
    after = grid.messages[start:]
    assert {m["symbol"] for m in after} == {"CCC"}
    assert len(after) > 3
    await eventually(lambda: "last AAA 1d" in provider_log(server), what="AAA's upstream stop")
    log = provider_log(server)
    assert "first AAA 1d" in log
    assert "first CCC 1d" in log and "last CCC 1d" not in log


async def test_an_empty_set_stops_updates_and_closing_stops_upstream(
    server: ServerProcess, grid: WsClient
) -> None:
    await grid.send_raw(json.dumps({"params": {"symbol": "counting:BBB,ZZZ"}}))
    await rows_for(grid, {"counting:BBB", "ZZZ"})
    (unknown,) = [m for m in grid.messages if m["symbol"] == "ZZZ"]  # its error row, once
    assert "unknown symbol" in unknown["error"] and unknown["price"] is None
    await grid.send_raw(json.dumps({"params": {"symbol": []}}))
    await asyncio.sleep(seconds(0.5))
    mark = len(grid.messages)
    await asyncio.sleep(seconds(1))
    assert grid.messages[mark:] == []
    await grid.send_raw(json.dumps({"params": {"symbol": "counting:BBB"}}))
    await rows_for(grid, {"counting:BBB"}, mark)
    before = provider_log(server).count("last BBB 1d")
    await grid.close()
    await eventually(
        lambda: provider_log(server).count("last BBB 1d") == before + 1,
        what="BBB's upstream stop after the socket closed",
    )
