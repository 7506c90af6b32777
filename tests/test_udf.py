"""TradingView UDF under /udf: pure helpers, then the real server driven like the adapter."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from backend.api import udf, udf_quotes
from backend.model.bars import Bar
from tests.harness import ServerProcess, base_env, populate, seconds, until

DAY = 86_400
ROW = {
    "source": "binance",
    "name": "BTCUSDT",
    "name_label": "Bitcoin - TetherUS",
    "type": "candlestick",
    "categories": ["Crypto"],
    "intervals": ["1m", "5m", "1h", "1d", "1w", "1M"],
    "outputs": [],
}

# ---------------------------------------------------------------- pure helpers


def test_a_quote_is_the_days_figures_moved_by_a_fresher_streamed_bar() -> None:
    yesterday: Bar = (0, 10.0, 11.0, 9.0, 10.0, 500.0)
    today: Bar = (DAY, 10.0, 10.5, 9.9, 10.2, 120.0)
    values = udf_quotes.quote_values(ROW, [yesterday, today])
    assert values is not None
    assert values["lp"] == 10.2 and values["prev_close_price"] == 10.0
    assert values["ch"] == 0.2 and values["chp"] == 2.0  # rounded to the prices' decimals
    assert (values["open_price"], values["high_price"], values["low_price"]) == (10.0, 10.5, 9.9)
    assert values["volume"] == 120.0
    assert values["original_name"] == "binance:BTCUSDT"
    live: Bar = (DAY + 3600, 10.6, 10.7, 10.6, 10.7, 3.0)  # a streamed hour, newer than the day
    moved = udf_quotes.quote_values(ROW, [yesterday, today], live)
    assert moved is not None
    assert moved["lp"] == 10.7 and moved["high_price"] == 10.7 and moved["low_price"] == 9.9
    assert moved["ch"] == 0.7 and moved["chp"] == 7.0
    stale: Bar = (0, 1.0, 1.0, 1.0, 1.0, 1.0)  # a bar of an older day moves nothing
    assert udf_quotes.quote_values(ROW, [yesterday, today], stale) == values
    first_day = udf_quotes.quote_values(ROW, [today])
    assert first_day is not None and "ch" not in first_day and "prev_close_price" not in first_day
    assert udf_quotes.quote_values(ROW, []) is None
    assert udf_quotes.quote_values(ROW, [(DAY, None, None, None, None, None)]) is None


@pytest.mark.parametrize(
    ("resolution", "interval"),
    [
        ("1", "1m"), ("3", "3m"), ("5", "5m"), ("15", "15m"), ("30", "30m"), ("60", "1h"),
        ("120", "2h"), ("240", "4h"), ("360", "6h"), ("480", "8h"), ("720", "12h"),
        ("1D", "1d"), ("D", "1d"), ("1W", "1w"), ("W", "1w"), ("1M", "1M"), ("M", "1M"),
    ],
)  # fmt: skip
def test_every_resolution_maps_to_our_interval(resolution: str, interval: str) -> None:
    assert udf.to_interval(resolution) == interval


@pytest.mark.parametrize("resolution", ["", "2", "90", "1S", "2D", "1h", "d", "m"])
def test_other_resolutions_are_not_served(resolution: str) -> None:
    assert udf.to_interval(resolution) is None


def test_config_resolutions_round_trip() -> None:
    assert len(udf.SUPPORTED_RESOLUTIONS) == 14
    assert all(udf.to_interval(r) is not None for r in udf.SUPPORTED_RESOLUTIONS)


def test_daily_bars_are_stamped_at_utc_midnight_of_their_trading_day() -> None:
    midnight = 20_000 * DAY
    assert udf.align_time(midnight, "1d") == midnight
    assert udf.align_time(midnight + 4 * 3600, "1d") == midnight  # New York midnight (EDT)
    assert udf.align_time(midnight - 9 * 3600, "1d") == midnight  # Tokyo midnight
    assert udf.align_time(midnight + 4 * 3600, "1h") == midnight + 4 * 3600


def test_history_body_is_column_wise_and_fills_missing_prices_from_close() -> None:
    bars: list[Bar] = [
        (60, 1.0, 2.0, 0.5, 1.5, 10.0),
        (120, None, None, None, 1.7, None),
        (180, 1.0, 1.0, 1.0, None, 3.0),  # no close: skipped
    ]
    body = udf.history_body(bars, "1m", "candlestick")
    assert body == {
        "s": "ok",
        "t": [60, 120],
        "o": [1.0, 1.7],
        "h": [2.0, 1.7],
        "l": [0.5, 1.7],
        "c": [1.5, 1.7],
        "v": [10.0, 0.0],
    }
    line = udf.history_body([(60, 3.0, 3.0, 3.0, 3.0, None)], "1m", "line")
    assert "v" not in line


def test_no_data_names_the_next_older_bar_in_milliseconds() -> None:
    assert udf.no_data(None) == {"s": "no_data"}
    assert udf.no_data((1_700_000_000, 1.0, 1.0, 1.0, 1.0, 1.0)) == {
        "s": "no_data",
        "nextTime": 1_700_000_000_000,
    }


def test_next_time_names_the_older_bar_as_history_stamps_it() -> None:
    """A New York daily bar opens at 04:00 UTC and ``history`` stamps it 00:00 UTC of its
    day; ``nextTime`` named 04:00, a time no bar of the answer ever has."""
    new_york_day = 20_000 * DAY + 4 * 3600
    body = udf.no_data((new_york_day, 1.0, 1.0, 1.0, 1.0, 1.0), "1d")
    assert body == {"s": "no_data", "nextTime": 20_000 * DAY * 1000}
    assert udf.no_data((new_york_day, 1.0, 1.0, 1.0, 1.0, 1.0), "1h")["nextTime"] == (
        new_york_day * 1000
    )


def test_until_now_reaches_the_end_of_the_bar_that_holds_now() -> None:
    """The library's first request asks up to the end of the current bar; January has 31
    days, longer than a nominal month."""
    new_year = 1_798_761_600  # 2027-01-01 00:00 UTC
    wall = new_year + 30
    assert udf.until_now(new_year + 31 * DAY, wall, "1M")  # 2027-02-01
    assert udf.until_now(new_year + DAY, wall, "1d")
    assert udf.until_now(new_year + 3600, wall, "1h") and udf.until_now(wall - 60, wall, "1h")
    assert not udf.until_now(new_year + 2 * 3600, wall, "1h")  # two bars ahead: a range
    assert not udf.until_now(wall - 3600, wall, "1h")  # scrolling back


def test_range_count_covers_the_range_within_limits() -> None:
    assert udf.range_count(0, 3600, "1m", 10_000) == 61
    assert udf.range_count(0, 10 * DAY, "1m", 500) == 500
    assert udf.range_count(100, 50, "1h", 500) == 1


def test_pricescale_keeps_about_six_significant_digits() -> None:
    assert udf.pricescale(84_000.0) == 100
    assert udf.pricescale(1.2345) == 10_000
    assert udf.pricescale(0.000123) == 10**8
    assert udf.pricescale(None) == udf.DEFAULT_PRICESCALE


def test_the_precision_a_row_states_sets_the_pricescale() -> None:
    """A Binance row states its tick size's decimals (``price_precision``): 104.9 quoted to
    0.00001 is pricescale 100000, not the 100 its bars' decimals would give."""
    bar = (0, 104.9, 105.0, 104.8, 104.9, 12.5)
    assert udf.symbol_info(ROW | {"price_precision": 5}, [bar])["pricescale"] == 100_000
    assert udf.symbol_info(ROW | {"precision": 3}, [bar])["pricescale"] == 1_000
    assert udf.symbol_info(ROW | {"precision": 18}, [bar])["pricescale"] == 10**16
    assert udf.symbol_info(ROW, [bar])["pricescale"] == 100  # none stated: the bars


