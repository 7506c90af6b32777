"""The CSV provider reads the lines appended to a file alone, not the whole file again."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.data_providers import csv as csv_module
from backend.data_providers.csv import growth
from backend.model import intervals
from tests.test_csv_provider import (
    DATE_AND_TIME,
    HEADER,
    Harness,
    _kline,
    _stamp,
    candle,
    changed,
    fmt,
    look_now,
)

# rows every 15 minutes; rows 300 ... 302 are 00:00, 00:15 and 00:30 of 2024-01-05 (a time
# of day written as digits, 1500, is 00:15:00 in a file whose first rows hold 213000)
START = intervals.parse_date("2024-01-05 00:00:00") - 300 * 900
STEP = 900


def _export(pattern: str, sep: str, columns: int) -> Callable[[int], str]:
    def line(i: int) -> str:
        values = [str(x) for x in (*candle(i), candle(i)[4])][: columns - pattern.count(sep) - 1]
        return sep.join([_stamp(START + STEP * i, pattern), *values])

    return line


def _iso(i: int) -> str:
    return f"{fmt(START + STEP * i)},{','.join(map(str, candle(i)))}"


def _european(i: int) -> str:
    o, h, lo, c, v = (str(x).replace(".", ",") for x in candle(i))
    return f"{_stamp(START + STEP * i, '%d.%m.%Y %H:%M')};{o};{h};{lo};{c};{v}"


def _yfinance(i: int) -> str:
    o, h, lo, c, v = candle(i)
    return f"{_stamp(START + STEP * i, '%Y-%m-%d %H:%M:%S+00:00')},{c},{h},{lo},{o},{v:.0f}"


# name: (the lines before the rows, a row, the line end)
FORMATS: dict[str, tuple[list[str], Callable[[int], str], str]] = {
    **{
        name: ([header], _export(pattern, sep, header.count(sep) + 1), "\n")
        for name, (header, pattern, sep) in DATE_AND_TIME.items()
    },
    "ISO, CR LF": ([HEADER], _iso, "\r\n"),
    "epoch seconds": (
        [HEADER],
        lambda i: f"{START + STEP * i},{','.join(map(str, candle(i)))}",
        "\n",
    ),
    "MetaTrader, no header": ([], _export("%Y.%m.%d,%H:%M", ",", 7), "\n"),
    "Stooq digits, no header": ([], _export("%Y%m%d,%H%M%S", ",", 7), "\r\n"),
    "Binance klines": ([], lambda i: _kline(START + STEP * i, 1000, STEP, i).rstrip("\n"), "\n"),
    "yfinance": (
        ["Price,Close,High,Low,Open,Volume", "Ticker,X,X,X,X,X", "Datetime,,,,,"],
        _yfinance,
        "\n",
    ),
    "decimal comma": (["Date;Open;High;Low;Close;Volume"], _european, "\n"),
}


def write(
    path: Path, lines: list[str], end: str, final: bool = True, encoding: str = "utf-8"
) -> None:
    with path.open("w", newline="", encoding=encoding) as handle:
        handle.write(end.join(lines) + (end if final else ""))


def append(path: Path, text: str, encoding: str = "utf-8") -> None:
    with path.open("a", newline="", encoding=encoding) as handle:
        handle.write(text)


def settled(path: Path) -> None:
    """As if the file last changed 10 s ago (its last line no longer being written)."""
    ago = time.time() - 10
    os.utime(path, (ago, ago))


@pytest.fixture
def whole_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the provider reads in full (``files.load``) from now on."""
    calls: list[Path] = []
    real = csv_module.load

    def counting(layout: csv_module.Layout, logged: int = -1) -> tuple[object, ...]:
        calls.append(layout.path)
        return real(layout, logged)

    monkeypatch.setattr(csv_module, "load", counting)
    return calls


def appended_lines(caplog: pytest.LogCaptureFixture) -> list[int]:
    """How many lines each read of appended lines parsed (from the provider's log)."""
    return [
        int(r.getMessage().split(": ")[1].split()[0])
        for r in caplog.records
        if "appended lines read from byte" in r.getMessage()
    ]


