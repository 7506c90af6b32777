"""End to end: indicators over the Tradiny wire format (spec tradiny-extensions.md 1-2).

The real server.py with the ``counting`` provider process and a user-written indicator
loaded through ``EXTRA_INDICATORS``; a real WebSocket client. Values are checked against
TA-Lib's own batch functions on the bars the same server sent in ``data_init``.
"""

from __future__ import annotations

import math
import string
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import talib

from tests.harness import ServerProcess, WsClient, eventually, populated_server, same_key

USER_INDICATOR = textwrap.dedent(
    """
    from backend.indicators.base import Indicator, Input, Output


    class Midpoint(Indicator):
        name = "Bar Midpoint"
        categories = ("custom",)
        columns = ("high", "low")
        inputs = (Input("scale", default=1, min=1, max=10),)
        outputs = (Output("mid", y_axis="price"),)

        def calc(self, data, **inputs):
            return [(data["high"] + data["low"]) / 2 * inputs["scale"]]


    class Slow(Midpoint):
        name = "Slow Midpoint"

        def calc(self, data, **inputs):
            import time
            time.sleep(0.6)
            return super().calc(data, **inputs)
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("indicators")
    (tmp / "my_indicators.py").write_text(USER_INDICATOR)
    with populated_server(
        tmp,
        PROVIDERS="counting",
        HISTORY_TIMEOUT="3",
        STREAM_LINGER_SECONDS="0.5",
        EXTRA_INDICATORS="mine.Midpoint=my_indicators:Midpoint,mine.Slow=my_indicators:Slow",
        PYTHONPATH=str(tmp),
        CANDLEWIRE_TEST_LOG=str(tmp / "calls.log"),
    ) as running:
        yield running


def history_calls(server: ServerProcess) -> list[str]:
    """The counting provider's ``history NAME INTERVAL`` lines so far."""
    path = Path(server.env["CANDLEWIRE_TEST_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.startswith("history ")]


def data(name: str, interval: str = "1h", **extra: object) -> dict[str, Any]:
    return {"type": "data", "source": "counting", "name": name, "interval": interval, **extra}


def column(name: str, interval: str, field: str = "close") -> dict[str, str]:
    base = f"counting-{name}-{interval}"
    return {
        "source": "counting",
        "name": name,
        "interval": interval,
        "value": f"{base}-{field}",
        "dataKey": field,
    }


def indicator(
    indicator_id: str,
    chart_id: str,
    inputs: dict[str, object] | None = None,
    data_map: dict[str, dict[str, str]] | None = None,
    kind: str = "indicator",
    **extra: object,
) -> dict[str, Any]:
    """An ``indicator`` request as the front end builds it (spec 2.1)."""
    return {
        "type": kind,
        "id": chart_id,
        "indicator": {"id": indicator_id, "type": "indicator"},
        "inputs": inputs or {},
        "dataMap": data_map or {"close": column("AAA", "1h")},
        **extra,
    }


def closes(init: dict[str, Any], key: str, field: str = "close") -> dict[str, float]:
    return {row["date"]: row[f"{key}-{field}"] for row in init["data"]}


def values(reply: dict[str, Any], name: str) -> dict[str, float | None]:
    return {row["date"]: row[f"{reply['id']}-{name}"] for row in reply["data"]}


def same_id(chart_id: str) -> Any:
    return lambda m: m.get("id") == chart_id


# ---------------------------------------------------------------- the catalogue


async def test_the_catalogue_lists_over_150_indicators_and_finds_the_common_ones(
    client: WsClient,
) -> None:
    queries = [*string.ascii_lowercase, "rsi", "moving average", "bollinger"]
    await client.send(
        *({"type": "search_indicators", "search": q} for q in queries),
        {"type": "ping", "id": "catalogue"},
    )
    await client.wait_for("pong", lambda m: m.get("id") == "catalogue")
    # (a frame's extensions are taken after its core items: the pong may come first, and
    # the 29 replies, large, may come in more than one write)
    while len(client.of_type("search_indicators_done")) < len(queries):
        await client.wait_for("search_indicators_done", after=len(client.messages))
    replies = client.of_type("search_indicators_done")
    assert len(replies) == 29
    ids: set[str] = set()
    for reply in replies[:26]:
        ids.update(row["id"] for row in reply["results"])
    assert len(ids) >= 150
    rsi, moving, bollinger = (reply["results"] for reply in replies[26:])
    assert rsi[0]["id"] == "talib.momentum.RSI"
    assert {"talib.overlap.EMA", "talib.overlap.SMA"} <= {row["id"] for row in moving}
    assert bollinger[0]["id"] == "talib.overlap.BBANDS"
    entry = rsi[0]
    assert entry["type"] == "indicator" and entry["details"]["categories"]
    assert entry["details"]["inputs"][0]["default"] == [14]
    assert entry["details"]["outputs"][0]["y_axis"]
    assert all(len(reply["results"]) <= 100 for reply in replies)


async def test_a_user_indicator_from_extra_indicators_is_searchable_and_computes(
    client: WsClient,
) -> None:
    await client.send({"type": "search_indicators", "search": "midpoint"})
    found = await client.wait_for("search_indicators_done")
    assert found["results"][0]["id"] == "mine.Midpoint"
    data_map = {"high": column("AAA", "1h", "high"), "low": column("AAA", "1h", "low")}
    await client.send(
        data("AAA", count=50, stream=False),
        indicator("mine.Midpoint", "mid", {"scale": "2"}, data_map, count=50),
    )
    init = await client.wait_for("data_init", same_key("AAA", "1h"))
    reply = await client.wait_for("indicator_init", same_id("mid"))
    mid = values(reply, "mid")
    bars = {row["date"]: row for row in init["data"]}
    shared = sorted(set(mid) & set(bars))[:-1]  # the forming bar may have moved on
    assert len(shared) >= 40
    for date in shared:
        row = bars[date]
        expected = row["counting-AAA-1h-high"] + row["counting-AAA-1h-low"]
        assert mid[date] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("indicator_id", "inputs", "reference"),
    [
        ("talib.overlap.EMA", {"timeperiod": "20"}, lambda c: {"EMA": talib.EMA(c, 20)}),
        ("talib.momentum.RSI", {"timeperiod": 14}, lambda c: {"RSI": talib.RSI(c, 14)}),
        (
            "talib.momentum.MACD",
            {},
            lambda c: dict(zip(("macd", "macdsignal", "macdhist"), talib.MACD(c), strict=True)),
        ),
        (
            "talib.overlap.BBANDS",
            {"timeperiod": 20},
            lambda c: dict(
                zip(("upperband", "middleband", "lowerband"), talib.BBANDS(c, 20), strict=True)
            ),
        ),
    ],
)
async def test_indicator_init_equals_talib_batch_values_on_the_same_bars(
    client: WsClient, indicator_id: str, inputs: dict[str, object], reference: Any
) -> None:
    # The counting source was listed 30 days ago: 1h has ~720 bars, all of them fit.
    chart_id = indicator_id.replace(".", "-") + "_AAA"
    await client.send(
        data("AAA", count=5000, stream=False),
        indicator(indicator_id, chart_id, inputs, count=5000),
    )
    init = await client.wait_for("data_init", same_key("AAA", "1h"))
    reply = await client.wait_for("indicator_init", same_id(chart_id), timeout=20)
    price = closes(init, "counting-AAA-1h")
    dates = sorted(price)
    assert 700 <= len(dates) < 5000
    assert [row["date"] for row in reply["data"]] == dates
    assert reply["annotations"] is None
    assert reply["last_dates"] == {"counting-AAA-1h": dates[-1]}
    expected = reference(np.array([price[d] for d in dates], dtype=np.float64))
    for output, batch in expected.items():
        got = values(reply, output)
        assert all(set(row) == set(reply["data"][0]) for row in reply["data"])
        for date, want in zip(dates[:-1], batch[:-1], strict=True):  # the forming bar moves
            if math.isnan(want):
                assert got[date] is None
            else:
                assert got[date] == pytest.approx(float(want), rel=1e-9, abs=1e-12)


async def test_an_indicator_over_two_symbols_aligns_their_bars(client: WsClient) -> None:
    data_map = {"high": column("AAA", "1h"), "low": column("BBB", "1h")}
    await client.send(
        data("AAA", count=400, stream=False),
        data("BBB", count=400, stream=False),
        indicator("talib.statistics.CORREL", "correl", {"timeperiod": 30}, data_map, count=200),
    )
    aaa = await client.wait_for("data_init", same_key("AAA", "1h"))
    bbb = await client.wait_for("data_init", same_key("BBB", "1h"))
    reply = await client.wait_for("indicator_init", same_id("correl"))
    a, b = closes(aaa, "counting-AAA-1h"), closes(bbb, "counting-BBB-1h")
    dates = sorted(set(a) & set(b))
    got = values(reply, "CORREL")
    assert len(got) == 200 and set(reply["last_dates"]) == {"counting-AAA-1h", "counting-BBB-1h"}
    batch = talib.CORREL(np.array([a[d] for d in dates]), np.array([b[d] for d in dates]), 30)
    want = dict(zip(dates, batch, strict=True))
    for date in sorted(got)[:-1]:
        assert got[date] == pytest.approx(float(want[date]), rel=1e-9, abs=1e-12)


async def test_indicator_history_pages_back_like_data_history(client: WsClient) -> None:
    chart_id = "sma10_AAA_1m"
    sma = {"timeperiod": 10}
    data_map = {"close": column("AAA", "1m")}
    await client.send(data("AAA", "1m", count=100, stream=False))
    init = await client.wait_for("data_init", same_key("AAA", "1m"))
    first, last = init["data"][0]["date"], init["data"][-1]["date"]
    await client.send(
        indicator("talib.overlap.SMA", chart_id, sma, data_map, range=[first, last], stream=False)
    )
    shown = await client.wait_for("indicator_init", same_id(chart_id))
    assert shown["data"][0]["date"] == first and len(shown["data"]) >= 100
    assert all(v is not None for v in values(shown, "SMA").values())
    # The chart pages back, then asks for the indicator over the new rows.
    await client.send(
        {"type": "data_history", "source": "counting", "name": "AAA", "interval": "1m"}
        | {"end": first, "count": 200}
    )
    older = await client.wait_for("data_history", same_key("AAA", "1m"))
    start = older["data"][0]["date"]
    page = indicator(
        "talib.overlap.SMA", chart_id, sma, data_map, "indicator_history", range=[start, last]
    )
    await client.send(page | {"end": first})
    reply = await client.wait_for("indicator_history", same_id(chart_id))
    got = values(reply, "SMA")
    dates = sorted(got)
    assert dates[0] == start and dates[-1] == first  # the page, not everything since
    price = closes(older, "counting-AAA-1m") | closes(init, "counting-AAA-1m")
    series = sorted(price)
    batch = dict(zip(series, talib.SMA(np.array([price[d] for d in series]), 10), strict=True))
    assert all(got[date] is not None for date in dates)  # warmed up on older bars
    for date in dates[9:]:  # the batch over these bars alone needs 9 bars of warm-up
        assert got[date] == pytest.approx(float(batch[date]), rel=1e-9)
    assert got[first] == pytest.approx(values(shown, "SMA")[first], rel=1e-12)


async def test_a_running_total_is_the_same_line_on_every_page(client: WsClient) -> None:
    # OBV adds each bar to the value before it: a page computed from its own first bars
    # starts a new total there, and the line jumps where two pages meet on the chart.
    chart_id = "obv_AAA_1h"
    data_map = {"close": column("AAA", "1h"), "volume": column("AAA", "1h", "volume")}
    await client.send(data("AAA", count=5000, stream=False))
    bars = await client.wait_for("data_init", same_key("AAA", "1h"))
    price, volume = closes(bars, "counting-AAA-1h"), closes(bars, "counting-AAA-1h", "volume")
    dates = sorted(price)
    assert 700 <= len(dates) < 5000  # the whole series fits the warm-up
    await client.send(indicator("talib.volume.OBV", chart_id, {}, data_map, count=100))
    shown = await client.wait_for("indicator_init", same_id(chart_id))
    first = shown["data"][0]["date"]
    start = dates[dates.index(first) - 100]
    page = indicator("talib.volume.OBV", chart_id, {}, data_map, "indicator_history")
    await client.send(page | {"range": [start, dates[-1]], "end": first})
    reply = await client.wait_for("indicator_history", same_id(chart_id))
    older = values(reply, "OBV")
    assert older[first] == values(shown, "OBV")[first]  # the pages meet without a jump
    batch = talib.OBV(np.array([price[d] for d in dates]), np.array([volume[d] for d in dates]))
    want = dict(zip(dates, batch.tolist(), strict=True))
    got = older | values(shown, "OBV")
    for date in sorted(got)[:-1]:  # the forming bar moves
        assert got[date] == pytest.approx(want[date], rel=1e-9)


# ---------------------------------------------------------------- live


async def test_every_data_update_is_followed_by_an_indicator_update(client: WsClient) -> None:
    chart_id = "rsi_live_CCC"
    data_map = {"close": column("CCC", "1m")}
    await client.send(
        data("CCC", "1m", count=300),
        indicator("talib.momentum.RSI", chart_id, {"timeperiod": 14}, data_map),
    )
    await client.wait_for("indicator_init", same_id(chart_id))
    start = len(client.messages)
    await client.wait_for("indicator_update", same_id(chart_id), after=start)
    update = await client.wait_for(
        "indicator_update", same_id(chart_id), after=len(client.messages)
    )
    at = next(i for i, m in enumerate(client.messages) if m is update)  # equal ones repeat
    before = [
        m for m in client.messages[start:at] if m["type"] == "data_update" and m["name"] == "CCC"
    ]
    assert before and before[-1]["data"]["date"] == update["data"]["date"]
    value = update["data"][f"{chart_id}-RSI"]
    assert isinstance(value, float) and 0 <= value <= 100
    assert set(update["data"]) == {"date", f"{chart_id}-RSI"}
    assert update["last_dates"] == {"counting-CCC-1m": update["data"]["date"]}


async def test_indicators_held_on_one_key_each_get_their_update_after_the_data_update(
    client: WsClient,
) -> None:
    """Updates shared by every client holding the same charts still arrive one message per
    chart id, with the fields of the spec in their order, after the ``data_update``."""
    data_map = {"close": column("AAA", "1m")}
    charts = {
        "ema_two_AAA": ("talib.overlap.EMA", ["EMA"]),
        "bb_two_AAA": ("talib.overlap.BBANDS", ["upperband", "middleband", "lowerband"]),
    }
    await client.send(
        data("AAA", "1m", count=300),
        *(indicator(iid, chart_id, {}, data_map) for chart_id, (iid, _) in charts.items()),
    )
    for chart_id in charts:
        await client.wait_for("indicator_init", same_id(chart_id))
    start = len(client.messages)
    for chart_id in charts:  # the newest data_update of AAA has both after it
        await client.wait_for("indicator_update", same_id(chart_id), after=start)
    last = await client.wait_for("data_update", same_key("AAA", "1m"), after=start)
    at = next(i for i, m in enumerate(client.messages) if m is last)
    for chart_id, (_, outputs) in charts.items():
        update = await client.wait_for("indicator_update", same_id(chart_id), after=at + 1)
        assert list(update) == ["type", "id", "data", "annotations", "last_dates"]
        assert update["annotations"] is None
        assert list(update["data"]) == ["date", *(f"{chart_id}-{name}" for name in outputs)]
        assert update["data"]["date"] >= last["data"]["date"]


async def test_unsubscribing_the_key_stops_its_indicator_updates(client: WsClient) -> None:
    chart_id = "ema_stop_BBB"
    data_map = {"close": column("BBB", "1m")}
    await client.send(
        data("BBB", "1m", count=100),
        indicator("talib.overlap.EMA", chart_id, {"timeperiod": 5}, data_map),
    )
    await client.wait_for("indicator_update", same_id(chart_id))
    await client.send(
        {"type": "unsubscribe", "source": "counting", "name": "BBB", "interval": "1m"}
    )
    gone = await client.wait_for("unsubscribed", same_key("BBB", "1m"))
    after = next(i for i, m in enumerate(client.messages) if m is gone)
    await client.send(data("AAA", "1m", count=1))
    for _ in range(3):  # updates of another key keep coming meanwhile
        await client.wait_for("data_update", same_key("AAA", "1m"), after=len(client.messages))
    assert not [m for m in client.of_type("indicator_update", after) if m["id"] == chart_id]


async def test_unsubscribing_stops_an_indicator_streamed_without_a_data_subscription(
    client: WsClient, server: ServerProcess
) -> None:
    """The key streams for another client; this one holds only an indicator over it: its
    ``unsubscribe`` stops the indicator (it was answered ``not_subscribed`` and the updates
    went on)."""
    other = await WsClient.open(server.ws_url)
    try:
        await other.send(data("CCC", "1m", count=10))
        await other.wait_for("data_init", same_key("CCC", "1m"))
        chart_id = "ema_only_CCC"
        data_map = {"close": column("CCC", "1m")}
        await client.send(indicator("talib.overlap.EMA", chart_id, {"timeperiod": 5}, data_map))
        await client.wait_for("indicator_update", same_id(chart_id))
        await client.send(
            {"type": "unsubscribe", "source": "counting", "name": "CCC", "interval": "1m"}
        )
        gone = await client.wait_for("unsubscribed", same_key("CCC", "1m"))
        after = next(i for i, m in enumerate(client.messages) if m is gone)
        for _ in range(3):  # the key keeps streaming to the other client meanwhile
            await other.wait_for("data_update", same_key("CCC", "1m"), after=len(other.messages))
        assert not [m for m in client.of_type("indicator_update", after) if m["id"] == chart_id]
        assert not [m for m in client.of_type("error", after) if m.get("code") == "not_subscribed"]
    finally:
        await other.close()


async def test_indicators_resume_after_a_reconnect_and_resubscribe(server: ServerProcess) -> None:
    chart_id = "sma_again_AAA"
    requests = (
        data("AAA", "1m", count=50),
        indicator("talib.overlap.SMA", chart_id, {"timeperiod": 3}, {"close": column("AAA", "1m")}),
    )
    for _ in range(2):
        ws = await WsClient.open(server.ws_url)
        try:
            await ws.send(*requests)
            await ws.wait_for("indicator_update", same_id(chart_id))
        finally:
            await ws.close()


def shared_computations(server: ServerProcess) -> float:
    text = server.get("/metrics")
    line = next(x for x in text.splitlines() if x.startswith("candlewire_indicator_shared "))
    return float(line.split()[1])


async def test_a_client_that_leaves_drops_its_live_indicators(server: ServerProcess) -> None:
    ws = await WsClient.open(server.ws_url)
    await ws.send(
        data("BBB", "1m", count=50),
        indicator(
            "talib.overlap.WMA", "wma_leave", {"timeperiod": 4}, {"close": column("BBB", "1m")}
        ),
    )
    await ws.wait_for("indicator_update", same_id("wma_leave"))
    assert shared_computations(server) >= 1
    await ws.close()
    await eventually(lambda: shared_computations(server) == 0, what="indicators dropped")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (indicator("talib.nope.NOPE", "x1"), "unknown_indicator"),
        (indicator("talib.overlap.SMA", "x2", {"timeperiod": 0}), "bad_input"),
        (indicator("talib.overlap.SMA", "x3", {"timeperiod": "ten"}), "bad_input"),
        (indicator("talib.overlap.SMA", "x4", {"speed": 3}), "bad_input"),
        (
            indicator("talib.volatility.ATR", "x5", data_map={"close": column("AAA", "1h")}),
            "missing_columns",
        ),
        (
            indicator(
                "talib.overlap.SMA", "x6", {"timeperiod": 500}, {"close": column("AAA", "1d")}
            ),
            "not_enough_history",
        ),
        (indicator("talib.overlap.SMA", "x7", kind="indicator_history"), None),
    ],
)
async def test_a_failing_indicator_request_gets_an_error_and_the_empty_reply(
    client: WsClient, request_: dict[str, Any], code: str | None
) -> None:
    if code is None:  # a history request whose series is fine answers; make it fail
        request_ = request_ | {"inputs": {"timeperiod": -1}}
        code = "bad_input"
    await client.send(request_)
    error = await client.wait_for("error")
    assert error["code"] == code, error
    reply_type = (
        "indicator_history" if request_["type"] == "indicator_history" else "indicator_init"
    )
    empty = await client.wait_for(reply_type, same_id(request_["id"]))
    assert empty["data"] == [] and empty["annotations"] is None
    await client.send({"type": "ping", "id": 1})
    await client.wait_for("pong")