def test_symbol_info_describes_the_row() -> None:
    info = udf.symbol_info(ROW, [(0, 83_000.0, 84_500.0, 82_000.0, 84_000.0, 12.5)])
    assert info["ticker"] == "binance:BTCUSDT"
    assert info["name"] == "BTCUSDT"
    assert info["description"] == "Bitcoin - TetherUS"
    assert info["type"] == "crypto"
    assert info["supported_resolutions"] == ["1", "5", "60", "1D", "1W", "1M"]
    assert info["intraday_multipliers"] == ["1", "5", "60"]
    assert info["has_intraday"] and info["has_daily"] and info["has_weekly_and_monthly"]
    assert info["timezone"] == "Etc/UTC"
    assert info["pricescale"] == 100
    assert info["volume_precision"] == 1


@pytest.mark.parametrize(
    ("categories", "kind", "expected"),
    [
        (["Crypto", "USDT"], "candlestick", "crypto"),
        (["Stocks"], "candlestick", "stock"),
        (["FX"], "candlestick", "forex"),
        (["Indices"], "candlestick", "index"),
        (["Options"], "candlestick", "option"),
        (["CSV"], "line", "economic"),
        (["CSV"], "candlestick", "undefined"),
        ([], "candlestick", "undefined"),
    ],
)
def test_the_udf_type_is_the_instrument_type_never_the_source(
    categories: list[str], kind: str, expected: str
) -> None:
    assert udf.symbol_type({**ROW, "categories": categories, "type": kind}) == expected


