"""User-written indicators: the base class, a registry entry or EXTRA_INDICATORS, in search
and computed like the built-ins; a broken entry fails at startup, a failing calc per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from backend.errors import ConfigError, IndicatorError
from backend.indicators.base import FloatArray, Indicator, Input, Output
from backend.indicators.engine import Binding, bind, compute_history, output_keys, rows
from backend.indicators.registry import build_indicators
from backend.model.bars import SeriesId
from backend.settings import load_settings
from tests.test_indicators_engine import make_bars

BTC = SeriesId("csv", "BTCUSDT", "1h")


class Spread(Indicator):
    name = "High-Low Spread"
    categories = ("Volatility",)
    columns = ("high", "low")
    inputs = (Input("scale", default=1.0, min=0.0, max=100.0, integer=False),)
    outputs = (Output("spread", y_axis="spread"),)

    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        return [(data["high"] - data["low"]) * inputs["scale"]]


class Broken(Spread):
    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        raise ZeroDivisionError("oops")


class NaNDefault(Spread):
    inputs = (Input("scale", default=float("nan"), min=0.0, max=10.0),)


class DefaultOutside(Spread):
    inputs = (Input("scale", default=500, min=1, max=10),)


class HalfInteger(Spread):
    inputs = (Input("scale", default=2.5, min=1, max=10),)


class NoCalc(Indicator):
    name = "Nothing"
    outputs = (Output("x", "x"),)


def test_an_extra_indicator_appears_in_search_and_computes() -> None:
    indicators = build_indicators(["my.Spread=tests.test_indicators_user:Spread"])
    row = indicators.catalogue.search("spread")[0]
    assert row["id"] == "my.Spread" and row["details"]["categories"] == ["volatility"]
    assert row["details"]["library"] == "my"
    bindings = [Binding("high", BTC, "high"), Binding("low", BTC, "low")]
    bound = bind(indicators, "my.Spread", {"scale": "2"}, bindings)
    bars = make_bars(10)
    wire = rows(compute_history(bound, {BTC: bars}), output_keys(bound, "s"))
    assert wire[3]["s-spread"] == pytest.approx(2 * (bars[3][2] - bars[3][3]))  # type: ignore[operator]


def test_the_shipped_example_is_registered_like_a_user_indicator() -> None:
    indicators = build_indicators()
    assert indicators.catalogue.search("percent change")[0]["id"] == (
        "candlewire.performance.PercentChange"
    )
    bound = bind(indicators, "candlewire.performance.PercentChange", {"length": 2},
                 [Binding("close", BTC, "close")])  # fmt: skip
    closes = np.array([bar[4] for bar in make_bars(5)])
    values = compute_history(bound, {BTC: make_bars(5)}).values[0]
    assert values[2] == pytest.approx(100 * (closes[2] / closes[0] - 1))
    assert np.isnan(values[:2]).all()


@pytest.mark.parametrize(
    "entry",
    [
        "my.X=tests.test_indicators_user:Missing",
        "my.X=no.such.module:Spread",
        "my.X=tests.test_indicators_user:NoCalc",
        "my.X=tests.test_indicators_user:Binding",
        "my'X=tests.test_indicators_user:Spread",
        "my.X=justamodule",
        "my.X=tests.test_indicators_user:NaNDefault",
        "my.X=tests.test_indicators_user:DefaultOutside",
        "my.X=tests.test_indicators_user:HalfInteger",
    ],
)
def test_a_broken_entry_fails_at_startup(entry: str) -> None:
    with pytest.raises(ConfigError):
        build_indicators([entry])


def test_a_failing_calc_is_a_typed_error_for_that_request() -> None:
    indicators = build_indicators(["my.Broken=tests.test_indicators_user:Broken"])
    bound = bind(indicators, "my.Broken", {}, [Binding("high", BTC, "high"),
                                                Binding("low", BTC, "low")])  # fmt: skip
    with pytest.raises(IndicatorError) as caught:
        compute_history(bound, {BTC: make_bars(10)})
    assert caught.value.code == "indicator_failed"


class FlatList(Spread):
    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        return list(data["high"])  # type: ignore[return-value]  # one array expected


class NoneOut(Spread):
    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        return None  # type: ignore[return-value]


class Words(Spread):
    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        return [np.array(["x"] * len(data["high"]), dtype=object)]


@pytest.mark.parametrize("name", ["FlatList", "NoneOut", "Words"])
def test_a_calc_returning_something_else_than_arrays_is_a_typed_error(name: str) -> None:
    """The check of its output raised a TypeError itself: the client got internal_error and
    no indicator_init, and the pane span for ever."""
    indicators = build_indicators([f"my.{name}=tests.test_indicators_user:{name}"])
    bound = bind(indicators, f"my.{name}", {}, [Binding("high", BTC, "high"),
                                                 Binding("low", BTC, "low")])  # fmt: skip
    with pytest.raises(IndicatorError) as caught:
        compute_history(bound, {BTC: make_bars(10)})
    assert caught.value.code == "indicator_failed"
    assert "calc must return 1 arrays of 10 numbers" in caught.value.message


def test_the_setting_reads_a_comma_list_and_checks_its_shape() -> None:
    settings = load_settings(EXTRA_INDICATORS="a.B=m:C, d.E=n:F")
    assert settings.EXTRA_INDICATORS == ("a.B=m:C", "d.E=n:F")
    with pytest.raises(ConfigError, match="EXTRA_INDICATORS"):
        load_settings(EXTRA_INDICATORS="nonsense")