async def test_an_indicator_sent_before_its_data_in_a_frame_is_answered_after_it(
    client: WsClient,
) -> None:
    """Tradiny answers every data item of a frame first: the front end merges the
    indicator's rows into the data table that data_init creates."""
    chart_id = "sma-before-data"
    mark = len(client.messages)
    await client.send(
        indicator("talib.overlap.SMA", chart_id, {"timeperiod": 5}, stream=False),
        data("AAA", stream=False),
    )
    await client.wait_for("indicator_init", same_id(chart_id), after=mark)
    kinds = [m["type"] for m in client.messages[mark:]]
    assert kinds.index("data_init") < kinds.index("indicator_init"), kinds


async def test_a_slow_user_indicator_is_answered_off_the_loop_and_not_streamed(
    server: ServerProcess, client: WsClient
) -> None:
    """Its calc ran on the hub's loop: one of 8 s froze every client for good. Its answer
    is computed on a thread (the hub answers others meanwhile); a live update over the
    budget stops its live updates (and one whose live updates would surely take as long is
    not streamed at all): ``indicator_failed`` says so."""
    other = await WsClient.open(server.ws_url)
    try:
        chart_id = "slow-mid"
        bars = {"high": column("AAA", "1h", "high"), "low": column("AAA", "1h", "low")}
        await client.send(data("AAA"), indicator("mine.Slow", chart_id, data_map=bars))
        started = time.monotonic()
        await other.send({"type": "ping", "id": "during"})
        await other.wait_for("pong")
        assert time.monotonic() - started < 0.5  # not behind the 0.6 s calc
        init = await client.wait_for("indicator_init", same_id(chart_id))
        assert init["data"]
        # its first live update (about 0.6 s, a bounded tail) runs over the budget: stopped
        refused = await client.wait_for("error", lambda m: m.get("code") == "indicator_failed")
        assert "stopped" in refused["message"] or "not streamed" in refused["message"]
        assert refused["request"]["id"] == chart_id
        mark = len(client.messages)
        await client.wait_for("data_update", after=mark)  # the chart streams on
        await client.wait_for("data_update", after=len(client.messages))
        updates = [m for m in client.messages[mark:] if m.get("type") == "indicator_update"]
        assert not [m for m in updates if m.get("id") == chart_id]
    finally:
        await other.close()


