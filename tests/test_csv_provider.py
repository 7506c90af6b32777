"""Tests of the CSV provider, instantiated directly on small files written in tmp_path.

The replay is driven by hand: the provider's wall clock is a list the test moves, and
``_tick()`` is called instead of starting the replay thread (except in one test).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from backend import settings as config
from backend.data_providers import csv as csv_module
from backend.data_providers.csv import CSVProvider
from backend.data_providers.csv import files as csvdata
from backend.data_providers.csv.replay import REPLAY_EPOCH
from backend.errors import ConfigError, UnknownSymbol
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.messages import BarUpdate, Changed, Clock, Event

T0 = intervals.parse_date("2026-03-02 00:00:00")  # a Monday
WALL = float(REPLAY_EPOCH)  # where every replay stands at its file's midpoint
HEADER = "date,open,high,low,close,volume"
DATA = Path(__file__).resolve().parents[1] / "data"


def fmt(t: int) -> str:
    return intervals.format_date(t)


def candle(i: int) -> tuple[float, float, float, float, float]:
    """Row i of the test candles: open 100+i, high +2, low -1, close +1, volume 10+i."""
    o = 100.0 + i
    return (o, o + 2, o - 1, o + 1, 10.0 + i)


def write_candles(path: Path, n: int, step: int = 60, start: int = T0) -> None:
    lines = [HEADER]
    for i in range(n):
        o, h, lo, c, v = candle(i)
        lines.append(f"{fmt(start + i * step)},{o},{h},{lo},{c},{v}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


class Harness:
    """A provider on ``folder`` with a fake wall clock and recorded events."""

    def __init__(
        self,
        folder: Path,
        speed: float = 0.0,
        date_column: str = "",
        now: float = WALL,
        **extra: str,
    ) -> None:
        self.events: list[Event] = []
        self.now = now
        self.provider = CSVProvider()
        settings = config.load_settings(
            CSV_FOLDER_PATH=folder, CSV_REPLAY_SPEED=speed, CSV_DATE_COLUMN=date_column, **extra
        )
        self.provider._attach("csv", settings, self.events.append)
        self.provider._wall = lambda: self.now
        self.provider._start_replay = lambda: None  # type: ignore[method-assign]
        self.provider.init()

    def history(
        self, symbol: str, interval: str, start: str = "", end: str = "now UTC"
    ) -> list[Bar]:
        return self.provider.get_history(symbol, interval, start, end, 0)

    def updates(self) -> list[BarUpdate]:
        found = [e for e in self.events if isinstance(e, BarUpdate)]
        self.events.clear()
        return found

    def clocks(self) -> dict[str | None, Clock]:
        return {e.symbol: e for e in self.events if isinstance(e, Clock)}


@pytest.fixture
def minutes(tmp_path: Path) -> Path:
    write_candles(tmp_path / "ACME.csv", 60)  # 60 one-minute rows: T0 ... T0 + 59 min
    return tmp_path


# ---------------------------------------------------------------------------- discovery


def test_ohlc_files_are_candlesticks_and_other_numeric_columns_are_lines(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "FX.csv").write_text(
        "Time,Open,High,Low,Close,Volume,vwap,venue\n"
        + "".join(f"{fmt(T0 + 3600 * i)},1,2,0.5,1.5,7,1.2,XNYS\n" for i in range(5))
    )
    (tmp_path / "macro.csv").write_text(
        "timestamp,rate,gdp\n" + "".join(f"{T0 + 86400 * i},4.5,{i}\n" for i in range(5))
    )
    rows = {row["name"]: row for row in Harness(tmp_path).provider.get_dataset()}
    assert sorted(rows) == ["FX", "FX__vwap", "macro__gdp", "macro__rate"]
    fx = rows["FX"]
    assert fx["type"] == "candlestick" and fx["source"] == "csv" and fx["categories"] == ["CSV"]
    assert fx["path"] == "sub/FX.csv"
    assert fx["intervals"] == ["1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w", "1M"]
    assert [(o["name"], o["y_axis"]) for o in fx["outputs"]] == [
        ("open", "price"), ("high", "price"), ("low", "price"), ("close", "price"),
        ("volume", "volume"),
    ]  # fmt: skip
    rate = rows["macro__rate"]
    assert rate["type"] == "line" and rate["intervals"] == ["1d", "1w", "1M"]
    assert rate["outputs"] == [{"name": "macro__rate", "y_axis": "macro__rate"}]


def test_every_symbol_gets_a_replay_clock_from_the_middle_of_its_file(minutes: Path) -> None:
    clock = Harness(minutes, speed=60).clocks()["ACME"]
    assert clock.speed == 60
    assert clock.origin_data == T0 + 29 * 60  # midpoint of T0 .. T0+59min, floored to 1m


def test_providers_started_at_different_wall_times_agree_on_the_data_time(
    minutes: Path,
) -> None:
    early = Harness(minutes, speed=60, now=WALL + 100)
    late = Harness(minutes, speed=60, now=WALL + 100 + 3 * 86_400)  # "restarted" 3 days on
    assert early.clocks()["ACME"] == late.clocks()["ACME"]
    early.now = late.now = WALL + 100 + 3 * 86_400 + 7.3
    assert early.history("ACME", "1m", "", "now UTC") == late.history("ACME", "1m", "", "now UTC")
    last = late.history("ACME", "1m", "", "now UTC")[-1]
    expected = T0 + 29 * 60 + (3 * 86_400 + 107.3) * 60  # the midpoint plus the elapsed time
    assert last[0] == intervals.floor(int(expected), "1m")


def test_the_replay_time_is_continuous_across_a_restart(minutes: Path) -> None:
    before = Harness(minutes, speed=60, now=WALL + 50_000)
    before.provider._subscribe(1, "ACME", "5m")
    before.now += 3600  # an hour of uptime: 60 hours of data
    before.provider._tick()
    sent = max(u.bar[0] for u in before.updates())
    before.provider.shutdown()
    after = Harness(minutes, speed=60, now=before.now + 1)  # a new process, a second later
    first = after.history("ACME", "5m", "", "now UTC")[-1]
    assert sent <= first[0] <= sent + 300


def test_csv_replay_epoch_moves_the_clock(minutes: Path) -> None:
    moved = Harness(minutes, speed=60, now=WALL + 86_400, CSV_REPLAY_EPOCH="2026-12-02")
    assert moved.clocks()["ACME"].origin_wall == WALL + 86_400
    assert moved.history("ACME", "1m")[-1][0] == T0 + 29 * 60  # at its midpoint again


def test_a_bad_csv_replay_epoch_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="CSV_REPLAY_EPOCH"):
        config.load_settings(CSV_REPLAY_EPOCH="yesterday")


def test_a_replay_that_has_not_reached_the_first_row_is_logged(
    minutes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CSV_REPLAY_EPOCH ahead of the wall clock: the charts were empty with no word of why."""
    with caplog.at_level(logging.WARNING):
        Harness(minutes, speed=60, now=WALL)
    assert "has not reached their first row" not in caplog.text
    with caplog.at_level(logging.WARNING):
        early = Harness(minutes, speed=60, now=WALL - 60)  # the file's middle an hour ahead
    assert early.history("ACME", "1m") == []
    assert "the replay of 1 of 1 files has not reached their first row" in caplog.text
    assert f"(the first at {fmt(int(WALL) - 29)} UTC)" in caplog.text  # 29 rows at 60x


def test_with_zero_speed_the_clock_is_frozen_at_the_last_row(minutes: Path) -> None:
    clock = Harness(minutes, speed=0).clocks()["ACME"]
    assert (clock.origin_data, clock.speed) == (T0 + 59 * 60, 0.0)


def test_broken_files_are_logged_and_skipped_without_harming_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_candles(tmp_path / "GOOD.csv", 10)
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nodate.csv").write_text("a,b\n1,2\n3,4\n")
    write_candles(tmp_path / "sevens.csv", 10, step=7 * 60)  # 7 minutes is no interval
    (tmp_path / "notes.txt").write_text("not a csv")
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
    assert [row["name"] for row in harness.provider.get_dataset()] == ["GOOD"]
    for name in ("binary.csv", "empty.csv", "nodate.csv", "sevens.csv"):
        assert any(name in record.getMessage() for record in caplog.records), name
    assert len(harness.history("GOOD", "1m")) == 10


