"""OpenBB widgets over symbols the sample data lacks: a name with a comma in it (a CSV file
``A,B.csv``) and a symbol with daily bars only.

Workspace joins a multi-select's values with commas, so ``csv:A,B`` reaches the rows
endpoint and the grid socket as ``csv:A`` and ``B``; the grid must still show it as one row.
The bars widget with its interval field cleared must show a daily-only symbol's bars.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ROOT, ServerProcess, WsClient, base_env, populate, seconds

COMMA = "csv:A,B"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openbb_commas")
    folder = tmp / "csv"
    folder.mkdir()
    for name in ("A,B", "PLAIN"):
        shutil.copy(ROOT / "data" / "stocks" / "ACME.csv", folder / f"{name}.csv")
    days = [f"2025-01-{d:02d}T00:00:00Z,10,11,9,{10 + d / 10},100" for d in range(1, 31)]
    (folder / "DAILY.csv").write_text("\n".join(["date,open,high,low,close,volume", *days]))
    env = base_env(tmp, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder))
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def get(server: ServerProcess, path: str, **params: str) -> Any:
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=seconds(30)) as response:
        return json.loads(response.read())


def test_bars_without_an_interval_for_a_daily_only_symbol_are_daily(server: ServerProcess) -> None:
    offered = [o["value"] for o in get(server, "/openbb/interval_options", symbol="csv:DAILY")]
    assert "1h" not in offered and offered[0] == "1d"
    for params in ({"interval": ""}, {}):
        rows = get(server, "/openbb/bars", symbol="csv:DAILY", count="3", **params)
        assert len(rows) == 3 and all(r["date"].endswith("00:00:00") for r in rows), rows
    hourly = get(server, "/openbb/bars", symbol="csv:PLAIN", count="2", interval="")
    assert [r["date"][14:] for r in hourly] == ["00:00", "00:00"]  # 1h where offered


def test_the_dropdown_offers_the_name_and_the_rows_show_it_once(server: ServerProcess) -> None:
    assert COMMA in [o["value"] for o in get(server, "/openbb/symbol_options")]
    # As Workspace sends a multi-select: the values comma-joined.
    rows = get(server, "/openbb/live_grid", symbol=f"{COMMA},csv:PLAIN,nope")
    assert [r["symbol"] for r in rows] == [COMMA, "csv:PLAIN", "nope"]
    assert isinstance(rows[0]["price"], float) and rows[0]["error"] is None
    assert "unknown symbol" in rows[2]["error"]


async def test_the_socket_updates_that_row(server: ServerProcess) -> None:
    socket = await WsClient.open(server.url.replace("http://", "ws://") + "/openbb/live_grid_ws")
    try:
        await socket.send_raw(json.dumps({"params": {"symbol": f"csv:PLAIN,{COMMA}"}}))
        deadline = time.monotonic() + seconds(10)
        while {m.get("symbol") for m in socket.messages} < {COMMA, "csv:PLAIN"}:
            assert time.monotonic() < deadline, socket.messages
            await asyncio.sleep(0.05)
        assert {m.get("symbol") for m in socket.messages} == {COMMA, "csv:PLAIN"}
        assert all(m["error"] is None for m in socket.messages)
    finally:
        await socket.close()