async def test_an_indicator_queued_behind_slow_ones_is_still_streamed(
    server: ServerProcess, client: WsClient
) -> None:
    """Whether an answer shows that live updates would be too slow was judged from the
    wall time of the whole answer, its wait for a free worker thread included: under load
    (a soak: 83 of them) an RSI was answered but not streamed. Only the computation's own
    time counts now."""
    bars = {"high": column("BBB", "1h", "high"), "low": column("BBB", "1h", "low")}
    others = [await WsClient.open(server.ws_url) for _ in range(12)]
    try:
        await client.send(data("BBB"))
        await client.wait_for("data_init", same_key("BBB", "1h"))
        for i, other in enumerate(others):  # each socket's answers run at once: 12 threads
            await other.send(indicator("mine.Slow", f"q{i}", data_map=bars, stream=False))
        chart_id = "queued-rsi"
        close = {"close": column("BBB", "1h")}
        await client.send(
            indicator("talib.momentum.RSI", chart_id, {"timeperiod": 14}, close, count=10)
        )
        await client.wait_for("indicator_init", same_id(chart_id), timeout=30)
        mark = len(client.messages)
        await client.wait_for("indicator_update", same_id(chart_id), timeout=30, after=mark)
        refused = [
            m
            for m in client.messages
            if m.get("type") == "error" and (m.get("request") or {}).get("id") == chart_id
        ]
        assert refused == []
    finally:
        for other in others:
            await other.close()