def test_a_skipped_file_is_logged_with_what_was_found_and_what_is_expected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file with dates written in a way not read (5 Jan. 2026 9h30) or a German header
    gets a message that says what was found and what would do, not only that something was
    not found. (Dates as 1/5/2026 9:30 are read now.)"""
    (tmp_path / "us.csv").write_text(
        HEADER + "\n5 Jan. 2026 9h30,1,2,0,1,5\n5 Jan. 2026 9h31,1,2,0,1,5\n"
    )
    (tmp_path / "de.csv").write_text("Datum;Schluss\n05.01.2026;1,5\n06.01.2026;1,6\n")
    write_candles(tmp_path / "one.csv", 1)
    with caplog.at_level(logging.WARNING):
        Harness(tmp_path)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "column 'date' (such as '5 Jan. 2026 9h30')" in messages
    assert "YYYY-MM-DD HH:MM:SS" in messages
    assert "the columns are 'Datum', 'Schluss'): name it with CSV_DATE_COLUMN" in messages
    assert "one.csv: skipped: rows are not spaced by a standard interval" in messages
    assert "a single date in the first rows" in messages


def test_files_of_bars_not_ending_in_csv_are_logged_once_with_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stooq's bulk files end in .txt, data.binance.vision's come zipped: dropped in the
    folder they were passed over without a word, their symbols missing."""
    (tmp_path / "us").mkdir()
    (tmp_path / "us" / "aapl.us.txt").write_text("<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>\n")
    (tmp_path / "BTCUSDT-1m-2026-03.zip").write_bytes(b"PK\x03\x04")
    (tmp_path / "notes.md").write_text("not data")
    write_candles(tmp_path / "ACME.csv", 3)
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
        with pytest.raises(UnknownSymbol):
            harness.history("aapl.us", "1d")  # looks for new files again
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"{tmp_path / 'BTCUSDT-1m-2026-03.zip'}: not read: only files ending in .csv are;"
        " unzip it into the folder",
        f"{tmp_path / 'us' / 'aapl.us.txt'}: not read: only files ending in .csv are;"
        " rename it to .csv",
    ]


