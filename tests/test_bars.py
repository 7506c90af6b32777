"""The one bar conversion (``model.bars.to_bar``) and the one hook-time parser."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from backend.model.bars import SeriesId, to_bar
from backend.model.intervals import parse_query_time

T = 1741168800  # 2025-03-05 10:00:00 UTC


def test_a_clean_bar_tuple_is_returned_as_it_is() -> None:
    bar = (T, 1.0, 2.0, 0.5, 1.5, None)
    assert to_bar(bar) is bar


def test_a_bar_tuple_in_milliseconds_is_read_in_seconds() -> None:
    assert to_bar((T * 1000, 1.0, 2.0, 0.5, 1.5, 3.0)) == (T, 1.0, 2.0, 0.5, 1.5, 3.0)


def test_a_kline_with_strings_is_converted_once() -> None:
    kline = [T * 1000, "1.5", "2", "0.5", "1.25", "10"]
    assert to_bar(kline) == (T, 1.5, 2.0, 0.5, 1.25, 10.0)


@pytest.mark.parametrize("time", [str(T * 1000), str(T)])
def test_an_epoch_time_written_as_a_string_of_digits(time: str) -> None:
    assert to_bar([time, "1.5", "2", "0.5", "1.25", "10"]) == (T, 1.5, 2.0, 0.5, 1.25, 10.0)
    assert to_bar({"date": time, "close": 1})[0] == T


def test_a_kline_without_volume_and_with_a_date_string() -> None:
    assert to_bar(("2025-03-05 10:00:00", 1, 2, 0.5, 1.5)) == (T, 1.0, 2.0, 0.5, 1.5, None)


def test_non_finite_values_become_none() -> None:
    assert to_bar((T, float("nan"), 2.0, 0.5, float("inf"), None)) == (
        T,
        None,
        2.0,
        0.5,
        None,
        None,
    )


def test_a_datapoint_dict_with_wire_keys() -> None:
    series = SeriesId("csv", "BTC", "1h")
    point = {
        "date": "2025-03-05 10:00:00",
        "csv-BTC-1h-open": 1,
        "csv-BTC-1h-high": 2,
        "csv-BTC-1h-low": 0.5,
        "csv-BTC-1h-close": 1.5,
        "csv-BTC-1h-volume": 7,
    }
    assert to_bar(point, series) == (T, 1.0, 2.0, 0.5, 1.5, 7.0)


def test_a_datapoint_whose_keys_name_another_series_says_so() -> None:
    """A provider copied from the seed and registered under another key keeps the seed's
    ``my_provider-...`` keys: the bar read as one without a price, and the log said only
    "no price" (every bar of history and stream was dropped)."""
    series = SeriesId("myfeed", "BTC", "1h")
    point = {"date": "2025-03-05 10:00:00", "my_provider-BTC-1h-close": 1.5}
    with pytest.raises(ValueError, match="'my_provider-BTC-1h-close' is not of myfeed-BTC-1h"):
        to_bar(point, series)
    assert to_bar({**point, "myfeed-BTC-1h-close": 2.0}, series) == (T, 2.0, 2.0, 2.0, 2.0, None)
    assert to_bar({**point, "close": 2.0}, series)[4] == 2.0  # bare names are its own
    assert to_bar({"date": point["date"], "adj-volume": 3}, series)[1:] == (None,) * 5


def test_a_date_and_numpy_times_are_read() -> None:
    """A vendor's daily bars dated with ``datetime.date`` and rows read from a numpy array
    (``numpy.int64`` times) were skipped as "no bar": the chart of such a provider stayed
    empty."""
    numpy = pytest.importorskip("numpy")
    day = 1741132800  # 2025-03-05 00:00:00 UTC
    assert to_bar([date(2025, 3, 5), 1, 2, 0.5, 1.5, 3])[0] == day
    assert to_bar([numpy.int64(T * 1000), 1, 2, 0.5, 1.5, 3])[0] == T
    assert to_bar([numpy.int64(T), 1, 2, 0.5, 1.5, 3])[0] == T
    assert to_bar({"date": date(2025, 3, 5), "close": 1.5})[0] == day


def test_a_datetime_time_is_read_as_utc() -> None:
    assert to_bar([datetime(2025, 3, 5, 10, tzinfo=UTC), 1, 1, 1, 1, 1])[0] == T


@pytest.mark.parametrize("bad", ["text", [T, 1, 2], None, 3.5, b"12345"])
def test_what_is_not_a_bar_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="cannot read a bar"):
        to_bar(bad)


@pytest.mark.parametrize("now", ["now UTC", "now", "", "  NOW utc ", None])
def test_now_is_none(now: str | None) -> None:
    assert parse_query_time(now) is None


def test_a_query_time_is_utc_seconds() -> None:
    assert parse_query_time("2025-03-05 10:00:00") == T
    assert parse_query_time("2025-03-05T10:00:00Z") == T


def test_a_bad_query_time_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_query_time("yesterday")