def _column_of(source: str, name: str, interval: str) -> dict[str, dict[str, str]]:
    key = f"{source}-{name}-{interval}"
    return {
        "close": {
            "source": source,
            "name": name,
            "interval": interval,
            "value": f"{key}-close",
            "dataKey": "close",
        }
    }


@pytest.mark.parametrize("name", ["rsi", "macd", "adx", "sum"])
async def test_the_smallest_input_the_catalogue_offers_is_computed(
    client: WsClient, name: str
) -> None:
    """The catalogue's ``min`` is the range the server checks: a value it offers must not be
    refused by TA-Lib (period 1 was offered, and refused with TA-Lib's "out of range")."""
    mark = len(client.messages)
    await client.send({"type": "search_indicators", "search": name})
    row = (await client.wait_for("search_indicators_done", after=mark))["results"][0]
    specs = [spec for spec in row["details"]["inputs"] if spec["type"] == "int"]
    inputs = {spec["name"]: spec["min"] for spec in specs}
    data_map = {c: column("AAA", "1h", c) for c in row["details"]["columns"]}
    chart_id = f"smallest-{name}"
    mark = len(client.messages)
    await client.send(indicator(row["id"], chart_id, inputs, data_map, count=5, stream=False))
    reply = await client.wait_for("indicator_init", same_id(chart_id), after=mark)
    assert reply["data"], [m for m in client.messages[mark:] if m["type"] == "error"]
    # a period of 1, under the offered range: refused by our own check, which names it
    period = specs[0]["name"]
    below = f"{chart_id}-below"
    await client.send(indicator(row["id"], below, {**inputs, period: 1}, data_map, count=5))
    error = await client.wait_for("error", lambda m: m["request"]["id"] == below, after=mark)
    assert error["code"] == "bad_input", error
    assert f"{period!r}: 1 is out of range [2, 100000]" in error["message"], error


