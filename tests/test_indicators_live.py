"""Live indicator subscriptions (sans-I/O): one computation per (indicator, inputs, dataMap)
per update however many clients hold it, deduplicated by chart id, dropped on disconnect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from backend.errors import IndicatorError
from backend.indicators.base import FloatArray, Indicator, Output
from backend.indicators.engine import Binding, bind, compute
from backend.indicators.live import LiveIndicators
from backend.indicators.registry import Indicators, build_indicators
from backend.model.bars import Bar, SeriesId
from backend.model.intervals import format_date
from tests.test_indicators_engine import make_bars

BTC = SeriesId("csv", "BTCUSDT", "1h")
ETH = SeriesId("csv", "ETHUSDT", "1h")


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


class CountingFetch:
    def __init__(self, bars: dict[SeriesId, list[Bar]]) -> None:
        self.bars = bars
        self.calls = 0

    def __call__(self, series: SeriesId, n: int | None) -> Sequence[Bar]:
        self.calls += 1
        return self.bars[series][-n:] if n else self.bars[series]


def rsi(indicators: Indicators, series: SeriesId = BTC, period: object = 14) -> object:
    return bind(indicators, "talib.momentum.RSI", {"timeperiod": period},
                [Binding("close", series, "close")])  # fmt: skip


def test_many_clients_with_the_same_indicator_share_one_computation(
    indicators: Indicators,
) -> None:
    live = LiveIndicators()
    for client in range(100):
        chart_id = "rsi-a" if client % 2 else "rsi-b"  # "14" and 14 give two chart ids
        live.subscribe(client, chart_id, rsi(indicators, period=14 if client % 2 else "14"))  # type: ignore[arg-type]
    fetch = CountingFetch({BTC: make_bars(1000)})
    updates = live.on_bar(BTC, fetch)
    assert len(live) == 1 and fetch.calls == 1
    assert sorted(u.chart_id for u in updates) == ["rsi-a", "rsi-b"]
    assert sum(len(u.clients) for u in updates) == 100
    expected = compute(rsi(indicators), {BTC: fetch.bars[BTC]}).values[0][-1]  # type: ignore[arg-type]
    row = next(u.row for u in updates if u.chart_id == "rsi-a")
    assert row["rsi-a-RSI"] == pytest.approx(expected)
    assert row["date"] == format_date(fetch.bars[BTC][-1][0])


def test_only_indicators_over_the_updated_series_are_computed(indicators: Indicators) -> None:
    live = LiveIndicators()
    live.subscribe("a", "on-btc", rsi(indicators, BTC))  # type: ignore[arg-type]
    live.subscribe("a", "on-eth", rsi(indicators, ETH))  # type: ignore[arg-type]
    fetch = CountingFetch({BTC: make_bars(100), ETH: make_bars(100, seed=2)})
    assert [u.chart_id for u in live.on_bar(ETH, fetch)] == ["on-eth"]
    assert live.on_bar(SeriesId("csv", "X", "1h"), fetch) == []


def test_a_chart_id_is_held_once_and_a_closed_client_holds_nothing(
    indicators: Indicators,
) -> None:
    live = LiveIndicators()
    live.subscribe("a", "rsi", rsi(indicators))  # type: ignore[arg-type]
    live.subscribe("a", "rsi", rsi(indicators))  # type: ignore[arg-type]
    live.subscribe("b", "rsi", rsi(indicators))  # type: ignore[arg-type]
    fetch = CountingFetch({BTC: make_bars(100)})
    assert [sorted(u.clients) for u in live.on_bar(BTC, fetch)] == [["a", "b"]]  # type: ignore[type-var]
    live.drop_client("a")
    assert [sorted(u.clients) for u in live.on_bar(BTC, fetch)] == [["b"]]  # type: ignore[type-var]
    live.drop_client("b")
    assert len(live) == 0 and not live.watches(BTC) and live.held_by("a") == []


class Broken(Indicator):
    name = "Broken"
    outputs = (Output("x", "broken"),)

    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        raise ZeroDivisionError("a bug in a user's calc")


def test_a_failing_computation_is_skipped_and_the_others_still_run(
    indicators: Indicators,
) -> None:
    mixed = Indicators(
        {"talib.momentum.RSI": indicators.get("talib.momentum.RSI"), "test.Broken": Broken()}
    )
    live = LiveIndicators()
    live.subscribe("a", "rsi", rsi(mixed))  # type: ignore[arg-type]
    live.subscribe("a", "bad", bind(mixed, "test.Broken", {}, [Binding("close", BTC, "close")]))
    live.subscribe("a", "eth", rsi(mixed, ETH))  # type: ignore[arg-type]
    fetch = CountingFetch({BTC: make_bars(500), ETH: make_bars(500, seed=2)})
    assert [u.chart_id for u in live.on_bar(BTC, fetch)] == ["rsi"]

    def failing(series: SeriesId, n: int | None) -> Sequence[Bar]:
        raise IndicatorError("no_data", "the store failed")

    assert live.on_bar(ETH, failing) == []  # logged, not raised
    assert [u.chart_id for u in live.on_bar(ETH, fetch)] == ["eth"]


def test_the_clients_of_a_chart_are_one_object_until_they_change(indicators: Indicators) -> None:
    """The hub groups updates by their clients: the same set must not be rebuilt per update."""
    live = LiveIndicators()
    live.subscribe("a", "rsi", rsi(indicators))  # type: ignore[arg-type]
    live.subscribe("a", "rsi2", rsi(indicators, period=15))  # type: ignore[arg-type]
    fetch = CountingFetch({BTC: make_bars(300)})
    first = {u.chart_id: u.clients for u in live.on_bar(BTC, fetch)}
    again = {u.chart_id: u.clients for u in live.on_bar(BTC, fetch)}
    assert first == {"rsi": {"a"}, "rsi2": {"a"}}
    assert all(again[chart] is first[chart] for chart in first)
    live.subscribe("b", "rsi", rsi(indicators))  # type: ignore[arg-type]
    changed = {u.chart_id: u.clients for u in live.on_bar(BTC, fetch)}
    assert changed["rsi"] == {"a", "b"} and changed["rsi2"] is first["rsi2"]


def test_a_bar_that_closed_within_the_batch_gets_its_final_row_before_the_newest(
    indicators: Indicators,
) -> None:
    """Its last update and the next bar's first came in one provider batch: the hub computes
    once, but the closed bar's final value is sent too, then the newest bar's."""
    live = LiveIndicators()
    live.subscribe("a", "rsi", rsi(indicators))  # type: ignore[arg-type]
    bars = make_bars(600)
    closed, newest = bars[-2][0], bars[-1][0]
    fetch = CountingFetch({BTC: bars})
    only_forming = live.on_bar(BTC, fetch, since=newest)
    assert [u.time for u in only_forming] == [newest]
    both = live.on_bar(BTC, fetch, since=closed)
    assert [u.time for u in both] == [closed, newest]
    expected = compute(rsi(indicators), {BTC: bars[:-1]}).values[0][-1]  # type: ignore[arg-type]
    assert both[0].row == {"date": format_date(closed), "rsi-RSI": pytest.approx(expected)}
    assert both[1].row == only_forming[0].row
