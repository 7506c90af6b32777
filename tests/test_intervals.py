"""Interval alignment: UTC floors, Monday weeks, first-of-month months."""

from __future__ import annotations

import pytest

from backend.model import intervals


def t(text: str) -> int:
    return intervals.parse_date(text)


@pytest.mark.parametrize(
    ("interval", "time", "expected"),
    [
        ("1m", "2026-03-04 10:17:42", "2026-03-04 10:17:00"),
        ("15m", "2026-03-04 10:17:42", "2026-03-04 10:15:00"),
        ("4h", "2026-03-04 10:17:42", "2026-03-04 08:00:00"),
        ("12h", "2026-03-04 13:00:00", "2026-03-04 12:00:00"),
        ("1d", "2026-03-04 23:59:59", "2026-03-04 00:00:00"),
        ("1w", "2026-03-04 10:00:00", "2026-03-02 00:00:00"),
        ("1w", "2026-03-02 00:00:00", "2026-03-02 00:00:00"),
        ("1w", "2026-03-01 23:59:59", "2026-02-23 00:00:00"),
        ("1M", "2026-03-31 23:59:59", "2026-03-01 00:00:00"),
    ],
)
def test_floor_aligns_bars_in_utc(interval: str, time: str, expected: str) -> None:
    assert intervals.format_date(intervals.floor(t(time), interval)) == expected


def test_next_open_of_december_is_january_of_next_year() -> None:
    assert intervals.format_date(intervals.next_open(t("2025-12-15 00:00:00"), "1M")) == (
        "2026-01-01 00:00:00"
    )


def test_weeks_open_on_monday() -> None:
    assert intervals.format_date(intervals.next_open(t("2026-03-04 00:00:00"), "1w")) == (
        "2026-03-09 00:00:00"
    )


def test_only_exact_aggregations_are_allowed() -> None:
    assert intervals.can_aggregate("1m", "1h")
    assert intervals.can_aggregate("5m", "15m")
    assert not intervals.can_aggregate("2h", "3m")
    assert not intervals.can_aggregate("1d", "1h")
    assert intervals.can_aggregate("1d", "1w")
    assert intervals.can_aggregate("1h", "1M")


def test_parse_date_accepts_iso_with_zone_and_plain_format() -> None:
    assert t("2026-03-04T10:00:00Z") == t("2026-03-04 10:00:00")
    with pytest.raises(ValueError, match="Invalid isoformat"):
        t("yesterday")