@pytest.mark.parametrize(("name", "real"), [("MAMA", "fastlimit"), ("T3", "vfactor")])
async def test_the_range_of_a_real_input_is_the_one_talib_takes(
    client: WsClient, name: str, real: str
) -> None:
    """MAMA's limits must be within 0.01 and 0.99, T3's volume factor within 0 and 1: the
    catalogue offered -1e9 to 1e9, and a value TA-Lib refused got its bare "MAMA: inputs
    {...} out of range", naming neither the input nor its range."""
    mark = len(client.messages)
    await client.send({"type": "search_indicators", "search": name})
    row = (await client.wait_for("search_indicators_done", after=mark))["results"][0]
    spec = next(spec for spec in row["details"]["inputs"] if spec["name"] == real)
    for end in ("min", "max"):
        chart_id = f"{name}-{real}-{end}"
        await client.send(indicator(row["id"], chart_id, {real: spec[end]}, count=5, stream=False))
        reply = await client.wait_for("indicator_init", same_id(chart_id), after=mark)
        assert reply["data"], [m for m in client.messages[mark:] if m["type"] == "error"]
    past = f"{name}-{real}-past"
    await client.send(indicator(row["id"], past, {real: spec["max"] + 0.5}, count=5))
    error = await client.wait_for("error", lambda m: m["request"]["id"] == past, after=mark)
    assert error["code"] == "bad_input", error
    assert f"input {real!r}: " in error["message"], error
    assert f"out of range [{spec['min']:g}, {spec['max']:g}]" in error["message"], error


