"""Binance payloads -> bars and dataset rows: pure functions on recorded JSON fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backend.data_providers.binance import rest
from backend.data_providers.binance.parse import (
    ControlReply,
    ServerShutdown,
    StreamData,
    asset_name,
    dataset_row,
    kline_update,
    parse_query_time,
    parse_stream_name,
    price_precision,
    rest_base,
    row_to_bar,
    rows_to_bars,
    stream_base,
    stream_message,
    stream_name,
)
from backend.model import intervals

FIXTURES = Path(__file__).parent / "fixtures" / "binance"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_a_rest_kline_row_becomes_a_bar_dated_by_its_open_time_with_float_values() -> None:
    rows = load("klines_BTCUSDT_1h.json")
    bar = row_to_bar(rows[0])
    assert bar == (1741168800, 60653.65, 60831.01, 59905.18, 60022.65, 120.02599)
    assert intervals.format_date(bar[0]) == "2025-03-05 10:00:00"
    assert all(isinstance(v, float) for v in bar[1:])


def test_hourly_rows_are_one_hour_apart_and_keep_their_order() -> None:
    bars = [row_to_bar(row) for row in load("klines_BTCUSDT_1h.json")]
    assert [b[0] for b in bars] == [1741168800, 1741172400, 1741176000]


def test_weekly_rows_open_on_monday_and_monthly_rows_on_the_first_at_midnight_utc() -> None:
    weeks = [intervals.format_date(row_to_bar(r)[0]) for r in load("klines_ETHBTC_1w.json")]
    months = [intervals.format_date(row_to_bar(r)[0]) for r in load("klines_BTCUSDT_1M.json")]
    assert weeks == ["2025-02-24 00:00:00", "2025-03-03 00:00:00"]
    assert months == ["2025-02-01 00:00:00", "2025-03-01 00:00:00"]


def test_rows_outside_the_window_are_left_out_and_the_end_is_inclusive() -> None:
    rows = load("klines_BTCUSDT_1h.json")
    assert [b[0] for b in rows_to_bars(rows, 1741172400, 1741172400)] == [1741172400]
    assert [b[0] for b in rows_to_bars(rows, 1741170000, None)] == [1741172400, 1741176000]
    assert rows_to_bars(rows, 1741180000, None) == []


def test_a_forming_kline_event_is_not_final_and_a_closed_one_is() -> None:
    forming = kline_update(load("stream_kline_forming.json")["data"])
    closed = kline_update(load("stream_kline_closed.json")["data"])
    assert forming is not None and closed is not None
    assert (forming.symbol, forming.interval, forming.final) == ("BTCUSDT", "1m", False)
    assert closed.final is True
    assert closed.bar == (1741177980, 60061.47, 60113.14, 59904.21, 60035.8, 3.14455)
    assert forming.bar[0] == closed.bar[0] + 60


def test_the_documented_kline_event_parses_to_its_open_time_and_prices() -> None:
    update = kline_update(load("stream_kline_docs.json")["data"])
    assert update is not None
    assert update.bar == (1772370000, 84210.5, 84400.0, 84100.1, 84333.2, 512.7)
    assert (update.interval, update.final) == ("1h", False)


def test_a_kline_event_and_the_rest_row_of_the_same_closed_bar_give_the_same_bar() -> None:
    event = load("stream_kline_closed.json")["data"]
    k = event["k"]
    row = [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"]]
    update = kline_update(event)
    assert update is not None
    assert update.bar == row_to_bar(row)


def test_events_that_are_not_klines_or_are_malformed_give_no_update() -> None:
    assert kline_update(load("stream_control.json")["other_event"]["data"]) is None
    assert kline_update({"e": "kline", "k": {"t": 1}}) is None
    assert kline_update({"e": "kline", "k": "x"}) is None


def test_combined_stream_frames_are_classified() -> None:
    control = load("stream_control.json")
    data = stream_message(load("stream_kline_forming.json"))
    assert isinstance(data, StreamData) and data.stream == "btcusdt@kline_1m"
    assert stream_message(control["subscribe_reply"]) == ControlReply(1)
    assert stream_message(control["list_reply"]) == ControlReply(2)
    error = stream_message(control["error_reply"])
    assert isinstance(error, ControlReply) and error.error is not None
    assert "invalid stream name" in error.error
    assert stream_message(control["server_shutdown"]) == ServerShutdown(1741178096789)
    assert stream_message(control["server_shutdown_combined"]) == ServerShutdown(1741178096789)
    assert stream_message([1, 2]) is None
    assert stream_message({"unexpected": True}) is None


def test_a_refusal_in_the_nested_error_form_is_a_refusal_too() -> None:
    """Binance's stream server answers a bad SUBSCRIBE with ``{"error": {...}, "id"}``; the
    docs' table shows the flat ``{"code", "msg", "id"}``: both are refusals."""
    nested = {"error": {"code": 2, "msg": "Invalid request: unknown stream"}, "id": 7}
    assert stream_message(nested) == ControlReply(7, "2 Invalid request: unknown stream")
    flat = {"code": 2, "msg": "Invalid request", "id": 8}
    assert stream_message(flat) == ControlReply(8, "2 Invalid request")


def test_a_kline_event_without_the_combined_wrapper_is_still_its_streams_data() -> None:
    wrapped = load("stream_kline_forming.json")
    bare = stream_message(wrapped["data"])
    assert isinstance(bare, StreamData)
    assert bare.stream == "btcusdt@kline_1m" and bare.data == wrapped["data"]
    assert stream_message({"e": "kline", "k": {"s": 5}}) is None


