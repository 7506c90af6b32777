"""UDF against a replaying source (the CSV sample data at 60x, months ahead of the wall
clock): the Charting Library's adapter asks "until now" with the wall clock (``/time`` and
the browser's ``Date.now()``), and must get the replay's newest bars, as the WebSocket does.
Also the symbol and parameter edge cases an outside check found."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from backend.model import intervals
from tests.harness import ROOT, ServerProcess, WsClient, populated_server, same_key
from tests.test_udf import udf_get


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("udf-replay")
    data = str(ROOT / "data")
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=data, CSV_REPLAY_SPEED="60"
    ) as running:
        yield running


async def newest_on_the_websocket(server: ServerProcess) -> int:
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(
            {"type": "data", "source": "csv", "name": "BTCUSD", "interval": "1m", "count": 3}
        )
        init = await client.wait_for("data_init", same_key("BTCUSD", "1m"))
    finally:
        await client.close()
    return intervals.parse_date(init["data"][-1]["date"])


async def test_until_now_means_the_replays_now_not_the_wall_clock(server: ServerProcess) -> None:
    """The chart showed bars of the wall clock's date, months in the replay's past, and its
    last candle never moved."""
    newest = await newest_on_the_websocket(server)
    assert newest > time.time() + 30 * 86_400  # the replay runs far ahead of the wall clock
    now = int(udf_get(server, "time"))
    first: dict[str, Any] = udf_get(
        server, "history", symbol="csv:BTCUSD", resolution="1", to=now, countback=5
    )
    assert first["s"] == "ok" and len(first["t"]) == 5
    assert abs(first["t"][-1] - newest) <= 10 * 60  # the replay's forming bar, give or take
    pulse = int(time.time())  # the adapter's polling: from = to - 10 bars, the browser's clock
    polled = udf_get(
        server, "history", symbol="csv:BTCUSD", resolution="1", to=pulse, countback=2,
        **{"from": pulse - 600},
    )  # fmt: skip
    assert polled["t"][-1] >= first["t"][-1]
    back = udf_get(  # scrolling back: an explicit time of the replay is taken as it is
        server, "history", symbol="csv:BTCUSD", resolution="1", to=first["t"][0], countback=3
    )
    assert back["t"] == [first["t"][0] - 180, first["t"][0] - 120, first["t"][0] - 60]


@pytest.mark.parametrize("symbol", ["csv:btcusd", "CSV:btcusd", "btcusd", "csv:BTCUSD"])
def test_a_source_prefix_does_not_make_the_name_case_sensitive(
    server: ServerProcess, symbol: str
) -> None:
    assert udf_get(server, "symbols", symbol=symbol)["ticker"] == "csv:BTCUSD"


def test_a_countback_of_zero_or_less_is_no_countback(server: ServerProcess) -> None:
    now = int(time.time())
    for countback in (0, -1):
        body = udf_get(
            server, "history", symbol="csv:BTCUSD", resolution="60", to=now, countback=countback
        )
        assert body["s"] == "error"


def test_a_reversed_range_names_a_next_time_before_it(server: ServerProcess) -> None:
    recent = udf_get(
        server, "history", symbol="csv:BTCUSD", resolution="60", to=int(time.time()), countback=20
    )
    t = recent["t"][10]  # a bar time within the data
    body = udf_get(
        server, "history", symbol="csv:BTCUSD", resolution="60", to=t, **{"from": t + 86_400}
    )
    assert body["s"] == "no_data"
    assert body["nextTime"] < t * 1000


@pytest.mark.parametrize(("resolution", "step"), [("60", 3600), ("1D", 86_400)])
async def test_the_librarys_first_request_up_to_the_next_bar_is_until_now(
    server: ServerProcess, resolution: str, step: int
) -> None:
    """The library's first ``getBars`` asks up to the end of the bar that holds now (the
    next hour, the next UTC midnight), not the clock itself; a 'to' within one bar ahead
    must mean "until now" too, or the chart opens on the wall clock's date, months in the
    replay's past."""
    newest = await newest_on_the_websocket(server)
    now = int(udf_get(server, "time"))
    to = now - now % step + step  # the end of the current bar, up to one bar ahead
    body = udf_get(server, "history", symbol="csv:BTCUSD", resolution=resolution, to=to,
                   countback=3)  # fmt: skip
    assert body["s"] == "ok" and len(body["t"]) == 3
    assert body["t"][-1] >= newest - step - 10 * 60  # the replay's newest bar, give or take
