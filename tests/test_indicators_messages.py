"""Indicator and scanner requests parsed into typed objects, and the replies the front end
waits for even when a request fails (spec 2.7.1, 2.7.2, 1.5.4, 4.6.2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backend.errors import IndicatorError, ProtocolError, RuleError
from backend.indicators import messages
from backend.indicators.engine import Binding
from backend.model.bars import SeriesId

CHART_ID = "talib-momentum-RSI_timeperiod-14_close-Binance-BTCUSDT-1h-close"
REQUEST: dict[str, Any] = {
    "type": "indicator",
    "id": CHART_ID,
    "indicator": {"id": "talib.momentum.RSI", "name": "Relative Strength Index (RSI)",
                  "type": "indicator", "details": {"columns": ["close"]}},
    "inputs": {"timeperiod": "14"},
    "dataMap": {"close": {"source": "Binance", "name": "BTCUSDT", "interval": "1h",
                          "value": "Binance-BTCUSDT-1h-close", "dataKey": "close"}},
    "render": {"paneIdx": 1},
    "range": ["2026-02-28 22:00:00", "2026-03-12 09:00:00"],
}  # fmt: skip


def test_an_indicator_request_from_the_front_end_is_parsed() -> None:
    request = messages.parse_request(REQUEST)
    assert isinstance(request, messages.IndicatorRequest)
    assert request.chart_id == CHART_ID and not request.history and request.stream
    assert request.config.indicator_id == "talib.momentum.RSI"
    assert request.config.inputs == {"timeperiod": "14"}
    assert request.config.bindings == (
        Binding("close", SeriesId("Binance", "BTCUSDT", "1h"), "close"),
    )
    assert request.since == 1772316000 and request.count == 300


def test_indicator_history_never_streams_and_count_is_used_without_range() -> None:
    item = {**REQUEST, "type": "indicator_history", "count": 50}
    del item["range"]
    request = messages.parse_request(item)
    assert isinstance(request, messages.IndicatorRequest)
    assert request.history and not request.stream and request.since is None
    assert request.count == 50


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda r: r.pop("dataMap"), IndicatorError),
        (lambda r: r["dataMap"]["close"].update(value="Binance-BTCUSDT-1h-nope", dataKey="x"),
         IndicatorError),
        (lambda r: r["dataMap"]["close"].update(interval="7m"), IndicatorError),
        (lambda r: r.update(indicator="talib.momentum.RSI"), IndicatorError),
        (lambda r: r.update(id=None), IndicatorError),
        (lambda r: r.update(range=["yesterday"]), ProtocolError),
        (lambda r: r.update(count=True), ProtocolError),
    ],
)  # fmt: skip
def test_malformed_indicator_requests_raise_typed_errors(change: Any, error: type) -> None:
    item = copy.deepcopy(REQUEST)
    change(item)
    with pytest.raises(error):
        messages.parse_request(item)


def test_a_line_series_key_reads_the_line_value() -> None:
    item = copy.deepcopy(REQUEST)
    item["dataMap"]["close"].update(value="Binance-BTCUSDT-1h", dataKey="")
    request = messages.parse_request(item)
    assert isinstance(request, messages.IndicatorRequest)
    assert request.config.bindings[0].field == "close"


def test_a_failed_indicator_request_still_gets_its_empty_reply() -> None:
    replies = messages.failure_replies(REQUEST, IndicatorError("bad_input", "no"))
    assert [r["type"] for r in replies] == ["error", "indicator_init"]
    assert replies[1] == {"type": "indicator_init", "id": CHART_ID, "data": [],
                          "annotations": None, "last_dates": {}}  # fmt: skip
    history = messages.failure_replies({**REQUEST, "type": "indicator_history"},
                                       IndicatorError("no_data", "no"))  # fmt: skip
    assert history[1]["type"] == "indicator_history" and history[1]["data"] == []


def test_a_failed_scan_ends_with_the_completion_message() -> None:
    replies = messages.failure_replies({"type": "scan"}, RuleError("bad_rule", "no"))
    assert [r["type"] for r in replies] == ["error", "scan_progress", "scan_done"]


def test_a_non_string_indicator_search_counts_as_blank() -> None:
    assert messages.parse_request({"type": "search_indicators", "search": None}) == (
        messages.SearchIndicators("")
    )


def test_a_scan_request_takes_its_template_from_the_last_data_item() -> None:
    request = messages.parse_request({
        "type": "scan", "search": "USDT", "operators": [],
        "rules": [{"type1": "data", "source1": "Binance", "name1": "BTCUSDT", "interval1": "1d",
                   "key1": "close", "comparator": ">", "type2": "value", "value2": "1"}],
        "indicators": {},
        "dataProviderConfig": {"data": [{"type": "data", "source": "X", "name": "Y"},
                                        {"type": "data", "source": "Binance", "name": "BTCUSDT"}]},
    })  # fmt: skip
    assert isinstance(request, messages.ScanRequest)
    assert request.template == ("Binance", "BTCUSDT") and request.search == "USDT"
    assert messages.parse_request({"type": "scan_stop"}) == messages.ScanStop()


def test_replies_have_the_spec_shapes() -> None:
    assert messages.indicator_update("x", {"date": "d", "x-RSI": None}, {"a": "d"}) == {
        "type": "indicator_update", "id": "x", "data": {"date": "d", "x-RSI": None},
        "annotations": None, "last_dates": {"a": "d"},
    }  # fmt: skip
    assert messages.scan_result({"id": "s"}, {"close": 1.0})["data_values"] == {"close": 1.0}
    assert messages.scan_done(3, 1, 4, stopped=False)["type"] == "scan_done"