@pytest.mark.parametrize("name", FORMATS)
def test_rows_appended_in_each_format_are_read_alone_as_a_whole_read_reads_them(
    tmp_path: Path,
    name: str,
    whole_reads: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every look at a file that grew parsed the whole file again (0.3-0.4 s for a million
    rows, every 2 s while a recorder appends, the file's lock held): now the lines appended
    alone are parsed, with the file's own columns and date format (a header or none, a date
    and a time of day apart, digits, CR LF, the decimal comma), giving the bars a whole read
    gives."""
    before, line, end = FORMATS[name]
    path = tmp_path / "X.csv"
    write(path, [*before, *(line(i) for i in range(300))], end)
    harness = Harness(tmp_path)
    assert len(harness.history("X", "15m")) == 300
    whole_reads.clear()
    for rows in (range(300, 302), range(302, 303)):  # 00:00 and 00:15, then 00:30
        append(path, "".join(line(i) + end for i in rows))
        look_now(harness)
        with caplog.at_level(logging.INFO):
            bars = harness.history("X", "15m")
    assert whole_reads == []
    assert appended_lines(caplog) == [2, 1]
    assert [b[0] for b in bars[-4:]] == [START + STEP * i for i in range(299, 303)]
    assert bars[-1][1:5] == candle(302)[:4]
    assert bars == Harness(tmp_path).history("X", "15m")
    assert changed(harness) == []


def test_a_row_written_in_two_steps_is_one_bar_once_its_line_ends(
    tmp_path: Path, whole_reads: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Rows whose last one was being written were not read at all until it ended (the
    whole file was read at the next look). Now the lines ended are read at once, the row
    being written waits for its line end, and becomes exactly one bar, not a bar with half a
    number nor two."""
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    assert len(harness.history("X", "15m")) == 300
    whole_reads.clear()
    cut = 12  # in the middle of the close: "...,403.0,40"
    append(path, _iso(300) + "\n" + _iso(301) + "\n" + _iso(302)[:-cut])
    look_now(harness)
    with caplog.at_level(logging.INFO):
        bars = harness.history("X", "15m")
    assert [b[1:] for b in bars[-2:]] == [candle(300), candle(301)]
    append(path, _iso(302)[-cut:] + "\n")
    look_now(harness)
    with caplog.at_level(logging.INFO):
        bars = harness.history("X", "15m")
    assert len(bars) == 303 and bars[-1] == (START + STEP * 302, *candle(302))
    assert whole_reads == []
    assert appended_lines(caplog) == [2, 1]
    assert changed(harness) == []


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_rows_appended_to_a_file_without_a_final_line_end_are_read_alone(
    tmp_path: Path, end: str, whole_reads: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A file whose last row has no line end (a spreadsheet's export, or a recorder that
    writes the line end before each row): its last row was read once it settled, and rows
    appended after a line end are read alone; the last row is not read twice."""
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], end, final=False)
    settled(path)
    harness = Harness(tmp_path)
    assert harness.history("X", "15m")[-1] == (START + STEP * 299, *candle(299))
    whole_reads.clear()
    append(path, end + _iso(300) + end + _iso(301))  # again without a final line end
    settled(path)
    look_now(harness)
    with caplog.at_level(logging.INFO):
        bars = harness.history("X", "15m")
    assert [b[1:] for b in bars[-3:]] == [candle(299), candle(300), candle(301)]
    append(path, end + _iso(302) + end)
    look_now(harness)
    with caplog.at_level(logging.INFO):
        bars = harness.history("X", "15m")
    assert len(bars) == 303 and bars[-1] == (START + STEP * 302, *candle(302))
    assert whole_reads == []
    assert appended_lines(caplog) == [2, 1]
    assert bars == Harness(tmp_path).history("X", "15m")


def test_a_row_glued_to_a_last_row_without_line_end_makes_a_whole_read(
    tmp_path: Path, whole_reads: list[Path]
) -> None:
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n", final=False)
    settled(path)
    harness = Harness(tmp_path)
    assert len(harness.history("X", "15m")) == 300
    whole_reads.clear()
    append(path, _iso(300) + "\n")  # "...,310.0" + "2024-01-05 ..." on one line
    look_now(harness)
    assert len(harness.history("X", "15m")) == 299  # as a whole read serves it: malformed
    assert whole_reads == [path]


def test_old_rows_rewritten_at_the_same_size_along_with_an_append_are_a_change(
    tmp_path: Path, whole_reads: list[Path]
) -> None:
    """A file whose last rows were corrected (same length: 409.0 for 403.0) and which got a
    row more, between two looks, is not taken for rows appended: it is read in full and
    the hub forgets what it held."""
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    assert harness.history("X", "15m")[290][4] == candle(290)[3]
    text = path.read_text()
    assert len(text) > growth.WHOLE_BYTES / 20  # not tiny, but compared in full: small
    path.write_text(
        text.replace(f",{candle(290)[3]},", f",{candle(290)[3] + 6},") + _iso(300) + "\n"
    )
    whole_reads.clear()
    look_now(harness)
    bars = harness.history("X", "15m")
    assert bars[290][4] == candle(290)[3] + 6 and len(bars) == 301
    assert whole_reads == [path]
    assert changed(harness) == ["X"]


def test_a_row_changed_far_from_both_ends_along_with_an_append_is_found_by_the_check(
    tmp_path: Path, whole_reads: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-length edit in the middle of a big file, made with an append between two
    looks, is not in the parts of the file compared for an append: the rows appended are
    read alone, and the comparison of all the bytes read (once per VERIFY_SECONDS) finds
    the edit: the file is read in full and the hub forgets what it held."""
    path = tmp_path / "X.csv"
    rows = 20_000  # about 1 MB: sampled, not compared in full
    write(path, [HEADER, *(_iso(i) for i in range(rows))], "\n")
    harness = Harness(tmp_path)
    assert len(harness.history("X", "15m", fmt(START))) == rows
    middle = 10_007
    text = path.read_text()
    line = _iso(middle)
    edited = line.replace(f",{candle(middle)[3]},", f",{candle(middle)[3] + 1},")
    assert len(edited) == len(line) and text.count(line) == 1
    path.write_text(text.replace(line, edited) + _iso(rows) + "\n")
    whole_reads.clear()
    look_now(harness)
    bars = harness.history("X", "15m", fmt(START))
    assert len(bars) == rows + 1 and whole_reads == []  # taken for an append
    assert bars[middle][4] == candle(middle)[3]  # the edit is not seen yet
    file = harness.provider._files[0]
    assert file.mark is not None and file.mark.pending
    monkeypatch.setattr(growth, "VERIFY_SECONDS", 0.0)
    look_now(harness)
    bars = harness.history("X", "15m", fmt(START))
    assert bars[middle][4] == candle(middle)[3] + 1
    assert whole_reads == [path]
    assert changed(harness) == ["X"]


def test_a_checked_append_is_not_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    append(path, _iso(300) + "\n")
    look_now(harness)
    harness.history("X", "15m")
    monkeypatch.setattr(growth, "VERIFY_SECONDS", 0.0)
    checks: list[Path] = []
    real = growth.verify
    monkeypatch.setattr(growth, "verify", lambda p, m: checks.append(p) or real(p, m))
    for _ in range(3):
        look_now(harness)
        harness.history("X", "15m")
    assert checks == [path]


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("out of order", _iso(250) + "\n"),
        ("malformed", _iso(300).replace(",400.0,", ",x,") + "\n"),
        ("a field more", _iso(300) + ",1\n"),
        ("a stray date", f"{fmt(START + 86_400 * 3650)},1,2,0,1,5\n"),
    ],
)
def test_appended_rows_a_whole_read_serves_otherwise_make_a_whole_read(
    tmp_path: Path, case: str, text: str, whole_reads: list[Path]
) -> None:
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    whole_reads.clear()
    append(path, text)
    look_now(harness)
    bars = harness.history("X", "15m")
    assert whole_reads == [path], case
    assert [b[1:] for b in bars] == [candle(i) for i in range(300)]  # the row is not served