def test_a_file_whose_lines_are_each_one_quoted_field_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file a spreadsheet read as one column and saved again has each line in quotes
    (``"date,open,high,low,close"``): it was skipped for 'no date column ... name it with
    CSV_DATE_COLUMN', which does not help."""
    lines = ['"date,open,high,low,close"'] + [f'"{fmt(T0 + 60 * i)},1,2,0.5,1.5"' for i in range(3)]
    (tmp_path / "Q.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        Harness(tmp_path)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "Q.csv: skipped: each line is one quoted field ('date,open,high,low,close')" in messages
    assert "without quotes around whole lines" in messages


def test_a_price_or_volume_column_that_is_not_numeric_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A comma file whose volumes are written with spaces between the thousands ("1 234";
    "1,234" is read now), or a tab file with decimal commas, lost its volume or its candle
    without a word."""
    rows = [f'{fmt(T0 + 60 * i)},1,2,0,1,"1 {i:03d}"' for i in range(5)]
    (tmp_path / "US.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "HEADER.csv").write_text(HEADER + "\n")
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "US.csv: column 'volume' is not served: its values are not numbers (such as" in messages
    assert "HEADER.csv: skipped: no rows under the header" in messages
    assert harness.history("US", "1m")[0][1:] == (1.0, 2.0, 0.0, 1.0, None)


def test_a_file_with_no_numeric_column_is_logged_with_what_its_columns_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every price written with a space between the thousands ("1,100" is read now): the
    file was skipped with "no numeric column" alone, not saying what its columns held."""
    rows = [f'{fmt(T0 + 60 * i)},"1 100","1 200","1 000","1 150"' for i in range(5)]
    (tmp_path / "K.csv").write_text("date,open,high,low,close\n" + "\n".join(rows) + "\n")
    write_candles(tmp_path / "OK.csv", 5)
    with caplog.at_level(logging.WARNING):
        Harness(tmp_path)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "K.csv: skipped: no numeric column: the values of 'open' are such as '1 100'" in messages


def test_malformed_rows_are_logged_with_path_and_line_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "X.csv"
    path.write_text(
        f"{HEADER}\n"  # line 1
        f"{fmt(T0)},1,2,0,1,5\n"  # 2
        f"{fmt(T0 + 60)},1,2,0,1,5\n"  # 3
        "not a date,1,2,0,1,5\n"  # 4
        f"{fmt(T0 + 180)},1,x,0,1,5\n"  # 5
        f"{fmt(T0 + 240)},1,2,0,1,5,99\n"  # 6: one field too many
        "\n"  # 7: blank, ignored
        f"{fmt(T0 + 300)},1,2,0,1,5\n"  # 8
        f"{fmt(T0 + 360)},1,2,0\n"  # 9: fields missing
        f"{fmt(T0 + 420)},1,2,0,1,5\n"  # 10
    )
    harness = Harness(tmp_path)
    with caplog.at_level(logging.WARNING):
        bars = harness.history("X", "1m")
    assert [b[0] for b in bars] == [T0, T0 + 60, T0 + 300, T0 + 420]
    messages = " ".join(record.getMessage() for record in caplog.records)
    for line in (4, 5, 6, 9):
        assert f"{path}:{line}:" in messages
    for line in (2, 3, 7, 8, 10):
        assert f"{path}:{line}:" not in messages


def test_rows_of_a_duplicate_date_are_logged_and_the_last_one_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Of rows sharing a date the last was served and the others dropped without a word:
    they are now logged with their path and line, as every other row skipped."""
    path = tmp_path / "X.csv"
    path.write_text(
        f"{HEADER}\n"  # line 1
        f"{fmt(T0 + 60)},1,2,0,1,5\n"  # 2: same date as line 5, skipped
        f"{fmt(T0)},1,2,0,1,5\n"  # 3
        f"{fmt(T0 + 120)},1,2,0,1,5\n"  # 4
        f"{fmt(T0 + 60)},7,8,6,7,9\n"  # 5: served
    )
    harness = Harness(tmp_path)
    with caplog.at_level(logging.WARNING):
        bars = harness.history("X", "1m")
    assert bars == [(T0, 1, 2, 0, 1, 5), (T0 + 60, 7, 8, 6, 7, 9), (T0 + 120, 1, 2, 0, 1, 5)]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert f"{path}:2: malformed row skipped (duplicate date" in messages
    for line in (3, 4, 5):
        assert f"{path}:{line}:" not in messages


def test_a_row_dated_years_from_every_other_is_a_stray_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A date typed wrong (2030 or 1970 in a file of 2026) stood alone years from the data
    and hid it: data_init answered that one bar, or none."""
    body = "".join(f"{fmt(T0 + 60 * i)},1,2,0,1,5\n" for i in range(200))
    later = intervals.parse_date("2030-01-06 00:00:00")
    path = tmp_path / "S.csv"
    path.write_text(f"{HEADER}\n{fmt(0)},1,2,0,1,5\n{body}{fmt(later)},1,2,0,1,5\n")
    harness = Harness(tmp_path)
    with caplog.at_level(logging.WARNING):
        bars = harness.history("S", "1m")
    assert [b[0] for b in bars] == [T0 + 60 * i for i in range(200)]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert f"{path}:2:" in messages and f"{path}:203:" in messages
    assert "a date far from every other row" in messages


def test_a_real_gap_between_two_runs_of_rows_is_kept(tmp_path: Path) -> None:
    first = "".join(f"{fmt(T0 + 60 * i)},1,2,0,1,5\n" for i in range(5))
    later = T0 + 400 * 86400
    second = "".join(f"{fmt(later + 60 * i)},1,2,0,1,5\n" for i in range(50))
    (tmp_path / "G.csv").write_text(f"{HEADER}\n{first}{second}")
    bars = Harness(tmp_path).history("G", "1m")
    assert len(bars) == 55


def test_the_date_column_can_be_named_by_csv_date_column(tmp_path: Path) -> None:
    (tmp_path / "W.csv").write_text(
        "When,close\n" + "".join(f"{fmt(T0 + 60 * i)},{i}\n" for i in range(3))
    )
    assert list(Harness(tmp_path).provider.get_dataset()) == []
    harness = Harness(tmp_path, date_column="when")
    assert harness.history("W__close", "1m") == [
        (T0 + 60 * i, float(i), float(i), float(i), float(i), None) for i in range(3)
    ]


def test_epoch_milliseconds_and_rows_newest_first_are_understood(tmp_path: Path) -> None:
    rows = [f"{(T0 + 60 * i) * 1000},{i},{i + 1},{i - 1},{i},{i}" for i in range(5)]
    (tmp_path / "MS.csv").write_text(
        "timestamp,open,high,low,close,volume\n" + "\n".join(rows[::-1])
    )
    bars = Harness(tmp_path).history("MS", "1m")
    assert [b[0] for b in bars] == [T0 + 60 * i for i in range(5)]
    assert bars[2] == (T0 + 120, 2.0, 3.0, 1.0, 2.0, 2.0)


def _stamp(t: int, pattern: str) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(pattern)


# (header, how a row's date and time are written, separator): exports of common tools
DATE_AND_TIME = {
    "MetaTrader 4": ("Date,Time,Open,High,Low,Close,Volume", "%Y.%m.%d,%H:%M", ","),
    "MetaTrader 5": (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>",
        "%Y.%m.%d\t%H:%M:%S",
        "\t",
    ),
    "digits": ("Date,Time,Open,High,Low,Close,Volume", "%Y%m%d,%H%M%S", ","),
    "Stooq": (
        "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>",
        "X.US,15,%Y%m%d,%H%M%S",
        ",",
    ),
    "US": ("Date,Time,Open,High,Low,Close,Volume", "%m/%d/%Y,%H:%M:%S", ","),
    "US 12-hour": ("Date,Time,Open,High,Low,Close,Volume", "%m/%d/%Y,%I:%M %p", ","),
    "UK": ("Date,Time,Open,High,Low,Close,Volume", "%d/%m/%Y,%H:%M", ","),
    "one column, US": ("Date,Open,High,Low,Close,Volume", "%m/%d/%Y %H:%M", ","),
    "one column, German": ("Date;Open;High;Low;Close;Volume", "%d.%m.%Y %H:%M", ";"),
}


@pytest.mark.parametrize("export", DATE_AND_TIME)
def test_a_date_and_a_time_of_day_in_columns_of_their_own_are_one_timestamp(
    tmp_path: Path, export: str
) -> None:
    """Exports of MetaTrader, Stooq or NinjaTrader write the date and the time of day apart
    (``2024.01.02,13:45``, ``20240102,134500``, ``01/02/2024,13:45:00``), or dates as
    01/02/2024: every one of them was skipped ("a single date in the first rows", "no date
    column", "no readable date"). 300 quarter-hours from 09:00 on the 2nd of a month: its
    first rows are a single day, which 02/01 is as much as 01/02 read either way."""
    header, pattern, sep = DATE_AND_TIME[export]
    start = intervals.parse_date("2024-01-02 09:00:00")
    lines, n = [header], header.count(sep) + 1
    for i in range(300):
        t = start + 900 * i
        o, h, lo, c, v = candle(i)
        values = [str(x) for x in (o, h, lo, c, v, v)][: n - pattern.count(sep) - 1]
        lines.append(sep.join([_stamp(t, pattern), *values]))
    (tmp_path / "X.csv").write_text("\n".join(lines) + "\n")
    harness = Harness(tmp_path)
    assert harness.provider._symbols["X"][0].layout.interval == "15m"
    assert "X__PER" not in harness.provider._symbols  # Stooq's interval column
    bars = harness.history("X", "15m")
    assert [b[0] for b in bars] == [start + 900 * i for i in range(300)]
    assert bars[-1][1:5] == candle(299)[:4]
    assert [b[0] for b in harness.history("X", "1d")] == [
        start - 9 * 3600 + 86_400 * d for d in range(4)
    ]


def test_metatrader_volume_is_the_tick_volume_when_the_real_one_is_zero(tmp_path: Path) -> None:
    """MetaTrader 5 writes <VOL> 0 for currencies (no exchange volume) and the tick count
    in <TICKVOL>: the candles' volume is the one that counts something."""
    (tmp_path / "EURUSD.csv").write_text(
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        + "".join(f"2024.01.02\t10:0{i}:00\t1.1\t1.2\t1.0\t1.1\t{50 + i}\t0\t3\n" for i in range(5))
    )
    harness = Harness(tmp_path)
    assert [b[5] for b in harness.history("EURUSD", "1m")] == [50.0, 51.0, 52.0, 53.0, 54.0]


def test_dates_written_as_numbers_are_dates_not_epoch_seconds(tmp_path: Path) -> None:
    """A daily file with dates as 20240102 (Stooq, many data vendors) was read as epoch
    seconds of 1970 one second apart, and skipped as not spaced by a standard interval."""
    days = [intervals.parse_date("2024-01-01 00:00:00") + 86_400 * d for d in range(40)]
    (tmp_path / "D.csv").write_text(
        "Date,Open,High,Low,Close\n"
        + "".join(f"{_stamp(t, '%Y%m%d')},{i},{i + 1},{i - 1},{i}\n" for i, t in enumerate(days))
    )
    bars = Harness(tmp_path).history("D", "1d")
    assert [b[0] for b in bars] == days


def _kline(t: int, unit: int, step: int, i: int) -> str:
    o, h, lo, c, v = candle(i)
    opened, closed = t * unit, (t + step) * unit - 1
    return f"{opened},{o},{h},{lo},{c},{v},{closed},{v * o},{10 + i},{v / 2},{v * o / 2},0\n"


@pytest.mark.parametrize(
    ("unit", "header"),
    [(1000, ""), (1_000_000, ""), (1000, ",".join(csvdata.BINANCE_KLINE) + "\n")],
    ids=["milliseconds", "microseconds", "with a header"],
)
def test_binance_kline_files_without_a_header_are_read(
    tmp_path: Path, unit: int, header: str
) -> None:
    """data.binance.vision's kline files have no header line and twelve columns, open and
    close times in epoch milliseconds (microseconds for spot data since 2025): the first row
    was taken for the header and the file skipped ('no date column; the columns are
    '1704153600000', ...'). With a header (open_time, ...) it had no date column either."""
    (tmp_path / "BTCUSDT-1h.csv").write_text(
        header + "".join(_kline(T0 + 3600 * i, unit, 3600, i) for i in range(30))
    )
    harness = Harness(tmp_path)
    names = sorted(row["name"] for row in harness.provider.get_dataset())
    assert names == [
        "BTCUSDT-1h",
        "BTCUSDT-1h__count",
        "BTCUSDT-1h__quote_volume",
        "BTCUSDT-1h__taker_buy_quote_volume",
        "BTCUSDT-1h__taker_buy_volume",
    ]  # not the close time nor the "ignore" column
    bars = harness.history("BTCUSDT-1h", "1h")
    assert [b[0] for b in bars] == [T0 + 3600 * i for i in range(30)]
    assert bars[0][1:] == candle(0)
    assert harness.history("BTCUSDT-1h__count", "1h")[2][4] == 12.0


POLYGON_HEADER = "ticker,volume,open,close,high,low,window_start,transactions\n"


def _aggregate(ticker: str, t: int, i: int) -> str:
    o, h, lo, c, v = candle(i)
    return f"{ticker},{v},{o},{c},{h},{lo},{t * 1_000_000_000},{i}\n"


def test_polygon_flat_file_rows_of_one_ticker_are_read(tmp_path: Path) -> None:
    """Polygon's flat files (minute_aggs_v1, day_aggs_v1) date their rows by window_start
    in epoch nanoseconds: 'no date column'."""
    (tmp_path / "AAPL.csv").write_text(
        POLYGON_HEADER + "".join(_aggregate("AAPL", T0 + 60 * i, i) for i in range(20))
    )
    bars = Harness(tmp_path).history("AAPL", "1m")
    assert [b[0] for b in bars] == [T0 + 60 * i for i in range(20)]
    assert bars[3][1:] == candle(3)


def test_a_file_of_several_tickers_is_skipped_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flat file holds every ticker of a day: it was skipped for 'no date column', and
    once that was found it would have been one symbol whose every date repeats."""
    rows = [
        _aggregate(ticker, T0 + 60 * i, i)
        for i in range(20)
        for ticker in ("A", "AA", "AAPL", "MSFT")
    ]
    (tmp_path / "2026-03-02.csv").write_text(POLYGON_HEADER + "".join(rows))
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
    assert list(harness.provider.get_dataset()) == []
    assert any(
        "skipped: the rows are of 4 tickers (column 'ticker': A, AA, AAPL, ...): a file is one"
        " symbol; write each ticker's rows to a file of its own" in r.getMessage()
        for r in caplog.records
    )


def test_an_investing_com_export_is_read(tmp_path: Path) -> None:
    """Investing.com writes the close as Price, numbers with thousands separators in quotes
    ("42,123.5"), volumes as 1.23M or 456.70K ("-" when there is none) and dates as
    MM/DD/YYYY, newest first: the file was skipped for 'no numeric column'."""
    days = [T0 + 86_400 * d for d in range(12)]
    lines = ['"Date","Price","Open","High","Low","Vol.","Change %"']
    for d, t in reversed(list(enumerate(days))):
        vol = "-" if d == 3 else (f"{1.5 + d}M" if d % 2 else f"{450.5 + d:.2f}K")
        p = 42_000 + 13.5 * d
        lines.append(
            f'"{_stamp(t, "%m/%d/%Y")}","{p:,.1f}","{p - 100:,.1f}","{p + 300:,.1f}",'
            f'"{p - 400:,.1f}","{vol}","0.12%"'
        )
    (tmp_path / "BTC.csv").write_text("\n".join(lines) + "\n")
    harness = Harness(tmp_path)
    assert [row["name"] for row in harness.provider.get_dataset()] == ["BTC"]
    bars = harness.history("BTC", "1d")
    assert [b[0] for b in bars] == days
    assert bars[1] == (days[1], 41_913.5, 42_313.5, 41_613.5, 42_013.5, 2_500_000.0)
    assert bars[2][5] == 452_500.0 and bars[3][5] is None


def test_a_yfinance_to_csv_file_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``yf.download(...).to_csv()`` writes two header lines more (``Ticker,MSFT,...`` and
    ``Date,,,,,``; its columns have two levels): the file was skipped for 'no date column
    (... the columns are 'Price', 'Close', ...)'. A download of several tickers is skipped,
    saying why."""
    lines = ["Price,Close,High,Low,Open,Volume", "Ticker,MSFT,MSFT,MSFT,MSFT,MSFT", "Datetime,,,,,"]
    for i in range(30):
        o, h, lo, c, v = candle(i)
        lines.append(f"{_stamp(T0 + 3600 * i, '%Y-%m-%d %H:%M:%S+00:00')},{c},{h},{lo},{o},{v:.0f}")
    lines[10] = lines[10].replace(",107.0,", ",x,")  # row 7, on line 11 of the file
    (tmp_path / "MSFT.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "TWO.csv").write_text(
        "Price,Close,Close\nTicker,AAPL,MSFT\nDate,,\n2026-03-02,1,2\n2026-03-03,1,2\n"
    )
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
        bars = harness.history("MSFT", "1h")
    assert [b[0] for b in bars] == [T0 + 3600 * i for i in range(30) if i != 7]
    assert bars[0][1:] == candle(0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.endswith("MSFT.csv:11: malformed row skipped (bad value in 'Open')") for m in messages
    )
    assert any(
        "TWO.csv: skipped: the columns are of 2 tickers (AAPL, MSFT): a file is one symbol" in m
        for m in messages
    )


def test_a_file_without_a_header_is_read_by_the_place_of_its_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MetaTrader's history export (2024.01.02,13:45,open,high,low,close,volume) and other
    files with no header line: date (and time), then open, high, low, close and volume when
    they are prices, else a value. A malformed row is logged with its own line number."""
    mt = [
        f"{_stamp(T0 + 60 * i, '%Y.%m.%d,%H:%M')},{','.join(map(str, candle(i)))}"
        for i in range(10)
    ]
    mt[4] = mt[4].replace(",104.0,", ",x,", 1)
    (tmp_path / "EURUSD1.csv").write_text("\n".join(mt) + "\n")
    (tmp_path / "rate.csv").write_text(
        "".join(f"{fmt(T0 + 86_400 * d)},{d / 10}\n" for d in range(5))
    )
    with caplog.at_level(logging.WARNING):
        harness = Harness(tmp_path)
        bars = harness.history("EURUSD1", "1m")
    assert [b[1:] for b in bars] == [candle(i) for i in range(10) if i != 4]
    assert [b[4] for b in harness.history("rate__value", "1d")] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert any(
        r.getMessage().endswith("EURUSD1.csv:5: malformed row skipped (bad value in 'open')")
        for r in caplog.records
    )


def test_spreadsheet_exports_with_semicolons_decimal_commas_or_tabs_are_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "EU.csv").write_text(
        "\ufeffDate;Open;High;Low;Close;Volume\n"
        + "".join(f"{fmt(T0 + 60 * i)};{i},5;{i + 1},5;{i},25;{i},75;1.00{i}\n" for i in range(3))
    )
    (tmp_path / "TAB.csv").write_text(
        "date\tclose\n" + "".join(f"{fmt(T0 + 60 * i)}\t{i}.5\n" for i in range(3))
    )
    harness = Harness(tmp_path)
    assert harness.history("EU", "1m")[2] == (T0 + 120, 2.5, 3.5, 2.25, 2.75, 1002.0)
    assert [b[4] for b in harness.history("TAB__close", "1m")] == [0.5, 1.5, 2.5]


def test_a_european_export_of_days_with_the_decimal_comma_is_read(tmp_path: Path) -> None:
    """A spreadsheet export with ``;``, ``1.005,5`` and dates ``05.01.2026`` (Germany and
    much of Europe): the thousands point made pandas read each date as a number (5012026),
    and the file was skipped for 'rows ... most are 1000000 seconds apart'. Rows appended
    are read the same way."""
    days = [T0 + 86_400 * d for d in range(4)]
    rows = "".join(
        f"{_stamp(t, '%d.%m.%Y')};1.00{d},5;1.010,5;990,5;1.00{d},25;7\r\n"
        for d, t in enumerate(days)
    )
    (tmp_path / "DAX.csv").write_text("Datum;Open;High;Low;Close;Volume\r\n" + rows)
    harness = Harness(tmp_path, date_column="Datum")
    bars = harness.history("DAX", "1d")
    assert [b[0] for b in bars] == days
    assert bars[2] == (days[2], 1002.5, 1010.5, 990.5, 1002.25, 7.0)
    with (tmp_path / "DAX.csv").open("a") as handle:
        handle.write(f"{_stamp(T0 + 4 * 86_400, '%d.%m.%Y')};1.004,5;1.010,5;990,5;1.004,25;8\r\n")
    look_now(harness)
    assert harness.history("DAX", "1d")[-1] == (
        T0 + 4 * 86_400,
        1004.5,
        1010.5,
        990.5,
        1004.25,
        8.0,
    )


def test_thousands_grouped_by_spaces_or_apostrophes_are_read(tmp_path: Path) -> None:
    """French spreadsheets group thousands with a (narrow) no-break space, ``1\u202f005,5``,
    Swiss ones with an apostrophe, ``1'005.50``: the price columns were 'not numbers', the
    candlestick missing and only ``{file}__Low`` served."""
    for name, sep in (("FR", "\u202f"), ("FR2", "\u00a0"), ("FR3", " ")):
        (tmp_path / f"{name}.csv").write_text(
            "Date;Open;High;Low;Close;Volume\n"
            + "".join(
                f"{fmt(T0 + 60 * i)};1{sep}005,5;1{sep}010,5;990,5;1{sep}002,25;12{sep}345\n"
                for i in range(3)
            )
        )
    (tmp_path / "CH.csv").write_text(
        "Date;Open;High;Low;Close;Volume\n"
        + "".join(
            f"{fmt(T0 + 60 * i)};1'005.50;1'010.50;990.50;1'002.25;12'345\n" for i in range(3)
        )
    )
    harness = Harness(tmp_path)
    assert sorted(row["name"] for row in harness.provider.get_dataset()) == [
        "CH",
        "FR",
        "FR2",
        "FR3",
    ]
    for name in ("CH", "FR", "FR2", "FR3"):
        assert harness.history(name, "1m")[2] == (T0 + 120, 1005.5, 1010.5, 990.5, 1002.25, 12345.0)


def test_an_excel_sep_line_above_the_header_names_the_separator(tmp_path: Path) -> None:
    """Excel reads and writes ``sep=;`` as the first line (the separator for Excel): the
    file was skipped for 'no date column (... the columns are 'sep=;')', as if
    CSV_DATE_COLUMN would help. Rows written after it are appended as usual."""
    rows = "".join(f"{fmt(T0 + 60 * i)};1.23{i},5;1.240,5;1.220,5;1.235,5;7\r\n" for i in range(3))
    (tmp_path / "XL.csv").write_text("sep=;\r\nDate;Open;High;Low;Close;Volume\r\n" + rows)
    harness = Harness(tmp_path)
    assert [row["name"] for row in harness.provider.get_dataset()] == ["XL"]
    assert harness.history("XL", "1m")[2] == (T0 + 120, 1232.5, 1240.5, 1220.5, 1235.5, 7.0)
    with (tmp_path / "XL.csv").open("a") as handle:
        handle.write(f"{fmt(T0 + 180)};1.233,5;1.240,5;1.220,5;1.236,5;8\r\n")
    look_now(harness)
    assert harness.history("XL", "1m")[-1] == (T0 + 180, 1233.5, 1240.5, 1220.5, 1236.5, 8.0)


def test_a_cryptodatadownload_file_with_its_address_above_the_header_is_read(
    tmp_path: Path,
) -> None:
    """CryptoDataDownload writes its address on the first line, then ``unix,date,symbol,
    open,high,low,close,Volume BTC,Volume USDT,tradecount``, newest first: the file was
    skipped for 'no date column (... the columns are 'https://www.CryptoDataDownload.com')'.
    The base volume is the volume; the epoch column ``unix`` is no line series."""
    lines = [
        "https://www.CryptoDataDownload.com",
        "unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount",
    ]
    for i in reversed(range(4)):
        t = T0 + 3600 * i
        lines.append(
            f"{t * 1000},{fmt(t)},BTC/USDT,{100 + i},{102 + i},{99 + i},{101 + i},"
            f"{10 + i},{1000 + i},{50 + i}"
        )
    (tmp_path / "Binance_BTCUSDT_1h.csv").write_text("\n".join(lines) + "\n")
    harness = Harness(tmp_path)
    names = sorted(row["name"] for row in harness.provider.get_dataset())
    assert names == [
        "Binance_BTCUSDT_1h",
        "Binance_BTCUSDT_1h__Volume USDT",
        "Binance_BTCUSDT_1h__tradecount",
    ]
    bars = harness.history("Binance_BTCUSDT_1h", "1h")
    assert bars[1] == (T0 + 3600, 101.0, 103.0, 100.0, 102.0, 11.0) and len(bars) == 4


def test_a_dukascopy_export_dated_by_gmt_time_is_read(tmp_path: Path) -> None:
    """Dukascopy's downloads name the date column ``Gmt time`` (``02.03.2026 09:00:00.000``,
    day first): the file was skipped for 'no date column'."""
    (tmp_path / "EURUSD.csv").write_text(
        "Gmt time,Open,High,Low,Close,Volume\n"
        + "".join(
            f"{_stamp(T0 + 3600 * h, '%d.%m.%Y %H:%M:%S')}.000,1.1,1.2,1.0,1.15,5.5\n"
            for h in range(3)
        )
    )
    bars = Harness(tmp_path).history("EURUSD", "1h")
    assert [b[0] for b in bars] == [T0, T0 + 3600, T0 + 7200] and bars[0][5] == 5.5


def test_a_nasdaq_com_download_with_dollar_signs_is_read(tmp_path: Path) -> None:
    """Nasdaq.com's historical data download writes ``Date,Close/Last,Volume,Open,High,Low``
    and prices as ``$185.64``: only ``{file}__Volume`` was served, no candlestick."""
    lines = ["Date,Close/Last,Volume,Open,High,Low"]
    for d in reversed(range(3)):
        lines.append(
            f"{_stamp(T0 + 86_400 * d, '%m/%d/%Y')},$18{d}.64,8248867{d},$18{d}.15,"
            f"$18{d + 1}.44,$17{d}.885"
        )
    (tmp_path / "AAPL.csv").write_text("\n".join(lines) + "\n")
    harness = Harness(tmp_path)
    assert [row["name"] for row in harness.provider.get_dataset()] == ["AAPL"]
    bar = harness.history("AAPL", "1d")[1]
    assert bar == (T0 + 86_400, 181.15, 182.44, 171.885, 181.64, 82_488_671.0)


def test_a_pandas_file_whose_date_index_had_no_name_is_read(tmp_path: Path) -> None:
    """``df.to_csv()`` of a frame indexed by unnamed dates writes ``,open,high,low,close``:
    the file was skipped for 'no date column (... the columns are 'Unnamed: 0', ...)'."""
    (tmp_path / "IDX.csv").write_text(
        ",open,high,low,close\n" + "".join(f"{fmt(T0 + 60 * i)},1,2,0.5,1.{i}\n" for i in range(3))
    )
    harness = Harness(tmp_path)
    assert [b[4] for b in harness.history("IDX", "1m")] == [1.0, 1.1, 1.2]


def test_a_file_name_written_decomposed_is_served_under_its_composed_name(
    tmp_path: Path,
) -> None:
    """A file named on macOS (HFS+ stores ``é`` as ``e`` and a combining accent, NFD; zip
    and rsync keep it) was served as that NFD name: ``Nestlé`` typed or linked (NFC) was
    an unknown symbol, and so was its column's line series."""
    stem = unicodedata.normalize("NFD", "Nestlé")
    assert stem != "Nestlé"
    write_candles(tmp_path / f"{stem}.csv", 3)
    (tmp_path / f"{stem} Zürich.csv").write_text(
        f"date,{unicodedata.normalize('NFD', 'Kurs Zürich')}\n" + f"{fmt(T0)},1\n{fmt(T0 + 60)},2\n"
    )
    harness = Harness(tmp_path)
    rows = {row["name"]: row for row in harness.provider.get_dataset()}
    line = "Nestlé Zürich__Kurs Zürich"
    assert sorted(rows) == ["Nestlé", line]
    assert rows[line]["name_label"] == "Nestlé Zürich Kurs Zürich"
    assert len(harness.history("Nestlé", "1m")) == 3
    assert [b[4] for b in harness.history(line, "1m")] == [1.0, 2.0]


