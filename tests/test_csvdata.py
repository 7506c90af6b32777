"""Unit tests of the CSV files module: parsing, interval inference, aggregation, replay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.data_providers.csv.files import (
    Rows,
    aggregate,
    bucket,
    date_format,
    infer_interval,
    parse_times,
    partial,
    time_of_day,
)
from backend.data_providers.csv.replay import ReplayClock, ReplaySeries
from backend.model import intervals

T0 = intervals.parse_date("2026-03-02 00:00:00")  # a Monday


def rows(times: list[int], closes: list[float], line: bool = False) -> Rows:
    t = np.array(times, dtype=np.int64)
    c = np.array(closes, dtype=np.float64)
    if line:
        return Rows(t, c, c, c, c, None, True)
    o = np.r_[c[0], c[:-1]]
    return Rows(t, o, np.maximum(o, c) + 1, np.minimum(o, c) - 1, c, np.ones(len(c)), False)


def test_times_are_read_from_iso_8601_plain_and_epoch_seconds_or_milliseconds() -> None:
    expected = intervals.parse_date("2026-01-02 03:04:05")
    texts = ["2026-01-02 03:04:05", "2026-01-02T03:04:05Z", "2026-01-02T05:04:05+02:00"]
    times, valid = parse_times(pd.Series(texts))
    assert valid.all()
    assert times.tolist() == [expected] * 3
    epoch, valid = parse_times(pd.Series([expected, expected * 1000]))
    assert valid.all()
    assert epoch.tolist() == [expected, expected]


def test_times_of_day_are_read_with_colons_twelve_hours_or_digits() -> None:
    texts = ["13:45", "9:30:00", "13:45:00.250", "1:45 PM", "12:05 am", "1345", "093000", "x"]
    seconds, valid = time_of_day(pd.Series(texts))
    assert valid.tolist() == [True] * 7 + [False]
    hm = [(13, 45), (9, 30), (13, 45), (13, 45), (0, 5), (13, 45), (9, 30)]
    assert seconds[:7].tolist() == [h * 3600 + m * 60 for h, m in hm]
    # read as numbers, 093000 lost its zero: HHMMSS since a value is above 2359
    seconds, valid = time_of_day(pd.Series([93000, 134500, None]))
    assert seconds[:2].tolist() == [9 * 3600 + 1800, 13 * 3600 + 45 * 60] and not valid[2]
    assert time_of_day(pd.Series([930, 1345]))[0].tolist() == [9 * 3600 + 1800, 13 * 3600 + 2700]
    assert not time_of_day(pd.Series(["24:00", "12:60", "2460", "13:45 PM"]))[1].any()


def test_the_date_format_is_the_one_that_reads_the_dates_closest_together() -> None:
    assert date_format(pd.Series(["2026-01-02 03:04:05"])) == ""
    assert date_format(pd.Series([T0, T0 + 60])) == ""  # epoch seconds
    assert date_format(pd.Series([20260102, 20260105])) == "%Y%m%d"
    days = pd.Series([f"{d:02}/01/2026" for d in range(2, 9)])  # 2 to 8 January, day first
    assert date_format(days) == "%d/%m/%Y"
    assert date_format(pd.Series([f"01/{d:02}/2026" for d in range(2, 9)])) == "%m/%d/%Y"
    assert date_format(pd.Series(["01/13/2026", "01/14/2026"])) == "%m/%d/%Y"
    assert date_format(pd.Series(["Jan 02, 2026", "Jan 05, 2026"])) == "%b %d, %Y"
    assert date_format(pd.Series(["yesterday", "today"])) is None


def test_unreadable_times_are_marked_invalid_without_raising() -> None:
    times, valid = parse_times(pd.Series(["2026-01-02 00:00:00", "yesterday", None]))
    assert valid.tolist() == [True, False, False]
    assert times[0] == intervals.parse_date("2026-01-02 00:00:00")


def test_the_interval_is_the_most_common_spacing_even_with_gaps() -> None:
    minutes = np.array([0, 60, 120, 180, 3600, 3660, 3720], dtype=np.int64) + T0
    assert infer_interval(minutes) == "1m"
    months = np.array([bucket(np.array([T0 + d * 86_400]), "1M")[0] for d in range(0, 400, 31)])
    assert infer_interval(np.unique(months)) == "1M"


def test_a_spacing_that_is_no_standard_interval_is_not_inferred() -> None:
    assert infer_interval(np.arange(10, dtype=np.int64) * 7 * 60) is None
    assert infer_interval(np.array([T0], dtype=np.int64)) is None


@pytest.mark.parametrize("interval", intervals.INTERVALS)
def test_bucket_agrees_with_intervals_floor(interval: str) -> None:
    times = np.random.default_rng(7).integers(0, 2_000_000_000, 500).astype(np.int64)
    expected = [intervals.floor(int(t), interval) for t in times]
    assert bucket(times, interval).tolist() == expected


def test_aggregation_takes_first_open_max_high_min_low_last_close_and_summed_volume() -> None:
    r = rows([T0, T0 + 60, T0 + 120, T0 + 300], [10, 12, 9, 11])
    bars = aggregate(r, bucket(r.times, "5m")).bars()
    assert bars == [(T0, 10.0, 13.0, 8.0, 9.0, 3.0), (T0 + 300, 9.0, 12.0, 8.0, 11.0, 1.0)]


def test_aggregated_lines_keep_the_last_value() -> None:
    r = rows([T0, T0 + 60, T0 + 300], [1.0, 2.0, 3.0], line=True)
    bars = aggregate(r, bucket(r.times, "5m")).bars()
    assert bars == [(T0, 2.0, 2.0, 2.0, 2.0, None), (T0 + 300, 3.0, 3.0, 3.0, 3.0, None)]


def test_a_rising_row_forms_in_four_steps_open_low_high_close() -> None:
    row = (10.0, 14.0, 8.0, 12.0, 100.0)
    steps = [partial(T0, row, f) for f in (0.0, 0.3, 0.6, 0.9)]
    assert steps == [
        (T0, 10.0, 10.0, 10.0, 10.0, 25.0),
        (T0, 10.0, 10.0, 8.0, 8.0, 50.0),
        (T0, 10.0, 14.0, 8.0, 14.0, 75.0),
        (T0, 10.0, 14.0, 8.0, 12.0, 100.0),
    ]


def test_a_falling_row_reaches_its_high_before_its_low() -> None:
    row = (10.0, 11.0, 7.0, 8.0, 4.0)
    assert partial(T0, row, 0.26) == (T0, 10.0, 11.0, 10.0, 11.0, 2.0)
    assert partial(T0, row, 0.51) == (T0, 10.0, 11.0, 7.0, 7.0, 3.0)


def test_the_replay_clock_starts_at_the_files_midpoint_floored_to_its_interval() -> None:
    clock = ReplayClock.for_file(T0, T0 + 3600 * 5, "1h", 60.0, epoch=1000.0)
    assert clock.origin_data == T0 + 7200
    assert clock.at(1010.0) == T0 + 7200 + 600


def test_a_zero_speed_clock_is_frozen_at_the_last_row() -> None:
    clock = ReplayClock.for_file(T0, T0 + 600, "1m", 0.0, epoch=1000.0)
    assert clock.at(5000.0) == T0 + 600


def test_rows_repeat_after_the_last_one_shifted_by_the_files_span() -> None:
    series = ReplaySeries(rows([T0, T0 + 60, T0 + 120], [1, 2, 3]), "1m", T0, T0 + 120)
    assert series.period == 180
    extended = series.rows_between(T0 - 600, T0 + 400)
    assert extended.times.tolist() == [T0 + k for k in (0, 60, 120, 180, 240, 300, 360)]
    assert extended.close.tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert series.last_row(T0 - 1) is None
    assert series.last_row(T0 + 200) == T0 + 180


def test_a_bar_across_the_end_of_the_file_holds_rows_of_both_cycles() -> None:
    # period 7 minutes: the 5m bar at T0+5m holds minutes 5, 6 (cycle 0) and 7, 8, 9 (cycle 1)
    times = [T0 + 60 * i for i in range(7)]
    series = ReplaySeries(rows(times, [1, 2, 3, 4, 5, 6, 7]), "1m", T0, times[-1])
    bars = series.complete("5m", T0, T0 + 600, limit=T0 + 10_000).bars()
    assert [b[0] for b in bars] == [T0, T0 + 300, T0 + 600]
    assert bars[1][1:5] == (5.0, 8.0, 0.0, 3.0)  # open of minute 5, close of minute 9
    assert bars[1][5] == 5.0


def test_cached_aggregation_of_later_cycles_equals_aggregating_their_rows() -> None:
    times = [T0 + 60 * i for i in range(60 * 24)]  # one day of minutes: period is 1 day
    closes = list(np.random.default_rng(3).normal(100, 1, len(times)))
    series = ReplaySeries(rows(times, closes), "1m", T0, times[-1])
    lo, hi = T0 + 86_400 * 3 + 3600, T0 + 86_400 * 4 + 7200
    raw = series.rows_between(lo, hi + 3599)
    assert (
        series.complete("1h", lo, hi, limit=hi + 3600).bars()
        == aggregate(raw, bucket(raw.times, "1h")).bars()
    )


def test_history_at_a_clock_ends_with_the_partial_forming_bar() -> None:
    times = [T0 + 60 * i for i in range(10)]
    series = ReplaySeries(rows(times, [float(i) for i in range(10)]), "1m", T0, times[-1])
    clock = T0 + 185.0  # minute 3, 5 s in: its first step
    bars = series.bars("1m", T0, T0 + 10_000, clock, frozen=False)
    assert [b[0] for b in bars] == [T0, T0 + 60, T0 + 120, T0 + 180]
    assert bars[-1][1:5] == (2.0, 2.0, 2.0, 2.0)
    five = series.bars("5m", T0, T0 + 10_000, clock, frozen=False)
    assert five == [(T0, 0.0, 3.0, -1.0, 2.0, 3.25)]