@pytest.mark.parametrize(
    ("volumes", "precision"),
    [([1.0, 250.0, 3e6], 0), ([1.5, 2.0], 1), ([0.001, 12.25], 3), ([1 / 3], 8), ([], 0),
     ([None, float("nan")], 0)],
)  # fmt: skip
def test_volume_precision_is_the_decimals_the_volumes_use(
    volumes: list[float | None], precision: int
) -> None:
    assert udf.volume_precision(volumes) == precision


def test_pick_exact_prefers_same_case_then_enabled_providers() -> None:
    def result(source: str, name: str) -> dict[str, Any]:
        return {"id": f"{source}-{name}", "name": name, "details": {"source": source, "name": name}}

    results = [result("old", "AAA"), result("counting", "AAA"), result("x", "aaa")]
    assert udf.pick_exact("AAA", results, ["counting"]) == {"source": "counting", "name": "AAA"}
    assert udf.pick_exact("aaa", results, ["counting"]) == {"source": "x", "name": "aaa"}
    assert udf.pick_exact("Aaa", results, ["counting"]) == {"source": "counting", "name": "AAA"}
    assert udf.pick_exact("AA", results, ["counting"]) is None


def test_canonical_source_ignores_case() -> None:
    assert udf.canonical_source("COUNTING", ["csv", "counting"]) == "counting"
    assert udf.canonical_source("NYSE", ["csv"]) == "NYSE"


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("udf")
    env = base_env(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5", STREAM_LINGER_SECONDS="0.5")
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def fetch(
    server: ServerProcess, path: str, origin: str | None = None, **params: object
) -> tuple[int, dict[str, str], Any]:
    """GET like the adapter: ``fetch(url + "?" + params)``, body parsed whatever the status."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = server.url + path + ("?" + query if query else "")
    request = urllib.request.Request(url, headers={"Origin": origin} if origin else {})
    try:
        with urllib.request.urlopen(request, timeout=seconds(30)) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers), exc.read()
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def udf_get(server: ServerProcess, endpoint: str, **params: object) -> Any:
    status, _, body = fetch(server, f"/udf/{endpoint}", **params)
    assert status == 200, body
    return body


def test_config_turns_search_on_and_group_requests_off(server: ServerProcess) -> None:
    config = udf_get(server, "config")
    assert config["supports_search"] is True
    assert config["supports_group_request"] is False
    assert config["supports_time"] is True
    assert config["supported_resolutions"][:3] == ["1", "3", "5"]
    assert {"value": "counting", "name": "counting", "desc": "counting"} in config["exchanges"]
    assert config["symbols_types"][0] == {"name": "All types", "value": ""}
    # The test provider's rows carry no instrument category: the one real type is "undefined".
    assert [t["value"] for t in config["symbols_types"][1:]] == ["undefined"]


def test_search_with_the_adapters_upper_cased_query(server: ServerProcess) -> None:
    found = udf_get(server, "search", query="AA", type="", exchange="", limit=30)
    assert found[0]["symbol"] == "AAA"
    assert found[0]["ticker"] == "counting:AAA"
    assert found[0]["full_name"] == "counting:AAA"
    assert set(found[0]) == {"symbol", "full_name", "description", "exchange", "ticker", "type"}
    assert len(udf_get(server, "search", query="", limit=2)) == 2
    assert udf_get(server, "search", query="COUNTING:BBB", limit=30)[0]["symbol"] == "BBB"
    assert udf_get(server, "search", query="ZZZNOTHING", limit=30) == []
    assert udf_get(server, "search", query="AAA", exchange="nowhere", limit=30) == []
    assert found[0]["type"] == "undefined"  # not the source name "counting"


def test_search_filters_by_the_types_config_lists(server: ServerProcess) -> None:
    for entry in udf_get(server, "config")["symbols_types"][1:]:
        found = udf_get(server, "search", query="", type=entry["value"], limit=30)
        assert found, entry
        assert {item["type"] for item in found} == {entry["value"]}
    assert udf_get(server, "search", query="", type="stock", limit=30) == []


def test_symbols_gives_a_volume_precision_from_the_data(server: ServerProcess) -> None:
    # The test provider's forming bar has (seconds so far) / 60 as its volume, so its
    # decimals change every second; the closed daily bars hold whole numbers.
    bars = udf_get(server, "history", symbol="AAA", resolution="1D",
                   to=int(time.time()) + 1, countback=50)  # fmt: skip
    assert udf.volume_precision(bars["v"][:-1]) == 0
    precision = udf_get(server, "symbols", symbol="counting:AAA")["volume_precision"]
    assert isinstance(precision, int) and 0 <= precision <= udf.MAX_VOLUME_PRECISION


def test_history_without_from_or_countback_or_to_is_an_error(server: ServerProcess) -> None:
    now = int(time.time())
    for params in ({}, {"to": now}, {"from": now - 3600}, {"countback": 5}):
        body = udf_get(server, "history", symbol="AAA", resolution="60", **params)
        assert body["s"] == "error", params


@pytest.mark.parametrize("symbol", ["counting:AAA", "AAA", "COUNTING:AAA", "aaa"])
def test_symbols_resolves_source_name_and_bare_names(server: ServerProcess, symbol: str) -> None:
    info = udf_get(server, "symbols", symbol=symbol)
    assert "s" not in info
    assert info["ticker"] == "counting:AAA"
    assert info["name"] == "AAA"
    assert info["session"] == "24x7"
    assert "1D" in info["supported_resolutions"]
    assert "1W" not in info["supported_resolutions"]  # the test provider stops at 1d
    assert info["has_weekly_and_monthly"] is False
    assert isinstance(info["pricescale"], int)


def test_unknown_symbols_and_bad_requests_are_json_errors(server: ServerProcess) -> None:
    assert udf_get(server, "symbols", symbol="counting:NOPE")["s"] == "error"
    now = int(time.time())
    for params in (
        {"symbol": "NOPE", "resolution": "60", "to": now, "countback": 5},
        {"symbol": "AAA", "resolution": "7", "to": now, "countback": 5},
        {"symbol": "AAA", "resolution": "1W", "to": now, "countback": 5},  # not offered
        {"symbol": "AAA", "resolution": "60", "to": "soon", "countback": 5},
    ):
        body = udf_get(server, "history", **params)
        assert body["s"] == "error", params
        assert body["errmsg"]


def test_history_countback_returns_that_many_bars_before_to(server: ServerProcess) -> None:
    now = int(time.time())
    to = now - now % 3600  # exclusive: the bar opening at `to` is left out
    body = udf_get(server, "history", symbol="counting:AAA", resolution="60",
                   **{"from": to - 3 * 3600}, to=to, countback=48)  # fmt: skip
    assert body["s"] == "ok"
    assert len(body["t"]) == 48  # countback wins over from
    assert body["t"] == sorted(body["t"])
    assert body["t"][-1] == to - 3600
    assert all(t % 3600 == 0 for t in body["t"])
    assert all(len(body[k]) == 48 for k in "ohlcv")
    assert all(isinstance(c, float) for c in body["c"])


def test_history_range_without_countback(server: ServerProcess) -> None:
    now = int(time.time())
    to = now - now % 3600
    body = udf_get(server, "history", symbol="AAA", resolution="60",
                   **{"from": to - 10 * 3600}, to=to)  # fmt: skip
    assert body["t"] == [to - 10 * 3600 + i * 3600 for i in range(10)]


def test_history_daily_bars_are_at_midnight(server: ServerProcess) -> None:
    body = udf_get(server, "history", symbol="AAA", resolution="1D",
                   to=int(time.time()) + 1, countback=5)  # fmt: skip
    assert len(body["t"]) == 5
    assert all(t % DAY == 0 for t in body["t"])


def test_history_before_the_first_bar_is_no_data_without_next_time(
    server: ServerProcess,
) -> None:
    long_ago = int(time.time()) - 60 * DAY  # the test provider starts 30 days ago
    for params in ({"countback": 10}, {"from": long_ago - 10 * 3600}):
        body = udf_get(server, "history", symbol="AAA", resolution="60", to=long_ago, **params)
        assert body == {"s": "no_data"}


def test_history_of_an_empty_range_with_older_data_names_next_time(
    server: ServerProcess,
) -> None:
    now = int(time.time())
    body = udf_get(server, "history", symbol="AAA", resolution="60",
                   **{"from": now + 2 * DAY}, to=now + 3 * DAY)  # fmt: skip
    assert body["s"] == "no_data"
    assert body["nextTime"] == (now - now % 3600) * 1000  # the forming bar, in ms


def test_time_is_a_bare_number_of_seconds(server: ServerProcess) -> None:
    value = udf_get(server, "time")
    assert isinstance(value, int)
    assert abs(value - time.time()) < 5


def test_udf_answers_cors_for_any_page_and_for_workspace(server: ServerProcess) -> None:
    _, headers, _ = fetch(server, "/udf/config", origin="https://charts.example.com")
    assert headers["access-control-allow-origin"] == "*"
    _, headers, _ = fetch(server, "/udf/time", origin="https://pro.openbb.co")
    assert headers["access-control-allow-origin"] == "https://pro.openbb.co"
    assert headers["access-control-allow-credentials"] == "true"


@pytest.mark.slow
def test_polling_sees_the_forming_bar_move(server: ServerProcess) -> None:
    """The adapter's DataPulse polls `to = now`, `from = to - 10 bars`; bars must move."""

    def poll(resolution: str, step: int) -> dict[str, Any]:
        to = int(time.time())
        body: dict[str, Any] = udf_get(
            server, "history", symbol="AAA", resolution=resolution,
            **{"from": to - 10 * step}, to=to)  # fmt: skip
        assert body["s"] == "ok"
        last = to - 1  # `to` is exclusive
        assert body["t"][-1] == last - last % step  # the forming bar is included
        return body

    def moved(resolution: str, step: int, before: dict[str, Any]) -> bool:
        after = poll(resolution, step)
        if after["t"][-1] == before["t"][-1]:  # the same forming bar: it grows
            return bool(after["v"][-1] > before["v"][-1])
        assert after["t"][-1] == before["t"][-1] + step  # a new bar opened: the next one
        return True

    for resolution, step in (("1", 60), ("60", 3600)):
        before = poll(resolution, step)
        # polled, not one look 1.5 s later: the tail is asked for again after a second, and
        # on a loaded machine the provider's next tick may come later than that
        what = f"the forming {resolution} bar moving"
        until(lambda: moved(resolution, step, before), 10, what)  # noqa: B023 - used at once


@pytest.mark.parametrize(
    ("prices", "scale"),
    [([102.595, 102.6, 101.0], 1000), ([4.5, 4.25], 100), ([4.5], 100), ([4500.0, 4510.0], 100),
     ([-0.891, 0.5], 1000), ([0.00001234], 10**8), ([None, 62_094.14], 100)],
)  # fmt: skip
def test_pricescale_is_ten_to_the_decimals_the_prices_are_written_with(
    prices: list[float | None], scale: int
) -> None:
    assert udf.pricescale(1.0, prices) == scale


def test_pricescale_of_computed_prices_keeps_about_six_significant_digits() -> None:
    assert udf.pricescale(99.1032, [99.10320910305694, 100.0]) == 1000
    assert udf.pricescale(84_000.0, [1 / 3]) == 100


def test_symbol_info_reads_the_closed_bars_not_a_partial_forming_one() -> None:
    closed = [(0, 102.5, 102.595, 102.4, 102.59, 1000.0), (60, 102.59, 102.6, 102.5, 102.55, 7.0)]
    forming = (120, 102.55, 102.56, 102.5, 102.5531234567, 4232.5)  # a replay's partial bar
    info = udf.symbol_info(ROW, [*closed, forming])
    assert info["pricescale"] == 1000
    assert info["volume_precision"] == 0


def test_symbols_of_a_provider_that_does_not_answer_history_is_prompt(
    server: ServerProcess,
) -> None:
    """resolveSymbol waited HISTORY_TIMEOUT (30 s by default) when the provider did not
    answer the daily bars read for pricescale: a blank chart for that long before getBars
    was even asked. The symbol's identity does not wait on its provider for long."""
    started = time.monotonic()
    info = udf_get(server, "symbols", symbol="counting:HANG")
    took = time.monotonic() - started
    assert info["ticker"] == "counting:HANG"
    assert info["pricescale"] == udf.DEFAULT_PRICESCALE
    assert took < udf.SYMBOL_INFO_WAIT + seconds(1.5), took


def test_a_quote_of_a_value_below_zero_keeps_the_sign_of_its_change() -> None:
    """chp divided by a negative previous close showed a fall as a rise (+267% for -8.15
    after -2.22, a CSV rate; pandas-dev/pandas#56618): it is over the close's absolute
    value, as the OpenBB live grid's change_percent."""
    rate = dict(ROW, type="line")
    before: Bar = (0, None, None, None, -2.22, None)
    fell: Bar = (DAY, None, None, None, -8.15, None)
    values = udf_quotes.quote_values(rate, [before, fell])
    assert values is not None
    assert values["ch"] == -5.93 and values["chp"] == -267.12
    rose = udf_quotes.quote_values(rate, [fell, before])
    assert rose is not None and rose["ch"] == 5.93 and rose["chp"] == 72.76