async def test_an_indicator_without_a_bounded_warm_up_loads_past_a_long_period(
    client: WsClient,
) -> None:
    """KAMA depends on every bar before (its warm-up is up to 5,000 bars, like SAR's), and its
    period may be longer: the warm-up then reaches past the period, as an EMA's does, and
    the rows have values (with 5,000 bars it was not_enough_history, on 1m bars enough)."""
    chart_id = "kama5500_AAA_1m"
    data_map = {"close": column("AAA", "1m")}
    mark = len(client.messages)
    await client.send(
        indicator("talib.overlap.KAMA", chart_id, {"timeperiod": 5500}, data_map, count=10,
                  stream=False)
    )  # fmt: skip
    reply = await client.wait_for("indicator_init", same_id(chart_id), after=mark, timeout=20)
    errors = [m for m in client.messages[mark:] if m["type"] == "error"]
    assert not errors, errors
    assert len(reply["data"]) == 10
    assert all(value is not None for value in values(reply, "KAMA").values())


async def test_a_chart_id_too_long_is_refused_with_the_limit_named(client: WsClient) -> None:
    """A 1001-character id was refused as "'id' must be a non-empty string", which it is."""
    chart_id = "i" * 1001
    await client.send(indicator("talib.overlap.SMA", chart_id, count=5))
    error = await client.wait_for("error", lambda m: m.get("code") == "invalid_field")
    assert "at most 1000 characters" in error["message"], error
    empty = await client.wait_for("indicator_init", same_id(chart_id))
    assert empty["data"] == []