def test_a_metatrader_5_export_in_utf_16_is_read(tmp_path: Path) -> None:
    """MetaTrader writes text files in UTF-16 unless told otherwise (a byte order mark, CR LF
    line ends): the file was read as Windows-1252 and skipped for 'no date column (... the
    columns are 'ÿþ<\\x00D\\x00A\\x00T\\x00E...'"""
    lines = ["<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    for i in range(3000):  # past the bytes the scan reads at the end
        o, h, lo, c, v = candle(i)
        stamp = _stamp(T0 + 60 * i, "%Y.%m.%d\t%H:%M:%S")
        lines.append(f"{stamp}\t{o}\t{h}\t{lo}\t{c}\t{v:.0f}\t0\t2")
    (tmp_path / "EURUSD.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-16")
    harness = Harness(tmp_path)
    assert harness.provider._symbols["EURUSD"][0].layout.last == T0 + 60 * 2999
    bars = harness.history("EURUSD", "1m")
    assert len(bars) == 3000 and bars[-1] == (T0 + 60 * 2999, *candle(2999))


def test_a_file_in_a_windows_code_page_is_read_not_skipped(tmp_path: Path) -> None:
    text = "date,Kurs €,Öl\n" + "".join(f"{fmt(T0 + 60 * i)},{i},{i * 2}\n" for i in range(3))
    (tmp_path / "WIN.csv").write_bytes(text.encode("cp1252"))
    harness = Harness(tmp_path)
    names = sorted(row["name"] for row in harness.provider.get_dataset())
    assert names == ["WIN__Kurs €", "WIN__Öl"]
    assert [b[4] for b in harness.history("WIN__Öl", "1m")] == [0.0, 2.0, 4.0]


def test_a_file_missing_when_first_read_is_read_once_it_is_back(minutes: Path) -> None:
    """A file that could not be read on its first request (saved by renaming a new one
    over it, replaced by a sync tool) answered "could not be read" until the provider
    restarted; it is read again once it is back or changed."""
    harness = Harness(minutes)
    path = minutes / "ACME.csv"
    path.rename(minutes / "ACME.bak")
    with pytest.raises(UnknownSymbol, match="could not be read"):
        harness.history("ACME", "1m")
    with pytest.raises(UnknownSymbol, match="could not be read"):
        harness.history("ACME", "5m")
    (minutes / "ACME.bak").rename(path)
    assert len(harness.history("ACME", "1m")) == 60
    assert len(harness.history("ACME", "5m")) == 12


def test_a_second_file_with_the_same_name_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_candles(tmp_path / "a" / "DUP.csv", 5)
    write_candles(tmp_path / "b" / "DUP.csv", 5)
    with caplog.at_level(logging.INFO):
        rows = list(Harness(tmp_path).provider.get_dataset())
    assert [(row["name"], row["path"]) for row in rows] == [("DUP", "a/DUP.csv")]
    messages = [record.getMessage() for record in caplog.records]
    assert any("DUP.csv: symbol DUP already comes from a/DUP.csv; skipped" in m for m in messages)
    assert "b/DUP.csv: 1m rows, 0 symbols" in messages  # it said "1 symbols" after skipping it


# ---------------------------------------------------------------------------- history


def test_with_zero_speed_the_whole_file_is_history(minutes: Path) -> None:
    bars = Harness(minutes).history("ACME", "1m", fmt(T0 - 3600), "now UTC")
    assert bars == [(T0 + 60 * i, *candle(i)) for i in range(60)]


def test_coarser_intervals_are_aggregated_and_utc_aligned(minutes: Path) -> None:
    harness = Harness(minutes)
    bars = harness.history("ACME", "15m")
    assert [b[0] for b in bars] == [T0, T0 + 900, T0 + 1800, T0 + 2700]
    first = [candle(i) for i in range(15)]
    assert bars[0] == (
        T0,
        first[0][0],
        max(c[1] for c in first),
        min(c[2] for c in first),
        first[-1][3],
        sum(c[4] for c in first),
    )
    assert harness.history("ACME", "1d") == [
        (T0, 100.0, 161.0, 99.0, 160.0, sum(10.0 + i for i in range(60)))
    ]


def test_weeks_open_on_monday_and_months_on_the_first(tmp_path: Path) -> None:
    start = intervals.parse_date("2026-01-14 00:00:00")  # a Wednesday
    write_candles(tmp_path / "D.csv", 70, step=86_400, start=start)
    harness = Harness(tmp_path)
    weeks = harness.history("D", "1w")
    assert weeks[0][0] == intervals.parse_date("2026-01-12 00:00:00")
    assert all((b[0] - weeks[0][0]) % (7 * 86_400) == 0 for b in weeks)
    months = [fmt(b[0]) for b in harness.history("D", "1M")]
    assert months == ["2026-01-01 00:00:00", "2026-02-01 00:00:00", "2026-03-01 00:00:00"]


def test_a_file_added_while_running_is_served_once_its_symbol_is_asked_for(
    minutes: Path,
) -> None:
    """A user drops a file in and runs populate.py while the server runs: the hub then knows
    the symbol, and the provider must find the file rather than answer unknown_symbol."""
    (minutes / "BROKEN.csv").write_text("no dates here\n1\n")
    harness = Harness(minutes)
    harness.events.clear()
    write_candles(minutes / "new" / "LATE.csv", 30)
    bars = harness.history("LATE", "1m")
    assert [b[0] for b in bars] == [T0 + 60 * i for i in range(30)]
    assert bars[0][1:] == candle(0)
    assert "LATE" in harness.clocks()  # the hub learns its replay clock too
    assert len(harness.history("LATE", "5m")) == 6
    # a file that could not be read at the start is read again once it changed
    write_candles(minutes / "BROKEN.csv", 10)
    harness.provider._rescanned = -float("inf")
    assert len(harness.history("BROKEN", "1m")) == 10
    with pytest.raises(UnknownSymbol):
        harness.provider.get_history("NOPE", "1m", "", "now UTC", 0)


def test_daily_rows_written_in_local_time_keep_their_dates(tmp_path: Path) -> None:
    """pandas writes a Europe/Berlin daily index as ``2026-03-02 00:00:00+01:00``: that is the
    day 2026-03-02, not 23:00 UTC the day before, whose bar would open every week on a Sunday
    and every month on the last day of the previous one (and move an hour with DST)."""
    start = intervals.parse_date("2026-02-23 00:00:00")  # a Monday
    lines = [HEADER]
    for i in range(40):  # across the switch to summer time on 2026-03-29
        day = fmt(start + i * 86_400)[:10]
        offset = "+01:00" if day < "2026-03-29" else "+02:00"
        lines.append(f"{day} 00:00:00{offset},{i},{i + 1},{i},{i},1")
    (tmp_path / "DAX.csv").write_text("\n".join(lines) + "\n")
    intraday = [HEADER] + [f"2026-03-02T0{h}:00:00-05:00,1,2,0,1,1" for h in range(10)]
    (tmp_path / "NY.csv").write_text("\n".join(intraday) + "\n")
    harness = Harness(tmp_path)
    days = harness.history("DAX", "1d")
    assert [b[0] for b in days] == [start + i * 86_400 for i in range(40)]
    weeks = harness.history("DAX", "1w")
    assert [(fmt(b[0])[:10], b[1]) for b in weeks[:2]] == [("2026-02-23", 0), ("2026-03-02", 7)]
    months = harness.history("DAX", "1M")
    assert [(fmt(b[0])[:10], b[1]) for b in months] == [
        ("2026-02-01", 0),
        ("2026-03-01", 6),
        ("2026-04-01", 37),
    ]
    hours = harness.history("NY", "1h")  # intraday rows still convert to UTC
    assert fmt(hours[0][0]) == "2026-03-02 05:00:00"


def test_unknown_symbols_and_unservable_intervals_raise_unknown_symbol(tmp_path: Path) -> None:
    write_candles(tmp_path / "H.csv", 10, step=3 * 60)
    harness = Harness(tmp_path)
    for symbol, interval in [("NOPE", "1m"), ("H", "1m"), ("H", "5m"), ("H", "2d")]:
        with pytest.raises(UnknownSymbol):
            harness.provider.get_history(symbol, interval, "", "now UTC", 0)
    assert len(harness.history("H", "15m")) == 2


def test_the_whole_window_is_returned_even_when_count_is_smaller(minutes: Path) -> None:
    harness = Harness(minutes)
    bars = harness.provider.get_history("ACME", "1m", fmt(T0), fmt(T0 + 1200), 5)
    assert len(bars) == 21


def test_without_a_start_count_bars_up_to_the_end_are_returned(minutes: Path) -> None:
    bars = Harness(minutes).provider.get_history("ACME", "5m", "", fmt(T0 + 1800), 3)
    assert [b[0] for b in bars] == [T0 + 1200, T0 + 1500, T0 + 1800]


def test_history_never_shows_rows_past_the_replay_clock(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.now = WALL + 5.3  # 5.3 data minutes after the midpoint
    clock = T0 + 29 * 60 + 318
    for end in ("now UTC", "2100-01-01 00:00:00"):
        bars = harness.history("ACME", "1m", fmt(T0), end)
        assert bars[-1][0] == T0 + 34 * 60 <= clock
        assert bars[-1][1:5] == (134.0, 134.0, 133.0, 133.0)  # open, then down to the low
        assert bars[-1][5] == pytest.approx(44.0 / 2)
    # the hour bar so far: row 33 (high 135) is complete, row 34 has not reached its high 136
    assert harness.history("ACME", "1h", fmt(T0), "now UTC")[-1][2] == 135.0


def test_after_the_last_row_the_file_repeats_with_later_dates(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.now = WALL + 31 + 60 * 2  # two files' spans and a minute after the last row
    bars = harness.history("ACME", "1m", fmt(T0 + 59 * 60), "now UTC")
    assert [b[0] for b in bars[:3]] == [T0 + 59 * 60, T0 + 60 * 60, T0 + 61 * 60]
    assert bars[1][1:] == candle(0) and bars[2][1:] == candle(1)
    assert bars[-1][0] == T0 + 3 * 3600
    assert harness.history("ACME", "1m", "", fmt(T0 - 1)) == []


# ---------------------------------------------------------------------------- changed files


def append_candles(path: Path, rows: range, step: int = 60, start: int = T0) -> None:
    with path.open("a") as handle:
        for i in rows:
            o, h, lo, c, v = candle(i)
            handle.write(f"{fmt(start + i * step)},{o},{h},{lo},{c},{v}\n")


def look_now(harness: Harness) -> None:
    """Let the next request look at the files again (as after CHECK_SECONDS)."""
    for file in harness.provider._files:
        file.checked = -math.inf


def changed(harness: Harness) -> list[str]:
    found = [e.symbol for e in harness.events if isinstance(e, Changed)]
    harness.events[:] = [e for e in harness.events if not isinstance(e, Changed)]
    return found


def test_rows_appended_to_a_file_are_served_and_streamed_with_a_frozen_clock(
    minutes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who appended today's bars to a file saw nothing new until a restart: the
    file was read once, and with CSV_REPLAY_SPEED=0 history ended at the last row read and
    nothing streamed. Now the new rows are history, the clock moves to the new last row,
    and a streamed key gets them as new bars; the hub is not told to forget anything."""
    harness = Harness(minutes, speed=0)
    harness.provider._subscribe(1, "ACME", "1m")
    harness.provider._subscribe(1, "ACME", "5m")
    assert harness.history("ACME", "1m")[-1][0] == T0 + 59 * 60
    harness.provider._tick()
    assert harness.updates() == []  # nothing changed: nothing sent
    append_candles(minutes / "ACME.csv", range(60, 63))
    harness.provider._tick()
    assert harness.updates() == []  # not looked at again before CHECK_SECONDS
    look_now(harness)
    harness.events.clear()
    with caplog.at_level(logging.INFO):
        harness.provider._tick()
        harness.provider._tick()
    assert harness.clocks()["ACME"].origin_data == T0 + 62 * 60
    updates = [(u.interval, u.bar, u.final) for u in harness.updates()]
    assert updates == [
        ("1m", (T0 + 60 * 60, *candle(60)), True),
        ("1m", (T0 + 61 * 60, *candle(61)), True),
        ("1m", (T0 + 62 * 60, *candle(62)), False),
        ("5m", (T0 + 60 * 60, 160.0, 164.0, 159.0, 163.0, 70.0 + 71.0 + 72.0), False),
    ]
    assert changed(harness) == []
    assert [b[0] for b in harness.history("ACME", "1m")[-3:]] == [T0 + 60 * k for k in (60, 61, 62)]
    assert [r.getMessage() for r in caplog.records].count(
        "ACME.csv: changed: read again, 1m rows up to 2026-03-02 01:02:00"
    ) == 1


def test_a_rewritten_file_serves_its_new_rows_and_tells_the_hub(minutes: Path) -> None:
    """Rows served before that changed: history after the change is the new content, and
    the hub is told to forget what it holds of the file's symbols."""
    (minutes / "ACME.csv").write_text(
        (minutes / "ACME.csv").read_text().replace(",110.0,112.0,109.0,111.0,20.0", ",1,2,0,1,5")
    )
    harness = Harness(minutes, speed=0)
    assert harness.history("ACME", "1m")[10][1:] == (1.0, 2.0, 0.0, 1.0, 5.0)
    write_candles(minutes / "ACME.csv", 60)
    look_now(harness)
    assert harness.history("ACME", "1m")[10][1:] == candle(10)
    assert changed(harness) == ["ACME"]


def test_a_file_is_looked_at_once_per_check_seconds_whatever_the_requests(
    minutes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(minutes, speed=60)
    harness.history("ACME", "1m")
    looks = []
    real = csv_module._stat
    monkeypatch.setattr(csv_module, "_stat", lambda path: looks.append(path) or real(path))
    harness.provider._subscribe(1, "ACME", "1m")
    for _ in range(100):
        harness.history("ACME", "1m")
        harness.provider._tick()
    assert len(looks) <= 1


def test_a_changed_file_that_cannot_be_read_keeps_serving_what_it_held(
    minutes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file caught while it is written anew (only its header yet) is not served as
    empty: what it held is served, logged once, until it changes again."""
    harness = Harness(minutes, speed=0)
    assert len(harness.history("ACME", "1m")) == 60
    (minutes / "ACME.csv").write_text(HEADER + "\n")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            look_now(harness)
            assert len(harness.history("ACME", "1m")) == 60
    assert sum("changed, but cannot be read" in r.getMessage() for r in caplog.records) == 1
    write_candles(minutes / "ACME.csv", 70)
    look_now(harness)
    assert len(harness.history("ACME", "1m")) == 70


def test_a_row_being_appended_is_not_read_before_its_line_ends(minutes: Path) -> None:
    """A file read while a row was being appended served the cut row ("...,160.0,16" for a
    close of 161.0) until the next look: a change of under a second ago whose last line has
    no line end waits for the next look."""
    harness = Harness(minutes, speed=0)
    assert len(harness.history("ACME", "1m")) == 60
    o, h, lo, c, v = candle(60)
    with (minutes / "ACME.csv").open("a") as handle:
        handle.write(f"{fmt(T0 + 3600)},{o},{h},{lo},{str(c)[:2]}")
    look_now(harness)
    assert len(harness.history("ACME", "1m")) == 60
    with (minutes / "ACME.csv").open("a") as handle:
        handle.write(f"{str(c)[2:]},{v}\n")
    look_now(harness)
    assert harness.history("ACME", "1m")[-1] == (T0 + 3600, *candle(60))


def test_rows_appended_ahead_of_a_running_replay_are_replayed_when_it_gets_there(
    minutes: Path,
) -> None:
    harness = Harness(minutes, speed=60, now=WALL - 20)  # at row 9 of 60, a row a second
    harness.history("ACME", "1m")  # the file is read
    append_candles(minutes / "ACME.csv", range(60, 90))
    look_now(harness)
    harness.history("ACME", "1m")  # read again: the replay has not reached the rows added
    assert changed(harness) == []
    harness.now = WALL + 45  # row 74: past the rows read at the start, within those added
    bars = harness.history("ACME", "1m", fmt(T0 + 58 * 60))
    assert [b[1:] for b in bars[:-1]] == [candle(i) for i in range(58, 74)]
    assert bars[-1][0] == T0 + 74 * 60  # forming


def test_a_replay_past_the_rows_of_a_file_that_grew_tells_the_hub(minutes: Path) -> None:
    """Past its last row the replay repeats the file; a file that grew repeats later, so
    the repeated bars served before moved: the hub is told to forget them."""
    harness = Harness(minutes, speed=60, now=WALL + 40)  # row 69: row 9 repeated
    assert harness.history("ACME", "1m")[-2][1:] == candle(8)
    append_candles(minutes / "ACME.csv", range(60, 90))
    look_now(harness)
    assert harness.history("ACME", "1m")[-2][1:] == candle(68)
    assert changed(harness) == ["ACME"]


# ---------------------------------------------------------------------------- streaming


def test_the_forming_bar_moves_in_steps_then_closes(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.provider._subscribe(1, "ACME", "1m")
    seen = []
    for k in range(6):  # a quarter of a row per step
        harness.now = WALL + 0.25 * k + 0.01
        harness.provider._tick()
        seen += [(u.bar, u.final) for u in harness.updates()]
    o, h, lo, c, v = candle(29)
    # shown whole at its last step, the bar closes as shown: its close is not sent again
    assert seen == [
        ((T0 + 29 * 60, o, o, o, o, v / 4), False),
        ((T0 + 29 * 60, o, o, lo, lo, v / 2), False),
        ((T0 + 29 * 60, o, h, lo, h, v * 3 / 4), False),
        ((T0 + 29 * 60, o, h, lo, c, v), False),
        ((T0 + 30 * 60, *candle(30)[:1] * 4, candle(30)[4] / 4), False),
        ((T0 + 30 * 60, 130.0, 130.0, 129.0, 129.0, 20.0), False),
    ]


def test_streamed_bars_match_history_at_the_same_clock(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.provider._subscribe(1, "ACME", "5m")
    last: dict[int, Bar] = {}
    for k in range(40):
        harness.now = WALL + 0.4 * k
        harness.provider._tick()
        for update in harness.updates():
            assert not last or update.bar[0] >= max(last)  # never an older bar
            last[update.bar[0]] = update.bar
        history = harness.history("ACME", "5m", fmt(T0), "now UTC")
        assert history[-1] == last[max(last)]
        assert all(last[b[0]] == b for b in history if b[0] in last)


def test_the_first_tick_publishes_the_bar_at_the_clock_after_the_file_is_read(
    minutes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first tick of a new process reads the file, which took seconds on a loaded
    machine: with the clock read before it, the stream's first update was a state of a bar
    seconds old, which history (waiting for the same read) had already served closed."""
    harness = Harness(minutes, speed=60, now=WALL + 0.01)
    load = harness.provider._load

    def slow_load(file: csv_module._File) -> None:
        load(file)
        harness.now += 2.5  # two and a half bars at speed 60

    monkeypatch.setattr(harness.provider, "_load", slow_load)
    harness.provider._subscribe(1, "ACME", "1m")
    harness.provider._tick()
    [update] = harness.updates()
    assert (update.bar, update.final) == (harness.history("ACME", "1m")[-1], False)
    assert (update.bar[0] - T0) // 60 == 31


def test_bars_skipped_between_ticks_are_published_as_final(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.provider._subscribe(1, "ACME", "1m")
    harness.provider._tick()
    harness.updates()
    harness.now = WALL + 3.5
    harness.provider._tick()
    updates = harness.updates()
    assert [(u.bar[0] - T0) // 60 for u in updates if u.final] == [29, 30, 31]
    assert [u.bar[1:] for u in updates if u.final] == [candle(i) for i in (29, 30, 31)]
    assert [(u.bar[0] - T0) // 60 for u in updates if not u.final] == [32]


@pytest.mark.parametrize("interval", ["1m", "5m", "1h"])
def test_a_bar_that_closes_as_last_shown_is_not_sent_again(minutes: Path, interval: str) -> None:
    """Every bar's close was sent twice: the forming bar once its last row was shown whole,
    then the same values again as final (299 of 1,499 updates of a 1-minute replay at speed
    60 changed nothing). No update repeats the one before it, and the last update of every
    bar is still its closed value (as history serves it)."""
    harness = Harness(minutes, speed=60)
    harness.provider._subscribe(1, "ACME", interval)
    sent: list[tuple[Bar, bool]] = []
    for k in range(250):  # a quarter of a row per step, past the end of the file
        harness.now = WALL + 0.25 * k + 0.01
        harness.provider._tick()
        sent += [(u.bar, u.final) for u in harness.updates()]
    repeats = [a for a, b in pairwise(sent) if a[0] == b[0]]
    assert repeats == []
    last = {bar[0]: bar for bar, _ in sent}
    history = {b[0]: b for b in harness.history("ACME", interval, fmt(min(last)), "now UTC")}
    closed = sorted(last)[:-1]  # all but the forming one
    assert len(closed) >= {"1m": 50, "5m": 10, "1h": 1}[interval]
    assert [last[t] for t in closed] == [history[t] for t in closed]


def test_line_series_stream_their_new_values(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "date,rate\n" + "".join(f"{fmt(T0 + 3600 * i)},{i}\n" for i in range(10))
    )
    harness = Harness(tmp_path, speed=3600)  # one row per wall second
    harness.provider._subscribe(1, "m__rate", "1h")
    harness.provider._subscribe(1, "m__rate", "4h")
    harness.provider._tick()
    harness.now += 1
    harness.provider._tick()
    updates = [(u.interval, u.bar, u.final) for u in harness.updates()]
    assert updates == [
        ("1h", (T0 + 4 * 3600, 4.0, 4.0, 4.0, 4.0, None), False),
        ("4h", (T0 + 4 * 3600, 4.0, 4.0, 4.0, 4.0, None), False),
        ("1h", (T0 + 5 * 3600, 5.0, 5.0, 5.0, 5.0, None), False),
        ("4h", (T0 + 4 * 3600, 5.0, 5.0, 5.0, 5.0, None), False),
    ]


def test_the_last_subscriber_leaving_stops_the_key(minutes: Path) -> None:
    harness = Harness(minutes, speed=60)
    harness.provider._subscribe(1, "ACME", "1m")
    harness.provider._subscribe(2, "ACME", "1m")
    harness.provider._unsubscribe(1, "ACME", "1m")
    harness.provider._tick()
    assert harness.updates()
    harness.provider._unsubscribe(2, "ACME", "1m")
    harness.now += 5
    harness.provider._tick()
    assert harness.updates() == []


def test_zero_speed_streams_nothing_and_is_never_stale(minutes: Path) -> None:
    harness = Harness(minutes, speed=0)
    harness.provider._subscribe(1, "ACME", "1m")
    harness.provider._tick()
    assert harness.updates() == []
    assert harness.provider.staleness_limit("ACME", "1m") is None
    assert Harness(minutes, speed=60).provider.staleness_limit("ACME", "1m") == 30.0
    assert Harness(minutes, speed=1).provider.staleness_limit("ACME", "1h") == 300.0


def test_the_replay_thread_publishes_by_itself_and_stops_on_shutdown(minutes: Path) -> None:
    events: list[Event] = []
    provider = CSVProvider()
    settings = config.load_settings(CSV_FOLDER_PATH=minutes, CSV_REPLAY_SPEED=600)
    provider._attach("csv", settings, events.append)
    provider.init()
    provider._subscribe(1, "ACME", "1m")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        isinstance(e, BarUpdate) and e.final for e in events
    ):
        time.sleep(0.05)
    assert any(isinstance(e, BarUpdate) and e.final for e in events)
    provider.shutdown()
    assert provider._thread is not None and not provider._thread.is_alive()


def test_a_file_is_loaded_once_under_concurrent_history_requests(
    minutes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_load = csvdata.load

    def counting_load(layout: csvdata.Layout) -> tuple[dict[str, csvdata.Rows], int, int]:
        calls.append(layout.path)
        time.sleep(0.05)
        return real_load(layout)

    monkeypatch.setattr(csv_module, "load", counting_load)
    harness = Harness(minutes, speed=60)
    results: list[int] = []
    run: Callable[[], None] = lambda: results.append(len(harness.history("ACME", "5m")))  # noqa: E731
    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [minutes / "ACME.csv"]
    assert results == [6] * 8


def test_the_sample_data_serves_every_symbol_and_interval() -> None:
    harness = Harness(DATA)
    rows = list(harness.provider.get_dataset())
    kinds = {row["type"] for row in rows}
    assert kinds == {"candlestick", "line"}
    candles = [row["name"] for row in rows if row["type"] == "candlestick"]
    assert len(candles) >= 2
    for name in candles:
        bars = harness.history(name, "1m")
        assert bars[-1][0] - bars[0][0] >= 30 * 86_400
        assert all(lo <= min(o, c) and h >= max(o, c) for _, o, h, lo, c, _ in bars)  # type: ignore[operator,type-var]
    for row in rows:
        for interval in row["intervals"]:
            assert harness.history(row["name"], interval), (row["name"], interval)
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) <= 10_000_000