def test_stream_names_are_lower_case_symbols_and_keep_the_month_interval_upper_case() -> None:
    assert stream_name("BTCUSDT", "1m") == "btcusdt@kline_1m"
    assert stream_name("BTCUSDT", "1M") == "btcusdt@kline_1M"
    assert parse_stream_name("btcusdt@kline_1M") == ("BTCUSDT", "1M")
    assert parse_stream_name("btcusdt@trade") is None
    assert parse_stream_name("btcusdt@kline_7m") is None


def test_every_trading_spot_symbol_becomes_a_candlestick_row_with_labels() -> None:
    info = load("exchange_info.json")
    rows = [r for s in info["symbols"] if (r := dataset_row(s)) is not None]
    assert [r["name"] for r in rows] == ["BTCUSDT", "ETHUSDT", "ETHBTC", "BNBUSDT"]  # no BREAK
    btc = rows[0]
    assert btc["source"] == "binance"
    assert btc["name_label"] == "Bitcoin / TetherUS"
    assert btc["source_label"] == "Binance"
    assert btc["type"] == "candlestick"
    assert btc["categories"] == ["Crypto", "USDT"]
    assert btc["intervals"] == list(intervals.INTERVALS)
    assert [o["y_axis"] for o in btc["outputs"]] == ["price"] * 4 + ["volume"]
    assert btc["price_precision"] == 2
    assert rows[2]["name_label"] == "Ethereum / Bitcoin"
    assert rows[2]["price_precision"] == 5


def test_halted_margin_only_and_unknown_assets_are_handled() -> None:
    symbols = load("exchange_info_edge.json")["symbols"]
    rows = {s["symbol"]: dataset_row(s, "bn") for s in symbols}
    assert rows["ETHUPUSDT"] is None  # HALT
    assert rows["BTCUSDC_MARGIN_ONLY"] is None  # not traded on spot
    shib, btcjpy, unknown = rows["SHIBTRY"], rows["BTCJPY"], rows["XYZ9USDC"]
    assert shib is not None and btcjpy is not None and unknown is not None
    assert shib["name_label"] == "Shiba Inu / Turkish Lira"
    assert shib["price_precision"] == 6
    assert shib["source"] == "bn"
    assert btcjpy["price_precision"] == 0
    assert unknown["name_label"] == "XYZ9 / USD Coin"
    assert "price_precision" not in unknown  # no PRICE_FILTER


@pytest.mark.parametrize(
    ("tick", "decimals"),
    [("0.01000000", 2), ("1.00000000", 0), ("10.00000000", 0), ("0.00000001", 8), ("0", None)],
)
def test_price_precision_counts_the_decimals_of_the_tick_size(
    tick: str, decimals: int | None
) -> None:
    assert price_precision(tick) == decimals


def test_unknown_assets_keep_their_ticker_as_name() -> None:
    assert asset_name("BTC") == "Bitcoin"
    assert asset_name("NOPE") == "NOPE"


def test_hook_times_are_utc_and_now_means_no_end() -> None:
    assert parse_query_time("now UTC") is None
    assert parse_query_time("2025-03-05 10:00:00") == 1741168800
    with pytest.raises(ValueError):
        parse_query_time("yesterday")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("inf", 10.0),  # was obeyed: every REST call refused until a restart
        ("nan", 10.0),
        ("soon", 10.0),
        ("1e10", rest.MAX_RETRY_AFTER),  # the recovery timer overflowed
        (None, 10.0),
    ],
)
def test_retry_after_is_a_finite_number_of_seconds_and_at_most_the_longest_ban(
    header: str | None, seconds: float
) -> None:
    response = SimpleNamespace(headers={} if header is None else {"Retry-After": header})
    assert rest._retry_after(response, 10.0) == seconds


@pytest.mark.parametrize(
    ("given", "rest"),
    [
        ("https://api.binance.com/api", "https://api.binance.com/api"),
        ("https://api.binance.com/api/", "https://api.binance.com/api"),
        ("https://api.binance.com", "https://api.binance.com/api"),
        ("https://api.binance.com/", "https://api.binance.com/api"),
        ("https://api.binance.com/api/v3", "https://api.binance.com/api"),
        ("http://127.0.0.1:8080/relay/binance/api", "http://127.0.0.1:8080/relay/binance/api"),
    ],
)
def test_the_rest_base_is_taken_in_our_form_and_in_binances(given: str, rest: str) -> None:
    assert rest_base(given) == rest


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("wss://stream.binance.com:9443/", "wss://stream.binance.com:9443"),
        ("wss://stream.binance.com:9443", "wss://stream.binance.com:9443"),
        ("wss://stream.binance.com:9443/ws", "wss://stream.binance.com:9443"),
        ("wss://stream.binance.com:9443/ws/", "wss://stream.binance.com:9443"),
        ("wss://stream.binance.com:9443/stream", "wss://stream.binance.com:9443"),
        ("wss://data-stream.binance.vision/stream?streams=", "wss://data-stream.binance.vision"),
        ("ws://127.0.0.1:9000/relay/", "ws://127.0.0.1:9000/relay"),
    ],
)
def test_the_stream_base_drops_a_ws_or_stream_path(given: str, base: str) -> None:
    assert stream_base(given) == base