def test_an_appended_row_of_the_last_rows_time_replaces_it(
    tmp_path: Path, whole_reads: list[Path]
) -> None:
    """A recorder that writes the forming bar again as it changes (the later row of a
    date is served): read alone, it replaces the last bar, and the hub is not told to
    forget anything."""
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    whole_reads.clear()
    again = f"{fmt(START + STEP * 299)},1.0,2.0,0.5,1.5,7.0\n"
    append(path, again + _iso(300) + "\n")
    append(path, f"{fmt(START + STEP * 300)},3.0,4.0,2.5,3.5,8.0\n")
    look_now(harness)
    bars = harness.history("X", "15m")
    assert bars[-2:] == [
        (START + STEP * 299, 1.0, 2.0, 0.5, 1.5, 7.0),
        (START + STEP * 300, 3.0, 4.0, 2.5, 3.5, 8.0),
    ]
    assert whole_reads == [] and changed(harness) == []
    assert bars == Harness(tmp_path).history("X", "15m")


@pytest.mark.parametrize("change", ["truncated", "renamed over", "utf-16"])
def test_other_changes_are_read_in_full(
    tmp_path: Path, change: str, whole_reads: list[Path]
) -> None:
    """A smaller file, another file renamed over it (a rotation), and a UTF-16 file (whose
    lines are not cut at byte line ends) are read in full, as before."""
    path = tmp_path / "X.csv"
    encoding = "utf-16" if change == "utf-16" else "utf-8"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\r\n", encoding=encoding)
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    whole_reads.clear()
    if change == "truncated":
        write(path, [HEADER, *(_iso(i) for i in range(200))], "\r\n")
    elif change == "renamed over":
        write(tmp_path / "new", [HEADER, *(_iso(i) for i in range(301))], "\r\n")
        (tmp_path / "new").replace(path)
    else:
        append(path, _iso(300) + "\r\n", encoding="utf-16-le")
    look_now(harness)
    bars = harness.history("X", "15m")
    assert whole_reads == [path]
    assert len(bars) == (200 if change == "truncated" else 301)