@pytest.mark.parametrize(
    ("data_map", "code"),
    [
        (_column_of("counting", "NOPE", "1h"), "unknown_symbol"),
        (_column_of("nowhere", "AAA", "1h"), "unknown_source"),
        (_column_of("counting", "AAA", "7m"), "unknown_interval"),
    ],
)
async def test_an_indicator_over_a_series_that_cannot_be_served_is_refused_like_data(
    server: ServerProcess, client: WsClient, data_map: dict[str, Any], code: str
) -> None:
    """The same checks and codes as ``data``, before any provider is asked."""
    before = history_calls(server)
    chart_id = f"bad-{code}"
    await client.send(indicator("talib.overlap.SMA", chart_id, data_map=data_map))
    error = await client.wait_for("error", lambda m: m.get("code") == code)
    assert error["request"]["id"] == chart_id
    empty = await client.wait_for("indicator_init", same_id(chart_id))
    assert empty["data"] == []
    await client.send({"type": "ping", "id": 2})
    await client.wait_for("pong")
    assert history_calls(server) == before


@pytest.mark.parametrize(
    ("extra", "kind", "code"),
    [
        ({"count": 10_001}, "indicator", "count_out_of_range"),
        (
            {"range": ["2026-01-01 00:00:00"], "end": "garbage"},
            "indicator_history",
            "invalid_field",
        ),
        ({"range": ["2026-01-01 00:00:00"], "end": 7}, "indicator_history", "invalid_field"),
        (
            {"range": ["2026-01-02 00:00:00"], "end": "2026-01-01 00:00:00"},
            "indicator_history",
            "invalid_field",
        ),
    ],
)
async def test_a_count_past_max_count_or_an_unreadable_end_is_refused(
    client: WsClient, extra: dict[str, Any], kind: str, code: str
) -> None:
    chart_id = f"bad-{kind}-{len(str(extra))}"
    await client.send(indicator("talib.overlap.SMA", chart_id, kind=kind, **extra))
    error = await client.wait_for("error", lambda m: m.get("request", {}).get("id") == chart_id)
    assert error["code"] == code, error
    reply = "indicator_init" if kind == "indicator" else kind
    empty = await client.wait_for(reply, same_id(chart_id))
    assert empty["data"] == []


