"""Scanner and alert rules: Tradiny's rule shapes (spec 3.2, 3.4, 4.1) parsed into typed
objects and evaluated without eval; anything else is a RuleError, whatever the input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import RuleError
from backend.indicators.rules import (
    DataOperand,
    IndicatorOperand,
    Operand,
    Pair,
    RuleSet,
    ValueOperand,
    evaluate,
    parse_rule_set,
)
from backend.model.bars import SeriesId

RSI_LABEL = "Relative Strength Index (RSI) timeperiod=14"
RSI_CONFIG = {
    "indicator": {
        "type": "indicator",
        "id": "talib-momentum-RSI_timeperiod-14_close-csv-BTCUSDT-1h-close",
        "indicator": {"id": "talib.momentum.RSI", "name": "Relative Strength Index (RSI)"},
        "inputs": {"timeperiod": "14"},
        "dataMap": {
            "close": {"source": "csv", "name": "BTCUSDT", "interval": "1h",
                      "value": "csv-BTCUSDT-1h-close", "dataKey": "close"}
        },
    },
    "outputs": [{"name": "RSI", "y_axis": "rsi"}],
}  # fmt: skip


def data(n: int, key: str = "close") -> dict[str, str]:
    return {f"type{n}": "data", f"source{n}": "csv", f"name{n}": "BTCUSDT",
            f"interval{n}": "1h", f"key{n}": key}  # fmt: skip


def value(n: int, number: str) -> dict[str, str]:
    return {f"type{n}": "value", f"value{n}": number}


def rule(
    comparator: str, left: dict[str, str], right: dict[str, str], **extra: str
) -> dict[str, str]:
    return {**left, **right, "comparator": comparator, **extra}


def lookup_from(values: dict[str, Pair]) -> Any:
    def lookup(operand: Operand) -> Pair:
        if isinstance(operand, ValueOperand):
            return (operand.value, operand.value)
        return values.get(operand.label, (None, None))

    return lookup


def verdict(rules: list[dict[str, str]], operators: list[str], values: dict[str, Pair]) -> bool:
    parsed = parse_rule_set(rules, operators, {RSI_LABEL: RSI_CONFIG})
    return evaluate(parsed, lookup_from(values)).matched


def test_data_against_a_value_uses_strict_comparisons() -> None:
    assert verdict([rule(">", data(1), value(2, "100"))], [], {"close": (0, 101)})
    assert not verdict([rule(">", data(1), value(2, "100"))], [], {"close": (0, 100)})
    assert verdict([rule("<", data(1), value(2, "100"))], [], {"close": (0, 99.5)})


def test_data_against_data_and_near_follow_tradinys_formula() -> None:
    assert verdict(
        [rule("<", data(1, "low"), data(2, "high"))], [], {"low": (0, 1), "high": (0, 2)}
    )
    near = [rule("near", data(1), value(2, "90000"), near="2")]
    assert verdict(near, [], {"close": (0, 89_000)})
    assert not verdict(near, [], {"close": (0, 80_000)})


def test_an_indicator_operand_reads_its_output_and_is_labelled_like_tradiny() -> None:
    rules = [{"type1": "indicator", "indicator1": RSI_LABEL, "indicator_interval1": "1h",
              "output1": "RSI", "comparator": ">", **value(2, "70")}]  # fmt: skip
    parsed = parse_rule_set(rules, [], {RSI_LABEL: RSI_CONFIG})
    operand = parsed.rules[0].left
    assert isinstance(operand, IndicatorOperand)
    assert operand.config.indicator_id == "talib.momentum.RSI" and operand.output == "RSI"
    assert operand.label == "Relative Strength Index (RSI) RSI timeperiod=14"
    result = evaluate(parsed, lookup_from({operand.label: (60.0, 75.0)}))
    assert result.matched and result.values == {operand.label: 75.0}


@pytest.mark.parametrize(
    ("comparator", "previous", "newest", "expected"),
    [
        ("crosses_above", 99, 101, True),
        ("crosses above", 100, 101, True),
        ("crosses_above", 101, 102, False),
        ("crosses_below", 101, 99, True),
        ("crosses_below", 99, 98, False),
        ("crosses", 101, 99, True),
        ("crosses", 99, 101, True),
        ("crosses", 99, 99.5, False),
    ],
)
def test_crosses_compare_the_previous_bar_with_the_newest(
    comparator: str, previous: float, newest: float, expected: bool
) -> None:
    rules = [rule(comparator, data(1), value(2, "100"))]
    assert verdict(rules, [], {"close": (previous, newest)}) is expected


def test_and_binds_before_or_as_in_tradiny() -> None:
    t, f = rule(">", data(1), value(2, "0")), rule("<", data(1), value(2, "0"))
    values = {"close": (1.0, 1.0)}
    assert verdict([t, f, t], ["or", "and"], values)  # t or (f and t)
    assert not verdict([f, t, f], ["or", "and"], values)  # f or (t and f)
    assert verdict([f, f, t], ["and", "or"], values)  # (f and f) or t
    assert not verdict([t, f], ["and"], values)


def test_a_missing_value_makes_the_rule_false_and_is_reported() -> None:
    parsed = parse_rule_set([rule(">", data(1), value(2, "1"))], [], {})
    result = evaluate(parsed, lookup_from({}))
    assert not result.matched and result.missing


def test_rules_are_rebound_to_another_symbol_by_source_and_name_not_substring() -> None:
    rules = [rule(">", data(1), value(2, "1")),
             {"type1": "indicator", "indicator1": RSI_LABEL, "output1": "RSI",
              "comparator": ">", **value(2, "70")}]  # fmt: skip
    parsed = parse_rule_set(rules, ["and"], {RSI_LABEL: RSI_CONFIG})
    moved = parsed.rebound(("csv", "BTCUSDT"), ("csv", "ETH"))
    first, second = moved.rules[0].left, moved.rules[1].left
    assert isinstance(first, DataOperand) and first.series == SeriesId("csv", "ETH", "1h")
    assert isinstance(second, IndicatorOperand)
    assert second.config.bindings[0].series == SeriesId("csv", "ETH", "1h")
    assert parsed.rebound(("csv", "BTC"), ("csv", "ETH")) == parsed  # BTC is not BTCUSDT


@pytest.mark.parametrize(
    ("rules", "operators"),
    [
        ([rule(">", data(1), value(2, "1"))] * 2, ["__import__('os').system('id')"]),
        ([rule(">", data(1), value(2, "1"))] * 2, ["and True or"]),
        ([rule(">", data(1), value(2, "1"))] * 2, []),
        ([rule("==", data(1), value(2, "1"))], []),
        ([rule(">", data(1), value(2, "1; rm -rf /"))], []),
        ([rule(">", data(1, "__class__"), value(2, "1"))], []),
        ([rule(">", {"type1": "eval"}, value(2, "1"))], []),
        ([rule("near", data(1), value(2, "1"))], []),
        ([{"type1": "indicator", "indicator1": "nope", "output1": "x", "comparator": ">",
           **value(2, "1")}], []),
        ([], []),
        ("rules", []),
        ([None], []),
    ],
)  # fmt: skip
def test_hostile_or_malformed_rules_raise_a_rule_error(rules: Any, operators: Any) -> None:
    with pytest.raises(RuleError):
        parse_rule_set(rules, operators, {RSI_LABEL: RSI_CONFIG})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    ["type1", "type2", "source1", "name1", "interval1", "key1", "value1", "value2",
     "comparator", "near", "indicator1", "output1", "indicator_interval1"]
)  # fmt: skip
rule_like = st.dictionaries(
    keys,
    st.sampled_from(["data", "value", "indicator", "<", ">", "near", "crosses", "1h", "close",
                     "csv", "BTCUSDT", "1", "nan", "inf", RSI_LABEL, "RSI"]) | json_values,
    max_size=13,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(rule_like, max_size=4) | json_values,
    operators=st.lists(st.sampled_from(["and", "or", "AND", "xor", ""]) | json_values, max_size=4)
    | json_values,
    indicators=st.just({RSI_LABEL: RSI_CONFIG}) | json_values,
)
def test_the_parser_raises_nothing_but_a_rule_error_on_random_input(
    rules: Any, operators: Any, indicators: Any
) -> None:
    try:
        parsed = parse_rule_set(rules, operators, indicators)
    except RuleError:
        return
    assert isinstance(parsed, RuleSet)
    evaluate(parsed, lookup_from({"close": (1.0, 2.0)}))
