"""Pure tests of the Polygon bar functions: intervals, Polygon's buckets (New York sessions
across daylight saving, UTC for crypto and fx), seeds, folding, and parsing recorded payloads
(``tests/fixtures/polygon``)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from polygon.rest.models import Agg

from backend.data_providers.polygon.bars import (
    Piece,
    advance,
    agg_bar,
    bucket_end,
    bucket_start,
    day_start,
    fold_bars,
    market_of,
    previous_bucket,
    seed_pieces,
    timespan,
)
from backend.data_providers.polygon.wire import (
    LiveAgg,
    StatusEvent,
    parse_frame,
    rest_ticker,
    stream_url,
    subscription_messages,
    topic,
    ws_symbol,
)
from backend.errors import ConfigError
from backend.model import intervals
from tests.fakes.polygon_data import Bucketing

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "polygon"


def utc(*parts: int) -> int:
    """UTC epoch seconds of ``(year, month, day[, hour[, minute[, second]]])``."""
    return int(datetime(*parts, tzinfo=UTC).timestamp())  # type: ignore[misc]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def frames(name: str) -> list[str]:
    return [json.dumps(frame) for frame in fixture(name)]


# ----------------------------------------------------------------------------- intervals


def test_the_fourteen_intervals_map_to_polygon_multipliers_and_timespans() -> None:
    assert {i: timespan(i) for i in intervals.INTERVALS} == {
        "1m": (1, "minute"),
        "3m": (3, "minute"),
        "5m": (5, "minute"),
        "15m": (15, "minute"),
        "30m": (30, "minute"),
        "1h": (1, "hour"),
        "2h": (2, "hour"),
        "4h": (4, "hour"),
        "6h": (6, "hour"),
        "8h": (8, "hour"),
        "12h": (12, "hour"),
        "1d": (1, "day"),
        "1w": (1, "week"),
        "1M": (1, "month"),
    }
    with pytest.raises(KeyError):
        timespan("7m")


def test_the_market_of_a_ticker_comes_from_its_prefix() -> None:
    assert [market_of(t) for t in ("AAPL", "BRK.B", "X:BTCUSD", "C:EURUSD", "I:SPX")] == [
        "stocks",
        "stocks",
        "crypto",
        "fx",
        "indices",
    ]
    assert market_of("O:SPY261218C00600000") == "options"


# ----------------------------------------------------------------------------- buckets


def test_intraday_buckets_are_utc_multiples_of_their_span_in_every_market() -> None:
    t = utc(2026, 3, 10, 15, 37, 30)
    for market in ("stocks", "crypto"):
        assert bucket_start(market, "1m", t) == utc(2026, 3, 10, 15, 37)
        assert bucket_start(market, "15m", t) == utc(2026, 3, 10, 15, 30)
        assert bucket_start(market, "4h", t) == utc(2026, 3, 10, 12)
        assert bucket_start(market, "12h", t) == utc(2026, 3, 10, 12)  # not New York noon
        assert bucket_end(market, "8h", bucket_start(market, "8h", t)) == utc(2026, 3, 10, 16)


def test_us_days_open_at_new_york_midnight_across_the_spring_dst_change() -> None:
    assert bucket_start("stocks", "1d", utc(2026, 3, 6, 15)) == utc(2026, 3, 6, 5)  # EST
    assert bucket_start("stocks", "1d", utc(2026, 3, 9, 15)) == utc(2026, 3, 9, 4)  # EDT
    # Sunday 03:30 UTC is still Saturday 22:30 in New York.
    assert bucket_start("stocks", "1d", utc(2026, 3, 8, 3, 30)) == utc(2026, 3, 7, 5)
    # The day of the switch has 23 hours.
    assert bucket_end("stocks", "1d", utc(2026, 3, 8, 5)) == utc(2026, 3, 9, 4)
    assert previous_bucket("indices", "1d", utc(2026, 3, 9, 4)) == utc(2026, 3, 8, 5)


def test_us_days_open_at_new_york_midnight_across_the_autumn_dst_change() -> None:
    assert bucket_start("stocks", "1d", utc(2026, 10, 30, 20)) == utc(2026, 10, 30, 4)  # EDT
    assert bucket_start("options", "1d", utc(2026, 11, 2, 20)) == utc(2026, 11, 2, 5)  # EST
    # 2026-11-01 has 25 hours in New York: 04:00 UTC to 05:00 UTC the next day.
    assert bucket_start("stocks", "1d", utc(2026, 11, 2, 4, 30)) == utc(2026, 11, 1, 4)
    assert bucket_end("stocks", "1d", utc(2026, 11, 1, 4)) == utc(2026, 11, 2, 5)


def test_us_weeks_open_on_sunday_at_new_york_midnight_shifting_with_dst() -> None:
    assert bucket_start("stocks", "1w", utc(2026, 3, 10, 15)) == utc(2026, 3, 8, 5)
    assert bucket_start("stocks", "1w", utc(2026, 3, 17, 15)) == utc(2026, 3, 15, 4)
    # Sunday 03:00 UTC is Saturday evening in New York: the week before.
    assert bucket_start("stocks", "1w", utc(2026, 3, 8, 3)) == utc(2026, 3, 1, 5)
    assert bucket_end("stocks", "1w", utc(2026, 3, 8, 5)) == utc(2026, 3, 15, 4)  # 167 hours
    assert bucket_start("indices", "1w", utc(2026, 11, 4)) == utc(2026, 11, 1, 4)
    assert bucket_end("indices", "1w", utc(2026, 11, 1, 4)) == utc(2026, 11, 8, 5)


def test_us_months_open_on_the_first_at_new_york_midnight_shifting_with_dst() -> None:
    assert bucket_start("stocks", "1M", utc(2026, 3, 10)) == utc(2026, 3, 1, 5)
    assert bucket_start("stocks", "1M", utc(2026, 4, 15)) == utc(2026, 4, 1, 4)
    # 2026-04-01 03:00 UTC is still March 31 in New York.
    assert bucket_start("stocks", "1M", utc(2026, 4, 1, 3)) == utc(2026, 3, 1, 5)
    assert bucket_end("stocks", "1M", utc(2026, 3, 1, 5)) == utc(2026, 4, 1, 4)
    assert bucket_end("stocks", "1M", utc(2026, 12, 1, 5)) == utc(2027, 1, 1, 5)
    assert previous_bucket("stocks", "1M", utc(2026, 1, 1, 5)) == utc(2025, 12, 1, 5)


def test_crypto_and_fx_days_weeks_and_months_open_at_utc_midnight() -> None:
    t = utc(2026, 3, 8, 3, 30)  # a Sunday
    for market in ("crypto", "fx"):
        assert bucket_start(market, "1d", t) == utc(2026, 3, 8)
        assert bucket_start(market, "1w", t) == utc(2026, 3, 8)
        assert bucket_start(market, "1w", utc(2026, 3, 7, 23)) == utc(2026, 3, 1)
        assert bucket_start(market, "1M", t) == utc(2026, 3, 1)
        assert day_start(market, t) == utc(2026, 3, 8)
    assert day_start("stocks", t) == utc(2026, 3, 7, 5)


def test_buckets_agree_with_the_fake_polygon_aggregation_every_90_minutes_of_2026() -> None:
    start, end = utc(2026, 1, 1), utc(2027, 1, 1)
    cases = itertools.product(("stocks", "crypto", "fx"), ("1h", "12h", "1d", "1w", "1M"))
    for market, interval in cases:
        multiplier, span = timespan(interval)
        oracle = Bucketing(market, multiplier, span, start * 1000)  # type: ignore[arg-type]
        for t in range(start + 17, end, 5400):
            expected = oracle.start_of(t * 1000)
            assert bucket_start(market, interval, t) * 1000 == expected, (market, interval, t)
            assert bucket_end(market, interval, expected // 1000) * 1000 == oracle.end_of(expected)


def test_recorded_rest_day_bars_are_their_own_bucket_starts() -> None:
    recorded = {"rest_aggs_aapl_day_dst.json": "stocks", "rest_aggs_btc_day.json": "crypto"}
    for name, market in recorded.items():
        for row in fixture(name)["results"]:
            t = row["t"] // 1000
            assert bucket_start(market, "1d", t) == t
            assert bucket_start(market, "1d", t + 12 * 3600) == t


# ----------------------------------------------------------------------------- seeds


def test_the_seed_of_a_minute_bar_is_the_seconds_before_the_first_event() -> None:
    x = utc(2026, 3, 10, 15, 30, 42)
    assert seed_pieces("stocks", "1m", x) == [Piece("second", utc(2026, 3, 10, 15, 30), x)]
    assert seed_pieces("stocks", "1m", utc(2026, 3, 10, 15, 30)) == []


def test_the_seed_of_an_intraday_or_daily_bar_is_whole_minutes_then_seconds() -> None:
    x = utc(2026, 3, 10, 15, 30, 42)
    minute = utc(2026, 3, 10, 15, 30)
    assert seed_pieces("stocks", "4h", x) == [
        Piece("minute", utc(2026, 3, 10, 12), minute),
        Piece("second", minute, x),
    ]
    assert seed_pieces("stocks", "1d", minute) == [Piece("minute", utc(2026, 3, 10, 4), minute)]


def test_the_seed_of_a_week_or_month_is_whole_days_then_minutes_then_seconds() -> None:
    x = utc(2026, 3, 10, 15, 30, 42)
    minute, today = utc(2026, 3, 10, 15, 30), utc(2026, 3, 10, 4)
    assert seed_pieces("stocks", "1w", x) == [
        Piece("day", utc(2026, 3, 8, 5), today),
        Piece("minute", today, minute),
        Piece("second", minute, x),
    ]
    assert seed_pieces("crypto", "1M", x)[0] == Piece("day", utc(2026, 3, 1), utc(2026, 3, 10))
    first_day = utc(2026, 3, 1, 0, 0, 5)
    assert seed_pieces("crypto", "1M", first_day) == [Piece("second", utc(2026, 3, 1), first_day)]


# ----------------------------------------------------------------------------- folding


def test_advance_folds_finer_bars_and_closes_the_bar_when_a_new_bucket_starts() -> None:
    t = utc(2026, 3, 10, 15, 0)
    seconds = [
        (t + 58, 10.0, 11.0, 9.5, 10.5, 3.0),
        (t + 59, 10.5, 12.0, 10.0, 11.0, 2.0),
        (t + 60, 11.0, 11.5, 10.8, 11.2, 5.0),
    ]
    seeded = (t, 9.0, 10.0, 8.0, 9.9, 100.0)
    closed, forming = advance("stocks", "1m", seeded, seconds)
    assert closed == [(t, 9.0, 12.0, 8.0, 11.0, 105.0)]
    assert forming == (t + 60, 11.0, 11.5, 10.8, 11.2, 5.0)
    closed, same = advance("stocks", "1m", forming, [(t + 61, 11.2, 11.3, 10.0, 10.1, None)])
    assert closed == [] and same == (t + 60, 11.0, 11.5, 10.0, 10.1, 5.0)


def test_an_update_older_than_the_forming_bucket_is_ignored() -> None:
    t = utc(2026, 3, 10, 15, 0)
    forming = (t, 1.0, 2.0, 0.5, 1.5, 10.0)
    assert advance("stocks", "1m", forming, [(t - 1, 5.0, 6.0, 4.0, 5.0, 1.0)]) == ([], forming)
    assert advance("stocks", "1m", None, []) == ([], None)
    assert fold_bars(t, []) is None


def test_the_recorded_seconds_of_a_minute_fold_into_its_minute_aggregate() -> None:
    minute_event = next(e for frame in fixture("ws_stocks.json") for e in frame if e["ev"] == "AM")
    seconds = [
        agg.bar
        for frame in frames("ws_stocks.json")
        for agg in parse_frame("stocks", frame)[1]
        if agg.ticker == "AAPL" and minute_event["s"] <= agg.bar[0] * 1000 < minute_event["e"]
    ]
    assert len(seconds) >= 20
    closed, forming = advance("stocks", "1m", None, seconds)
    assert closed == []
    assert forming == (
        minute_event["s"] // 1000,
        minute_event["o"],
        minute_event["h"],
        minute_event["l"],
        minute_event["c"],
        float(minute_event["v"]),
    )


def test_rest_aggregates_become_bars_with_polygon_dates_and_float_values_as_is() -> None:
    rows = fixture("rest_aggs_aapl_day_dst.json")["results"]
    bars = [agg_bar(Agg.from_dict(row)) for row in rows]
    assert [intervals.format_date(b[0]) for b in bars if b] == [
        "2026-03-05 05:00:00",
        "2026-03-06 05:00:00",
        "2026-03-09 04:00:00",
        "2026-03-10 04:00:00",
    ]
    assert bars[0] == (1772686800, 180.9, 181.61, 179.2, 179.36, 4492799.0)
    assert all(isinstance(v, float) for b in bars if b for v in b[1:])
    assert agg_bar(Agg.from_dict({"o": 1.0})) is None


# ----------------------------------------------------------------------------- wire


def test_frames_parse_into_statuses_and_only_per_second_aggregates() -> None:
    statuses, aggs = [], []
    for frame in frames("ws_stocks.json"):
        s, a = parse_frame("stocks", frame)
        statuses += s
        aggs += a
    assert statuses[:2] == [
        StatusEvent("connected", "Connected Successfully"),
        StatusEvent("auth_success", "authenticated"),
    ]
    assert {a.ticker for a in aggs} == {"AAPL", "MSFT"}
    assert len(aggs) == 75  # every A event; the AM event is left out
    msft = next(a for a in aggs if a.ticker == "MSFT")
    assert msft == LiveAgg("MSFT", (1773156600, 415.48, 415.59, 415.48, 415.59, 1439.0))


def test_crypto_and_forex_pairs_become_rest_tickers() -> None:
    crypto = [a for f in frames("ws_crypto.json") for a in parse_frame("crypto", f)[1]]
    forex = [a for f in frames("ws_forex.json") for a in parse_frame("forex", f)[1]]
    assert {a.ticker for a in crypto} == {"X:BTCUSD"} and len(crypto) == 3
    assert {a.ticker for a in forex} == {"C:EURUSD"} and len(forex) == 3
    assert [a.bar[0] for a in crypto] == [utc(2026, 3, 10, 15, 31) + i for i in range(3)]


def test_the_documented_stock_event_parses() -> None:
    example = (
        '[{"ev":"A","sym":"AAPL","v":5400,"av":1234567,"op":192.10,"vw":192.305,'
        '"o":192.30,"c":192.31,"h":192.34,"l":192.28,"a":192.2,"z":54,'
        '"s":1772370000000,"e":1772370001000}]'
    )
    assert parse_frame("indices", example) == (
        [],
        [LiveAgg("AAPL", (1772370000, 192.30, 192.34, 192.28, 192.31, 5400.0))],
    )
    assert parse_frame("stocks", '[{"ev":"A","sym":"X"}, 3, {"ev":"T"}]') == ([], [])
    with pytest.raises(ValueError):
        parse_frame("stocks", '{"ev": "status"}')


def test_rejection_frames_carry_the_status_and_the_message() -> None:
    recorded = fixture("ws_rejections.json")
    (failed,), _ = parse_frame("stocks", json.dumps(recorded["auth_failed"]))
    (evicted,), _ = parse_frame("crypto", json.dumps(recorded["max_connections"]))
    assert failed == StatusEvent("auth_failed", "authentication failed")
    assert evicted.status == "max_connections"
    assert evicted.message.startswith("Maximum number of websocket connections exceeded")


def test_websocket_symbols_are_spelled_per_cluster_and_map_back() -> None:
    cases = {
        ("stocks", "BRK.B"): "A.BRK.B",
        ("indices", "I:SPX"): "A.I:SPX",
        ("options", "O:SPY261218C00600000"): "A.O:SPY261218C00600000",
        ("crypto", "X:BTCUSD"): "XAS.BTC-USD",
        ("crypto", "X:DOGEUSD"): "XAS.DOGE-USD",
        ("crypto", "X:ETHUSDT"): "XAS.ETH-USDT",
        ("forex", "C:EURUSD"): "CAS.EUR/USD",
    }
    for (cluster, ticker), expected in cases.items():
        assert topic(cluster, ticker) == expected
        assert rest_ticker(cluster, ws_symbol(cluster, ticker)) == ticker


def test_stream_urls_keep_scheme_host_and_path_and_append_the_cluster() -> None:
    assert stream_url("wss://delayed.polygon.io", "stocks") == "wss://delayed.polygon.io/stocks"
    assert stream_url("ws://127.0.0.1:8765/", "forex") == "ws://127.0.0.1:8765/forex"
    assert stream_url("wss://proxy.example/polygon/", "crypto") == (
        "wss://proxy.example/polygon/crypto"
    )
    # the documents' form names a cluster: it is replaced, not doubled
    assert stream_url("wss://socket.polygon.io/stocks", "crypto") == (
        "wss://socket.polygon.io/crypto"
    )
    assert stream_url("wss://delayed.massive.com/stocks/", "stocks") == (
        "wss://delayed.massive.com/stocks"
    )
    assert stream_url("wss://proxy.example/polygon/forex", "options") == (
        "wss://proxy.example/polygon/options"
    )
    for bad in ("https://api.polygon.io", "delayed.polygon.io", "wss://"):
        with pytest.raises(ConfigError, match="POLYGON_WS_URL"):
            stream_url(bad, "stocks")


def test_subscriptions_are_sent_a_few_hundred_topics_per_message() -> None:
    topics = {f"A.T{i:04d}" for i in range(1200)}
    messages = [json.loads(m) for m in subscription_messages("subscribe", topics)]
    assert [m["action"] for m in messages] == ["subscribe"] * 3
    sent = [t for m in messages for t in m["params"].split(",")]
    assert sorted(sent) == sorted(topics)
    assert list(subscription_messages("unsubscribe", set())) == []