def test_an_appended_row_of_another_ticker_is_not_served_as_the_files(tmp_path: Path) -> None:
    """A file of one ticker (a `ticker` column, as Polygon's files have) that got a row of
    another ticker appended: read alone, that row was one ticker (the lines appended were
    checked, not the file) and was served as the file's next bar, BBB's price on AAA's
    chart; a whole read finds two tickers and keeps serving what it held (a restart
    skips the file)."""
    path = tmp_path / "X.csv"
    write(path, ["ticker," + HEADER, *("AAA," + _iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    append(path, "BBB," + _iso(300) + "\n")
    look_now(harness)
    bars = harness.history("X", "15m")
    assert [b[1:] for b in bars] == [candle(i) for i in range(300)]


def test_rows_appended_with_the_same_ticker_are_read_alone(
    tmp_path: Path, whole_reads: list[Path]
) -> None:
    path = tmp_path / "X.csv"
    write(path, ["ticker," + HEADER, *("AAA," + _iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    whole_reads.clear()
    append(path, "AAA," + _iso(300) + "\n")
    look_now(harness)
    assert harness.history("X", "15m")[-1][1:] == candle(300)
    assert whole_reads == []


@pytest.mark.parametrize("epoch", [False, True], ids=["ISO file", "epoch file"])
def test_appended_dates_of_the_other_kind_are_read_as_a_whole_read_reads_them(
    tmp_path: Path, epoch: bool, whole_reads: list[Path]
) -> None:
    """Whether the dates are epoch numbers or text is decided for the whole column (nine
    in ten numbers): an epoch date appended to a file of ISO dates (or an ISO date to a
    file of epoch seconds), read alone, was a column of its own kind and served as a bar;
    a whole read of the file (at a restart, or any other change) does not read it."""

    def stamp(i: int) -> str:
        return str(START + STEP * i) if epoch else fmt(START + STEP * i)

    def line(i: int, when: str = "") -> str:
        return f"{when or stamp(i)},{','.join(map(str, candle(i)))}"

    path = tmp_path / "X.csv"
    write(path, [HEADER, *(line(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    whole_reads.clear()
    other = fmt(START + STEP * 300) if epoch else str(START + STEP * 300)
    append(path, line(300, other) + "\n")
    look_now(harness)
    bars = harness.history("X", "15m")
    assert bars == Harness(tmp_path).history("X", "15m")
    assert [b[1:] for b in bars] == [candle(i) for i in range(300)]
    append(path, line(301) + "\n")  # and the file goes on as it was written
    look_now(harness)
    assert harness.history("X", "15m") == Harness(tmp_path).history("X", "15m")


def test_an_appended_row_starting_with_a_byte_order_mark_is_read_as_a_whole_read_reads_it(
    tmp_path: Path,
) -> None:
    """Exports concatenated (``cat part.csv >> X.csv``), the part written with a byte order
    mark: read alone, the mark at the start of the lines appended was dropped by the
    parser (as at the start of a file) and the row served; in the middle of the file a
    whole read does not read its date."""
    path = tmp_path / "X.csv"
    write(path, [HEADER, *(_iso(i) for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X", "15m")
    append(path, "\ufeff" + _iso(300) + "\n")
    look_now(harness)
    bars = harness.history("X", "15m")
    assert bars == Harness(tmp_path).history("X", "15m")
    assert len(bars) == 300


def test_an_appended_row_of_the_last_time_without_a_line_value_drops_that_value(
    tmp_path: Path, whole_reads: list[Path]
) -> None:
    """The last row written again (a correction) with a line column left empty: read
    alone, the line kept the value of the row replaced; a whole read keeps the later row
    of a date, with no value of the line there (and the line changed at the next whole
    read, after a restart)."""
    path = tmp_path / "X.csv"
    write(path, [HEADER + ",vwap", *(f"{_iso(i)},{i}" for i in range(300))], "\n")
    harness = Harness(tmp_path)
    harness.history("X__vwap", "15m")
    whole_reads.clear()
    append(path, f"{fmt(START + STEP * 299)},1.0,2.0,0.5,1.5,7.0,\n")
    look_now(harness)
    candles, line = harness.history("X", "15m"), harness.history("X__vwap", "15m")
    assert whole_reads == [] and changed(harness) == []
    fresh = Harness(tmp_path)
    assert candles == fresh.history("X", "15m")
    assert candles[-1] == (START + STEP * 299, 1.0, 2.0, 0.5, 1.5, 7.0)
    assert line == fresh.history("X__vwap", "15m")
    assert line[-1][0] == START + STEP * 298
