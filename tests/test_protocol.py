"""Parsing client frames: every malformed request becomes a clear, addressable error."""

from __future__ import annotations

import orjson
import pytest

from backend.model.bars import SeriesId, WireKeys
from backend.wire import protocol
from backend.wire.frames import text_frame

MAX_REQUESTS = 100
MAX_COUNT = 10_000


def parse(text: str | bytes) -> list[protocol.Request]:
    return protocol.parse_frame(text, MAX_REQUESTS, MAX_COUNT)


def test_an_array_of_data_requests_is_parsed_with_defaults() -> None:
    [request] = parse('[{"type":"data","source":"csv","name":"BTCUSD","interval":"1m"}]')
    assert isinstance(request, protocol.DataRequest)
    assert request.series == SeriesId("csv", "BTCUSD", "1m")
    assert request.count == 300
    assert request.stream is True


def test_a_bare_object_is_accepted_as_one_request() -> None:
    [request] = parse('{"type":"search_data","search":"btc"}')
    assert isinstance(request, protocol.SearchRequest)
    assert request.search == "btc"


def test_an_empty_array_is_no_request() -> None:
    assert parse("[]") == []


def test_non_json_and_scalars_are_bad_requests() -> None:
    [bad] = parse("not json")
    assert isinstance(bad, protocol.BadRequest)
    assert bad.code == "bad_json"
    [scalar] = parse("42")
    assert isinstance(scalar, protocol.BadRequest)
    assert scalar.code == "bad_request"


def test_unknown_type_and_missing_type_are_named() -> None:
    unknown, missing = parse('[{"type":"dance"},{"name":"x"}]')
    assert isinstance(unknown, protocol.BadRequest)
    assert unknown.code == "unknown_type"
    assert isinstance(missing, protocol.BadRequest)
    assert missing.code == "missing_field"


def test_count_out_of_range_still_names_the_series_for_an_empty_reply() -> None:
    for count in (-1, 0):
        frame = orjson.dumps(
            [{"type": "data", "source": "csv", "name": "X", "interval": "1m", "count": count}]
        )
        [bad] = parse(frame)
        assert isinstance(bad, protocol.BadRequest)
        assert bad.code == "count_out_of_range"
        assert bad.reply_type == "data_init"
        assert bad.series == SeriesId("csv", "X", "1m")


@pytest.mark.parametrize("count", ["", ',"count":null'])
def test_no_count_is_the_default_300_or_max_count_when_that_is_smaller(count: str) -> None:
    """An omitted or null ``count`` asks for nothing in particular: the default, never more
    than ``MAX_COUNT`` and never with a ``count_out_of_range`` note (a null one used to get
    300 bars past a smaller ``MAX_COUNT``; an omitted one got the note it never asked for)."""
    for max_count, expected in ((MAX_COUNT, 300), (40, 40)):
        for kind, extra in (("data", ""), ("data_history", ',"end":"2026-01-01 00:00:00"')):
            text = f'{{"type":"{kind}","source":"csv","name":"X","interval":"1m"{extra}{count}}}'
            [request] = protocol.parse_frame(text, MAX_REQUESTS, max_count)
            assert isinstance(request, protocol.DataRequest | protocol.HistoryRequest)
            assert (request.count, request.capped) == (expected, False)


def test_a_count_past_max_count_is_served_as_max_count() -> None:
    """Tradiny asks as many bars as its chart holds (``data``) or as far back as its view
    reaches (``data_history``): past MAX_COUNT, the newest MAX_COUNT, not a refusal."""
    frame = orjson.dumps(
        [
            {"type": "data", "source": "csv", "name": "X", "interval": "1m", "count": 10**9},
            {
                "type": "data_history",
                "source": "csv",
                "name": "X",
                "interval": "1m",
                "end": "2026-01-01 00:00:00",
                "count": 20_742,
            },
        ]
    )
    data, history = parse(frame)
    assert isinstance(data, protocol.DataRequest)
    assert data.count == MAX_COUNT and data.capped
    assert isinstance(history, protocol.HistoryRequest)
    assert history.count == MAX_COUNT and history.capped
    (within,) = parse(orjson.dumps([{**orjson.loads(frame)[0], "count": MAX_COUNT}]))
    assert isinstance(within, protocol.DataRequest) and not within.capped


def test_wrong_field_types_are_invalid_fields() -> None:
    frame = (
        '[{"type":"data","source":"csv","name":"X","interval":"1m","count":"ten"},'
        '{"type":"data","source":5,"name":"X","interval":"1m"},'
        '{"type":"data","source":"csv","name":"X","interval":"1m","stream":"yes"}]'
    )
    codes = [r.code for r in parse(frame) if isinstance(r, protocol.BadRequest)]
    assert codes == ["invalid_field", "invalid_field", "invalid_field"]


def test_unknown_interval_lists_the_known_ones() -> None:
    [bad] = parse('[{"type":"data","source":"csv","name":"X","interval":"7m"}]')
    assert isinstance(bad, protocol.BadRequest)
    assert bad.code == "unknown_interval"
    assert "1m, 3m" in bad.message


def test_history_without_end_gets_an_empty_reply_and_an_error() -> None:
    [bad] = parse('[{"type":"data_history","source":"csv","name":"X","interval":"1m","count":10}]')
    assert isinstance(bad, protocol.BadRequest)
    assert bad.reply_type == "data_history"
    assert bad.code == "missing_field"


def test_too_many_requests_in_one_frame_is_refused_as_a_whole() -> None:
    [bad] = parse(orjson.dumps([{"type": "ping"}] * 1000))
    assert isinstance(bad, protocol.BadRequest)
    assert bad.code == "limit_reached"


def test_encoded_messages_never_contain_nan() -> None:
    text = protocol.update_message(
        SeriesId("a", "b", "1m"), {"date": "x", "v": float("nan")}
    ).decode()
    assert "NaN" not in text
    assert orjson.loads(text)["data"]["v"] is None


@pytest.mark.parametrize("kind", ["candlestick", "line"])
def test_the_update_encoder_writes_the_same_bytes_as_update_message(kind: str) -> None:
    series = SeriesId("binance", "BTCUSDT", "1m")
    wire = WireKeys(series, kind)
    encoder = protocol.UpdateEncoder(series, wire)
    for bar in [
        (1_700_000_040, 100.0, 101.5, 99.25, 100.5, 12.0),
        (1_700_000_100, float("nan"), None, float("inf"), 3.0, None),
    ]:
        expected = text_frame(protocol.update_message(series, wire.datapoint(bar)))
        assert encoder.frame(bar) == expected