async def test_a_count_of_max_count_has_a_value_in_every_row_past_the_warm_up_it_loaded(
    client: WsClient,
) -> None:
    """The warm-up is loaded on top of ``count`` rows (the counting source's 1m history is
    long enough), so no row of the answer is a warm-up ``null``."""
    chart_id = "sma30-full"
    await client.send(
        indicator(
            "talib.overlap.SMA",
            chart_id,
            {"timeperiod": 30},
            {"close": column("AAA", "1m")},
            count=10_000,
            stream=False,
        )
    )
    reply = await client.wait_for("indicator_init", same_id(chart_id), timeout=30)
    got = values(reply, "SMA")
    assert len(got) == 10_000
    assert all(value is not None for value in got.values())


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("throttled")
    with populated_server(
        tmp, PROVIDERS="counting", INDICATOR_UPDATE_SECONDS="0.5", CANDLEWIRE_TEST_PERIOD="0.05"
    ) as running:
        yield running


async def test_indicator_update_seconds_bounds_the_update_rate_per_series(
    throttled: ServerProcess,
) -> None:
    chart_id = "sma_throttled_AAA"
    ws = await WsClient.open(throttled.ws_url)
    try:
        await ws.send(
            data("AAA", "1m", count=50),
            indicator(
                "talib.overlap.SMA", chart_id, {"timeperiod": 3}, {"close": column("AAA", "1m")}
            ),
        )
        await ws.wait_for("indicator_init", same_id(chart_id))
        start = len(ws.messages)
        await ws.wait_for("indicator_update", same_id(chart_id), after=start)
        first = len(ws.messages)
        began = time.monotonic()
        # About 2 s of updates (20/s) on an idle machine, longer on a loaded one: at most one
        # indicator_update per 0.5 s of the time they took, plus edges.
        for _ in range(40):
            await ws.wait_for("data_update", same_key("AAA", "1m"), after=len(ws.messages))
        took = time.monotonic() - began
        data_updates = len(ws.of_type("data_update", first))
        indicator_updates = len(ws.of_type("indicator_update", first))
        assert data_updates >= 40
        most = int(took / 0.5) + 3
        assert 1 <= indicator_updates <= most, (data_updates, indicator_updates, took)
    finally:
        await ws.close()
