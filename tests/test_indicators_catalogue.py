"""The indicator catalogue: generated from TA-Lib's metadata, in the shape the Tradiny front
end needs (spec 1.2, checklist 1.5), and searched as fast as symbols."""

from __future__ import annotations

import time

import pytest

from backend.indicators.catalogue import MAX_RESULTS
from backend.indicators.registry import Indicators, build_indicators


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


def test_the_catalogue_lists_at_least_150_indicators(indicators: Indicators) -> None:
    assert len(indicators) >= 150


def test_every_row_has_the_fields_the_front_end_reads(indicators: Indicators) -> None:
    rows = indicators.catalogue.search("", limit=1000)
    assert len(rows) == len(indicators)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert "'" not in row["id"] and row["type"] == "indicator" and row["name"]
        details = row["details"]
        assert details["categories"] and all(c == c.lower() for c in details["categories"])
        assert details["columns"]
        for spec in details["inputs"]:
            assert len(spec["default"]) == 1
            assert spec["min"] <= spec["default"][0] <= spec["max"]
        assert details["outputs"] and all(o["name"] and o["y_axis"] for o in details["outputs"])
        if any(spec["name"] == "mamode" for spec in details["inputs"]):
            assert details["mamode"][0] == "Simple Moving Average"


def _row(indicators: Indicators, name: str) -> dict[str, object]:
    return indicators.catalogue.search(name)[0]


def test_overlays_go_on_the_price_axis_and_oscillators_get_their_own(
    indicators: Indicators,
) -> None:
    bbands = _row(indicators, "bbands")["details"]
    rsi = _row(indicators, "rsi")["details"]
    assert [o["y_axis"] for o in bbands["outputs"]] == ["price"] * 3  # type: ignore[index]
    assert rsi["outputs"] == [{"name": "RSI", "y_axis": "rsi"}]  # type: ignore[index]
    assert rsi["columns"] == ["close"]  # type: ignore[index]
    assert rsi["inputs"][0] == {  # type: ignore[index]
        "name": "timeperiod",
        "default": [14],
        "min": 2,  # TA-Lib refuses an RSI of period 1
        "max": 100_000,
        "type": "int",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rsi", "talib.momentum.RSI"),
        ("RSI", "talib.momentum.RSI"),
        ("macd", "talib.momentum.MACD"),
        ("bollinger", "talib.overlap.BBANDS"),
        ("talib.overlap.EMA", "talib.overlap.EMA"),
    ],
)
def test_search_ranks_the_exact_indicator_first(
    indicators: Indicators, query: str, expected: str
) -> None:
    assert indicators.catalogue.search(query)[0]["id"] == expected


def test_search_for_moving_average_finds_the_moving_averages(indicators: Indicators) -> None:
    ids = [row["id"] for row in indicators.catalogue.search("moving average")]
    assert {"talib.overlap.SMA", "talib.overlap.EMA", "talib.overlap.WMA"} <= set(ids)


def test_a_blank_or_non_string_search_returns_a_default_list_of_at_most_100(
    indicators: Indicators,
) -> None:
    blank = indicators.catalogue.search("")
    assert len(blank) == MAX_RESULTS
    assert blank[0]["id"] == "talib.momentum.RSI"
    assert indicators.catalogue.search(None) == blank
    assert indicators.catalogue.search(["rsi"]) == blank
    assert indicators.catalogue.search("zzzz-no-such-thing") == []


def test_search_takes_well_under_a_millisecond(indicators: Indicators) -> None:
    queries = ["rsi", "moving average", "bollinger", "", "cdl", "x" * 500]
    start = time.perf_counter()
    for _ in range(100):
        for query in queries:
            indicators.catalogue.search(query)
    per_search = (time.perf_counter() - start) / (100 * len(queries))
    assert per_search < 0.005  # measured ~0.2 ms; generous for a loaded machine
