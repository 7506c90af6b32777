"""CSV market data: reading one file into numpy arrays, and serving its bars at a replay clock.

This module owns the pure part of the CSV provider (``backend.data_providers.csv``):

* :func:`scan` reads a file's header, a sample of its first rows and its last bytes: the
  columns (:class:`Layout`), how its dates are written (:func:`date_format`; a date column
  and a time-of-day column are read as one, :func:`row_times`), the file's own interval
  and its first and last timestamps.
  :func:`sniff` finds how the text is written (:class:`Dialect`: the field separator, the
  decimal mark, UTF-8 or a Windows code page) from the first bytes.
* :func:`load` reads the whole file once into one :class:`Rows` per symbol, logging every
  malformed row with its path and line; :func:`read_appended` reads lines appended to it
  since, the same way (:mod:`backend.data_providers.csv.growth` finds them).
* :func:`aggregate` builds coarser bars (first open, max high, min low, last close, summed
  volume; the last value for lines); :func:`bucket` aligns times with ``intervals.floor``.
Replaying a file at a clock lives in :mod:`backend.data_providers.csv.replay`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from backend.model import intervals
from backend.model.bars import Bar

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# (CryptoDataDownload writes "unix" beside "date": neither is a series; Dukascopy: Gmt time)
DATE_NAMES = (
    "date", "timestamp", "time", "datetime", "open_time", "window_start", "unix", "gmt time",
)  # fmt: skip
TICKER_NAMES = ("ticker", "symbol")  # a column naming the instrument of each row
TIME_NAMES = ("time",)  # a time of day beside a date column (MetaTrader, Stooq, NinjaTrader)
CANDLE_NAMES = ("open", "high", "low", "close")
# the close: Investing.com calls it Price, Nasdaq.com's downloads Close/Last
CLOSE_NAMES = ("close", "price", "last", "close/last")
VOLUME_NAMES = ("volume", "vol", "tickvol")  # MetaTrader: VOL (0 for currencies), TICKVOL
# not series: Stooq's <PER> (the interval of the file), Binance's close time and "ignore"
IGNORED_NAMES = ("per", "close_time", "ignore")
# the columns of Binance's kline files (data.binance.vision), which have no header line
BINANCE_KLINE = (
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)  # fmt: skip
# letters in a field of the first line make it a header (not the T and Z of ISO dates)
_LETTER = re.compile(r"[A-Za-z]")
_ISO_LETTERS = re.compile(r"(?<=\d)T(?=\d)|(?<=\d)Z$")
SAMPLE_ROWS = 5_000
TAIL_BYTES = 64 * 1024
SNIFF_BYTES = 64 * 1024
SEPARATORS = ",;\t|"
_DECIMAL_COMMA = re.compile(r"\d,\d")
_LISTED = re.compile(r"[A-Za-z]\s*[,;\t|]\s*[A-Za-z]")  # names in one field: "date,open"
# a number written with thousands separators or a K, M or B after it (Investing.com:
# "42,123.5", "1.23M"): {t} and {d} are the thousands and the decimal mark
_WRITTEN_NUMBER = r"([+-]?(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)(?:{d}\d+)?)\s*([KMBkmb]?)"
_GROUPING = " \u00a0\u202f'"  # thousands separators of every locale: spaces, apostrophe
_MULTIPLIERS = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9}
# the UTC offset after an ISO-8601 time (group 1 is the date and time without it)
_UTC_OFFSET = r"^(.*[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"
# a time of day: 13:45, 9:30:00, 13:45:00.250, 1:45 PM (digits are read apart: 1345, 134500)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d*)?)?(?:\s*([AaPp])\.?[Mm]\.?)?")
# Dates that ISO-8601 does not cover, tried in this order (MM/DD before DD/MM); a time of day
# may follow each. Of those that read the first rows, the one whose dates are closest
# together wins: 01/02/2024, 01/03/2024 ... is two days as MM/DD, two months as DD/MM.
DATE_FORMATS = (
    "%m/%d/%Y", "%d/%m/%Y", "%m/%d/%y", "%d/%m/%y", "%d.%m.%Y", "%d.%m.%y",
    "%m-%d-%Y", "%d-%m-%Y", "%Y.%m.%d", "%Y/%m/%d", "%Y%m%d",
    "%b %d, %Y", "%d %b %Y", "%d-%b-%Y", "%d-%b-%y", "%Y-%b-%d",
)  # fmt: skip
TIME_FORMATS = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", " %I:%M %p", " %I:%M:%S %p")
# dates written as numbers: 20240102, 202401021345, 20240102134500 (never epoch seconds of 1970)
NUMERIC_DATE_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
FORMAT_SAMPLE = 500  # values of the first rows tried with each format
READABLE = 0.9  # a format must read this share of the dates of the first rows
CALENDAR = ("1d", "1w", "1M")  # intervals whose bars are calendar dates
STAGES = 4
CACHE_ENTRIES = 64
MAX_LOGGED_ROWS = 5
DUPLICATE = "duplicate date; the later row is kept"
STRAY_ROWS = 3  # at most this many rows at either edge of a file may be strays
STRAY_STEPS = 1_000  # and their gap to the rest is longer than this many of its steps
DECIMALS = 9  # summed volumes are rounded to hide float noise
_DAY = 86_400
_WEEK = 7 * _DAY
_MONDAY = intervals.floor(0, "1w") % _WEEK  # the first Monday 00:00 UTC after the epoch
_WARNINGS_LOCK = threading.Lock()


class CSVFormatError(Exception):
    """A file that cannot be served (the message says why)."""


@dataclass(frozen=True)
class Dialect:
    """How a file's text is written: what :func:`sniff` found in its first bytes."""

    separator: str = ","
    decimal: str = "."
    thousands: str | None = None
    encoding: str = "utf-8-sig"  # a byte order mark, if any, is not part of the first name
    header: bool = True  # the first line names the columns (else they are named by place)
    # lines under the header that are no rows, and the first column's name written there
    # (yfinance writes "Price,Close,...", "Ticker,MSFT,...", "Date,,...", then the rows)
    skip: tuple[int, ...] = ()
    first_name: str = ""
    # the places of columns read as text: a date column of a file with the thousands point,
    # where pandas reads 05.01.2026 as the number 5012026
    text: tuple[int, ...] = ()

    @property
    def first_line(self) -> int:
        """The line number of the first row."""
        return 1 + self.header + len(self.skip)


@dataclass(frozen=True)
class Layout:
    """What :func:`scan` learned about a file without reading all of it."""

    path: Path
    date_column: str
    candle: tuple[str, str, str, str] | None  # the open, high, low, close column names
    volume: str | None
    lines: tuple[str, ...]
    interval: str
    first: int
    last: int
    dialect: Dialect = Dialect()
    calendar: bool = False  # rows of days or longer whose dates carry a UTC offset: dropped
    time_column: str | None = None  # the time of day of the date column, if apart
    date_format: str = ""  # strptime format of the dates ("": ISO-8601 or epoch numbers)
    # the columns as read (lines appended are read with them; () when they cannot be: the
    # first column was taken as the index), and whether a time of day read as a number
    # (93000) is HHMMSS since the first rows hold one above 2359
    names: tuple[str, ...] = ()
    hhmmss: bool = False
    # what a whole read decides for the whole file, as its first rows have it: dates as
    # epoch numbers (not text), and the one ticker of a `ticker` column ("" when none)
    epoch: bool = False
    ticker: str = ""


@dataclass(frozen=True)
class Rows:
    """Bars of one symbol, oldest first; a line keeps its value in all four price arrays."""

    times: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray | None
    line: bool

    def __len__(self) -> int:
        return len(self.times)

    def take(self, i: int, j: int) -> Rows:
        v = None if self.volume is None else self.volume[i:j]
        t = self.times[i:j]
        return Rows(t, self.open[i:j], self.high[i:j], self.low[i:j], self.close[i:j], v, self.line)

    def between(self, lo: int, hi: int) -> Rows:
        """The rows with ``lo <= t <= hi``."""
        i, j = np.searchsorted(self.times, [lo, hi + 1], side="left")
        return self.take(int(i), int(j))

    def shifted(self, dt: int) -> Rows:
        if dt == 0:
            return self
        return Rows(self.times + dt, *self._values(), self.line)

    def _values(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray | None]:
        return self.open, self.high, self.low, self.close, self.volume

    def bars(self) -> list[Bar]:
        """The rows as bar tuples (NaN volume becomes ``None``)."""
        n = len(self.times)
        vols: list[float | None] = [None] * n
        if self.volume is not None:
            vols = [None if math.isnan(v) else v for v in self.volume.tolist()]
        t, o, h, lo, c = (a.tolist() for a in (self.times, *self._values()[:4]))
        return list(zip(t, o, h, lo, c, vols, strict=True))


def concat(parts: list[Rows], like: Rows) -> Rows:
    """Rows of ``parts`` one after the other (``like`` gives the shape when empty)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return like.take(0, 0)
    vols = [p.volume for p in parts if p.volume is not None]
    vol = np.concatenate(vols) if like.volume is not None else None
    o, h, lo, c = (
        np.concatenate([getattr(p, f) for p in parts]) for f in ("open", "high", "low", "close")
    )
    return Rows(np.concatenate([p.times for p in parts]), o, h, lo, c, vol, like.line)


def aggregate(rows: Rows, keys: IntArray) -> Rows:
    """One bar per run of equal ``keys`` (sorted): the bar's time is the key."""
    if len(rows) == 0:
        return rows
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    last = np.r_[starts[1:], len(keys)] - 1
    close = rows.close[last]
    if rows.line:
        return Rows(keys[starts], close, close, close, close, None, True)
    vol = None
    if rows.volume is not None:
        vol = np.add.reduceat(np.nan_to_num(rows.volume), starts).round(DECIMALS)
    high = np.maximum.reduceat(rows.high, starts)
    low = np.minimum.reduceat(rows.low, starts)
    return Rows(keys[starts], rows.open[starts], high, low, close, vol, False)


def bucket(times: IntArray, interval: str) -> IntArray:
    """``intervals.floor`` of every time (UTC-aligned; weeks on Monday, months on the 1st)."""
    if interval == "1M":
        months = times.astype("datetime64[s]").astype("datetime64[M]")
        return months.astype("datetime64[s]").astype(np.int64)
    if interval == "1w":
        return (times - _MONDAY) // _WEEK * _WEEK + _MONDAY
    step = intervals.nominal_seconds(interval)
    return times - times % step


def row_end(t: int, interval: str) -> int:
    """When a row of ``interval`` opening at ``t`` is complete."""
    if interval == "1M":
        return intervals.next_open(t, "1M")
    return t + intervals.nominal_seconds(interval)


def infer_interval(times: IntArray) -> str | None:
    """The interval of the most common positive difference between sorted times, if any."""
    diffs = np.diff(np.unique(times))
    if len(diffs) == 0:
        return None
    values, counts = np.unique(diffs, return_counts=True)
    step = int(values[int(np.argmax(counts))])
    if 28 * _DAY <= step <= 31 * _DAY:
        return "1M"
    for name in intervals.INTERVALS[:-1]:
        if intervals.nominal_seconds(name) == step:
            return name
    return None


def partial(t: int, row: tuple[float, float, float, float, float], fraction: float) -> Bar:
    """A row's ``(o, h, l, c, v)`` as revealed after ``fraction`` of its span, dated ``t``."""
    o, h, lo, c, v = row
    stage = min(STAGES - 1, max(0, int(fraction * STAGES)))
    vol = None if v is None or math.isnan(v) else round(v * (stage + 1) / STAGES, DECIMALS)
    first, second = (lo, h) if c >= o else (h, lo)  # rising bars dip first, falling ones peak
    path = [o, first, second, c][: stage + 1]
    return (t, o, max(path), min(path), path[-1], vol)


# ---------------------------------------------------------------------------- reading


def parse_times(
    values: pd.Series, calendar: bool = False, date_format: str = "", epoch: bool | None = None
) -> tuple[IntArray, BoolArray]:
    """UTC seconds of ISO-8601 / ``YYYY-MM-DD HH:MM:SS`` / epoch s, ms, µs or ns values, and
    validity;
    with a ``date_format`` (:func:`date_format`), of dates written that way, taken as UTC.

    With ``calendar`` a UTC offset is dropped: ``2026-03-02T00:00:00+01:00`` is the day
    2026-03-02 (00:00 UTC), not 23:00 the day before, so that a daily file written in local
    time keeps its dates (and its Mondays and firsts of the month in the right week and month).
    Dates in a format are parsed once each (a date column beside a time column repeats them).
    Whether they are epoch numbers or text is decided for all of them (nine in ten
    numbers), or given (``epoch``: as a whole read of their file decided, for lines added).
    """
    if date_format:
        return _by_value(values, lambda texts: _stamps(_text(texts).str.strip(), date_format))
    if calendar:
        values = values.astype(str).str.strip().str.replace(_UTC_OFFSET, r"\1", regex=True)
    numeric = _epoch_numbers(values, epoch)
    if numeric is not None:
        # seconds up to 1e11 (the year 5138), then milli-, micro- (Binance's files since
        # 2025), nanoseconds (Polygon's flat files)
        magnitude = np.abs(numeric)
        unit = np.select(
            [magnitude >= 1e17, magnitude >= 1e14, magnitude >= 1e11], [1e9, 1e6, 1e3], 1
        )
        secs = numeric / unit
        valid = np.isfinite(secs)
        return np.floor(np.where(valid, secs, 0)).astype(np.int64), valid
    return _stamps(values.astype(str), "ISO8601")


def _epoch_numbers(values: pd.Series, epoch: bool | None = None) -> npt.NDArray[np.float64] | None:
    """``values`` as numbers when they are epoch numbers (``epoch``; when None, when nine in
    ten of those present are numbers), else None (text dates)."""
    if epoch is False:
        return None
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if epoch is None:
        present = values.notna().to_numpy()
        epoch = bool(present.any() and np.isfinite(numeric[present]).mean() >= 0.9)
    return numeric if epoch else None


def _epoch(values: pd.Series, calendar: bool, date_format: str) -> bool:
    """Whether :func:`parse_times` reads ``values`` as epoch numbers."""
    if date_format:
        return False
    if calendar:
        values = values.astype(str).str.strip().str.replace(_UTC_OFFSET, r"\1", regex=True)
    return _epoch_numbers(values) is not None


def _stamps(texts: pd.Series, fmt: str) -> tuple[IntArray, BoolArray]:
    stamps = pd.to_datetime(texts, utc=True, format=fmt, errors="coerce")
    raw = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    valid = ~np.isnat(raw)
    return np.where(valid, raw.astype(np.int64), 0), valid


def _by_value(
    values: pd.Series, parse: Callable[[pd.Series], tuple[IntArray, BoolArray]]
) -> tuple[IntArray, BoolArray]:
    """``parse`` applied to each distinct value once (missing ones are invalid)."""
    codes, uniques = pd.factorize(values)
    times, valid = parse(pd.Series(uniques, dtype=values.dtype))
    return np.append(times, 0)[codes], np.append(valid, False)[codes]


def _text(values: pd.Series) -> pd.Series:
    """``values`` as text; whole numbers without a decimal part (pandas reads a column of
    ``20240102`` with a blank cell as floats: ``20240102.0``), missing ones as ``NA``."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        with contextlib.suppress(TypeError, ValueError):  # not whole numbers: as they are
            return values.astype("Int64").astype("string")
    return values.astype("string")


def time_of_day(values: pd.Series, hhmmss: bool = False) -> tuple[IntArray, BoolArray]:
    """Seconds since midnight of times of day (``13:45``, ``9:30:00``, ``1:45 PM``, or
    digits: ``1345``, ``134500``), and validity.

    Digits are ``HHMM`` up to four of them, ``HHMMSS`` above. A column read as numbers lost
    the zero in front (``093000`` is ``93000``): there they are ``HHMM`` when no value of the
    column is above 2359 (and not ``hhmmss``: rows appended to a file whose first rows had
    one), so ``930`` is 09:30 and ``93000`` 09:30:00.
    """
    if pd.api.types.is_numeric_dtype(values.dtype):
        n = values.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(n) & (n >= 0) & (n == np.floor(n)) & (n < 1e6)
        v = np.where(whole, n, 0).astype(np.int64)
        if v.max(initial=0) <= 2359 and not hhmmss:
            h, m, sec = v // 100, v % 100, np.zeros_like(v)
        else:
            h, m, sec = v // 10_000, v // 100 % 100, v % 100
        valid = whole & (h < 24) & (m < 60) & (sec < 60)
        return np.where(valid, h * 3600 + m * 60 + sec, 0), valid

    def parse(texts: pd.Series) -> tuple[IntArray, BoolArray]:
        secs = np.array([_clock(str(text).strip()) for text in texts], dtype=np.int64)
        return np.maximum(secs, 0), secs >= 0

    return _by_value(values, parse)


def _clock(text: str) -> int:
    """Seconds since midnight of one time of day (:func:`time_of_day`), or -1."""
    if text.isdigit() and len(text) <= 6:
        text = text.zfill(4 if len(text) <= 4 else 6)
        h, m, sec = int(text[:2]), int(text[2:4]), int(text[4:] or 0)
    elif match := _CLOCK.fullmatch(text):
        h, m, sec = (int(g or 0) for g in match.group(1, 2, 3))
        if match.group(4):  # 12-hour: 12:05 AM is 00:05, 12:05 PM is 12:05
            if not 1 <= h <= 12:
                return -1
            h = h % 12 + (12 if match.group(4) in "Pp" else 0)
    else:
        return -1
    return h * 3600 + m * 60 + sec if h < 24 and m < 60 and sec < 60 else -1


def row_times(
    dates: pd.Series,
    times: pd.Series | None,
    calendar: bool = False,
    date_format: str = "",
    hhmmss: bool = False,
    epoch: bool | None = None,
) -> tuple[IntArray, BoolArray]:
    """UTC seconds of the rows (:func:`parse_times`), plus the time of day of a column of
    its own (:func:`time_of_day`), and validity."""
    found, valid = parse_times(dates, calendar, date_format, epoch)
    if times is None:
        return found, valid
    seconds, clock_valid = time_of_day(times, hhmmss)
    return found + seconds, valid & clock_valid


def _time_column(frame: pd.DataFrame, date: str) -> str | None:
    """The column of the time of day of ``date``'s dates, if they are apart: a column named
    ``time`` that holds times of day, beside dates that hold none."""
    by_lower = {name.lower(): name for name in frame.columns if name != date}
    name = next((by_lower[n] for n in TIME_NAMES if n in by_lower), None)
    if name is None:
        return None
    present = frame[name].notna().to_numpy(dtype=bool)
    if not present.any() or time_of_day(frame[name])[1][present].mean() < READABLE:
        return None
    dates = _text(frame[date]).dropna()
    if len(dates) and dates.str.contains(":").mean() >= READABLE:
        return None  # the dates have their time already
    return name


def date_format(values: pd.Series) -> str | None:
    """How the dates of the first rows are written: ``""`` for what :func:`parse_times`
    reads by default (ISO-8601, epoch seconds or milliseconds), a ``strptime`` format (of
    :data:`NUMERIC_DATE_FORMATS`, or of :data:`DATE_FORMATS` with :data:`TIME_FORMATS`), or
    ``None`` when none reads :data:`READABLE` of them."""
    present = values.dropna()
    if not len(present):
        return ""
    # spread over the rows: the first rows alone may hold a single day, which 01/02/2024
    # is as MM/DD as much as DD/MM
    sample = present.iloc[np.linspace(0, len(present) - 1, FORMAT_SAMPLE).astype(int)]
    numeric = pd.to_numeric(sample, errors="coerce")
    if numeric.notna().mean() >= READABLE:
        whole = numeric.dropna()
        lengths = set(whole.abs().astype("int64").astype(str).str.len()) if len(whole) else set()
        if len(lengths) == 1 and (whole == whole.round()).all():
            fmt = NUMERIC_DATE_FORMATS.get(lengths.pop())
            if fmt is not None and parse_times(sample, date_format=fmt)[1].mean() >= READABLE:
                return fmt
        return ""
    if parse_times(sample)[1].mean() >= READABLE:
        return ""
    best: tuple[float, int, str] | None = None
    for fmt in (d + t for d in DATE_FORMATS for t in TIME_FORMATS):
        times, valid = parse_times(sample, date_format=fmt)
        if valid.mean() >= READABLE:
            span = int(times[valid].max() - times[valid].min())
            if best is None or (-valid.mean(), span) < best[:2]:
                best = (-valid.mean(), span, fmt)
    return None if best is None else best[2]


def numbers(raw: pd.Series, dialect: Dialect = Dialect()) -> pd.Series:
    """The numbers of a column (NaN where there is none), also those written with thousands
    separators or a K, M or B for thousands, millions, billions (``"42,123.5"`` in a file
    separated by commas, ``1.23M``, ``456.7K``; ``1.234,5`` with the decimal comma, and
    there ``1 234,5`` with a space or no-break space; ``1'234.5`` with an apostrophe), or
    after a ``$``, ``€`` or ``£`` (``$185.64``)."""
    values = pd.to_numeric(raw, errors="coerce")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return values
    failed = values.isna() & raw.notna()
    if not failed.any():
        return values
    thousands, decimal = (".", ",") if dialect.decimal == "," else (",", ".")
    # or an apostrophe (Swiss: 1'005.50), and with the decimal comma a space (no-break in
    # French spreadsheets: 1\u202f005,5)
    grouping = _GROUPING if dialect.decimal == "," else "'"
    thousands = f"[{re.escape(thousands)}{grouping}]"
    pattern = _WRITTEN_NUMBER.format(t=thousands, d=re.escape(decimal))
    # a currency sign before it: Nasdaq.com's downloads write $185.64
    found = raw[failed].astype(str).str.strip().str.extract(f"^[$€£]?\\s*{pattern}$")
    digits = found[0].str.replace(thousands, "", regex=True).str.replace(decimal, ".")
    scale = found[1].str.lower().map(_MULTIPLIERS)
    values = values.astype(np.float64)
    values[failed] = pd.to_numeric(digits, errors="coerce") * scale
    return values


def _numeric_columns(frame: pd.DataFrame, skip: set[str], dialect: Dialect) -> list[str]:
    found = []
    for name in frame.columns:
        lower = str(name).lower()
        if name in skip or lower.startswith("unnamed:") or lower in (*IGNORED_NAMES, *DATE_NAMES):
            continue
        raw = frame[name]
        parsed = numbers(raw, dialect)
        if parsed.notna().any() and parsed.notna().sum() >= 0.5 * raw.notna().sum():
            found.append(name)
    return found


def detect_columns(
    frame: pd.DataFrame, date_column: str = "", dialect: Dialect = Dialect()
) -> Layout:
    """The date, candle, volume and line columns of a sample (interval and times unset)."""
    by_lower = {name.lower(): name for name in frame.columns}
    wanted = (date_column.lower(), *DATE_NAMES) if date_column else DATE_NAMES
    date = next((by_lower[n] for n in wanted if n in by_lower), None)
    if date is None and len(frame.columns) and str(frame.columns[0]) == "Unnamed: 0":
        date = frame.columns[0]  # pandas' to_csv() of a date index without a name: ",Open,..."
    if date is None and len(frame.columns) == 1 and _LISTED.search(str(frame.columns[0])):
        raise CSVFormatError(
            f"each line is one quoted field ({str(frame.columns[0])[:60]!r}): save the file"
            " again without quotes around whole lines (a spreadsheet that read the file"
            " as one column wrote it so)"
        )
    if date is None:
        found = ", ".join(repr(str(name)) for name in frame.columns[:8])
        raise CSVFormatError(
            f"no date column (looked for {', '.join(wanted)}; the columns are {found}):"
            " name it with CSV_DATE_COLUMN"
        )
    _one_ticker(frame)
    time = _time_column(frame, date)
    numeric = _numeric_columns(frame, {date, time} if time else {date}, dialect)
    lower = {name.lower().rstrip("."): name for name in numeric}  # Investing.com: "Vol."
    candle = None
    close = next((lower[n] for n in CLOSE_NAMES if n in lower), None)
    if close is not None and all(n in lower for n in CANDLE_NAMES[:3]):
        o, h, lo = (lower[n] for n in CANDLE_NAMES[:3])
        candle = (o, h, lo, close)
    volumes = [lower[n] for n in VOLUME_NAMES if n in lower] if candle else []
    if candle and not volumes:  # CryptoDataDownload: "Volume BTC" (the base), "Volume USDT"
        volumes = [name for low, name in lower.items() if low.startswith("volume ")][:1]
    # the first that is not all zeros (MetaTrader writes VOL 0 for currencies, TICKVOL not)
    counted = [name for name in volumes if numbers(frame[name], dialect).any()]
    volume = next(iter(counted or volumes), None)
    used = {*(candle or ()), volume}
    lines = tuple(name for name in numeric if name not in used)
    if candle is None and not lines:
        raise CSVFormatError(f"no numeric column{_example_values(frame, date)}")
    return Layout(Path(), date, candle, volume, lines, "", 0, 0, time_column=time)


def _one_ticker(frame: pd.DataFrame) -> str:
    """The ticker of the rows (``""`` when no column ``ticker`` or ``symbol`` names one);
    ``CSVFormatError`` for rows of several instruments in one file (such a column with more
    than one value: Polygon's flat files hold every ticker of a day), which would be served
    as one symbol whose rows repeat every date."""
    by_lower = {name.lower(): name for name in frame.columns}
    found = ""
    for name in (by_lower[n] for n in TICKER_NAMES if n in by_lower):
        tickers = frame[name].dropna().unique()
        if len(tickers) > 1:
            shown = ", ".join(str(t) for t in tickers[:3]) + (", ..." if len(tickers) > 3 else "")
            raise CSVFormatError(
                f"the rows are of {len(tickers)} tickers (column {name!r}: {shown}):"
                " a file is one symbol; write each ticker's rows to a file of its own"
            )
        found = found or "".join(str(t) for t in tickers)
    return found


def _example_values(frame: pd.DataFrame, date: str) -> str:
    """``": the values of 'open' are such as '1,234.5'"``: what the first column other
    than the date holds, for a file whose columns hold no numbers (a thousands separator,
    a currency sign), or ``""`` when there is no such column."""
    for name in frame.columns:
        if name == date:
            continue
        value = next((str(v).strip() for v in frame[name] if str(v).strip()), "")
        if value and value != "nan":
            return f": the values of {str(name)!r} are such as {value[:40]!r}"
    return ""


def sniff(path: Path) -> Dialect:
    """The separator (``,`` ``;`` tab ``|``), decimal mark and encoding of ``path``.

    Text that is not UTF-8 is read as Windows-1252, what spreadsheets on Windows write (a
    byte that is not even that becomes U+FFFD), or as UTF-16 after its byte order mark
    (what MetaTrader writes unless told otherwise). Files with ``;`` between fields often write
    ``1,5`` for one and a half and ``1.000`` for a thousand: a ``;`` file whose sample holds
    a digit, comma, digit gets the decimal comma and the thousands point.
    """
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    encoding = "utf-8-sig"
    try:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            encoding = "utf-16"
            text = head[: len(head) // 2 * 2].decode(encoding, "replace")
        else:
            text = head.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut by the end of the sample
            encoding = "cp1252"
        text = head.decode(encoding, "replace")
    lines = text.splitlines()
    preamble, separator = _preamble(lines[:2])
    sample = "\n".join(lines[preamble : preamble + 50])
    if not separator:
        try:
            separator = csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
        except csv.Error:  # one column, or nothing the sniffer can tell apart
            separator = ","
    header = _is_header(sample, separator)
    skip, first_name = _yfinance_lines(sample, separator) if header else ((), "")
    skip = (*range(preamble), *(line + preamble for line in skip))
    if separator == ";" and _DECIMAL_COMMA.search(sample):
        return Dialect(separator, ",", ".", encoding, header, skip, first_name)
    return Dialect(separator, ".", None, encoding, header, skip, first_name)


def _preamble(lines: list[str]) -> tuple[int, str]:
    """How many lines before the header are no part of the table (0 or 1), and the
    separator that line names ("" when none): Excel's ``sep=;`` (the separator of the file
    for Excel), or a single field over a table of several, such as the address that
    CryptoDataDownload writes above its header (``https://www.CryptoDataDownload.com``)."""
    if not lines:
        return 0, ""
    first = lines[0].strip()
    named = re.fullmatch(r"sep=(.)", lines[0].rstrip("\r\n"), re.IGNORECASE)
    if named and named.group(1) in SEPARATORS:
        return 1, named.group(1)
    fields = sum(lines[1].count(c) for c in SEPARATORS) if len(lines) > 1 else 0
    if first and fields >= 2 and not any(c in first for c in SEPARATORS):
        return 1, ""
    return 0, ""


def _yfinance_lines(sample: str, separator: str) -> tuple[tuple[int, ...], str]:
    """The lines under the header that yfinance's ``to_csv`` writes (``Ticker,MSFT,...``
    and ``Date,,,...``: its columns have two levels, the date is the index), and the name
    of the date column written on the second; ``((), "")`` for any other file.
    ``CSVFormatError`` for a download of several tickers (one column per price and ticker).
    """
    lines = [next(csv.reader([line], delimiter=separator), []) for line in sample.splitlines()[1:3]]
    if len(lines) < 2 or not lines[0] or not lines[1] or lines[0][0].strip().lower() != "ticker":
        return (), ""
    if not lines[1][0].strip() or any(field.strip() for field in lines[1][1:]):
        return (), ""
    tickers = sorted({field.strip() for field in lines[0][1:] if field.strip()})
    if len(tickers) > 1:
        raise CSVFormatError(
            f"the columns are of {len(tickers)} tickers ({', '.join(tickers[:3])}"
            f"{', ...' if len(tickers) > 3 else ''}): a file is one symbol; download or"
            " write each ticker to a file of its own"
        )
    return (1, 2), lines[1][0].strip()


def _is_header(sample: str, separator: str) -> bool:
    """Whether the first line names the columns: a field of it has a letter (not the T or
    Z of an ISO-8601 date). Binance's kline files and MetaTrader's history exports have no
    header: their first line is a row of numbers and dates."""
    line = next((line for line in sample.splitlines() if line.strip()), "")
    fields = next(csv.reader([line], delimiter=separator), [])
    texts = [_ISO_LETTERS.sub("", field.strip()) for field in fields]
    return len(texts) < 2 or any(_LETTER.search(t) for t in texts) or not any(texts)


def _options(dialect: Dialect) -> dict[str, Any]:
    """``pandas.read_csv`` arguments of every read of a file written as ``dialect``."""
    return {
        "skip_blank_lines": False,
        "skipinitialspace": True,
        "sep": dialect.separator,
        "decimal": dialect.decimal,
        "thousands": dialect.thousands,
        "encoding": dialect.encoding,
        "encoding_errors": "replace",
        "na_values": ["-"],  # Investing.com's missing volume
        "dtype": dict.fromkeys(dialect.text, str) or None,
    }


def _read(
    path: Path,
    nrows: int | None,
    bad_lines: Literal["error", "warn", "skip"],
    dialect: Dialect,
) -> pd.DataFrame:
    frame: pd.DataFrame = pd.read_csv(
        path,
        header=0 if dialect.header else None,
        skiprows=list(dialect.skip) or None,
        nrows=nrows,
        on_bad_lines=bad_lines,
        **_options(dialect),
    )
    if dialect.header:
        names = [_column_name(name) for name in frame.columns]
        if dialect.first_name and names:
            names[0] = dialect.first_name
        frame.columns = pd.Index(names)
    else:
        frame.columns = pd.Index(_names_by_place(frame.head(SAMPLE_ROWS)))
    return frame


def _names_by_place(frame: pd.DataFrame) -> list[str]:
    """Names for the columns of a file without a header line: Binance's kline columns
    (:data:`BINANCE_KLINE`, twelve with open and close times in epoch milli- or
    microseconds), else ``date`` (and ``time`` when the second column is a time of day),
    then ``open``, ``high``, ``low``, ``close`` and ``volume`` when the next four are prices
    (high at or above open and close, low at or below), and ``value`` or ``column N``."""
    columns = [frame[c] for c in frame.columns]
    n = len(columns)
    if n == len(BINANCE_KLINE):
        opens, closes = (pd.to_numeric(columns[i], errors="coerce") for i in (0, 6))
        if (opens >= 1e11).mean() >= READABLE and (closes > opens).mean() >= READABLE:
            return list(BINANCE_KLINE)
    names = ["date"]
    if n > 2 and not _text(columns[0]).str.contains(":").any():
        present = columns[1].notna().to_numpy(dtype=bool)
        if present.any() and time_of_day(columns[1])[1][present].mean() >= READABLE:
            names.append("time")
    if n - len(names) >= 4 and _prices(columns[len(names) : len(names) + 4]):
        names += ["open", "high", "low", "close"]
        if n > len(names):
            names.append("volume")
    if n == len(names) + 1:
        return [*names, "value"]
    return names + [f"column {k + 1}" for k in range(len(names), n)]


def _prices(columns: list[pd.Series]) -> bool:
    """Whether four columns read as open, high, low and close prices."""
    o, h, lo, c = (pd.to_numeric(col, errors="coerce") for col in columns)
    rows = o.notna() & h.notna() & lo.notna() & c.notna()
    if not rows.any():
        return False
    ok = (h >= o) & (h >= c) & (lo <= o) & (lo <= c) & rows
    return bool(ok.sum() >= READABLE * rows.sum())


def _column_name(name: object) -> str:
    """A header name without spaces around it nor the angle brackets of MetaTrader's and
    Stooq's exports (``<DATE>`` is ``DATE``)."""
    text = str(name).strip()
    if len(text) > 2 and text.startswith("<") and text.endswith(">"):
        return text[1:-1].strip()
    return text


def _read_all(path: Path, dialect: Dialect) -> tuple[pd.DataFrame, list[int]]:
    """The whole file, and the line numbers of rows skipped for a wrong number of fields."""
    try:
        return _read(path, None, "error", dialect), []
    except pd.errors.ParserError:
        pass
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        frame = _read(path, None, "warn", dialect)
    found = re.findall(r"Skipping line (\d+)", " ".join(str(w.message) for w in caught))
    return frame, sorted(int(n) for n in found)


def _head(path: Path, date_column: str) -> tuple[Dialect, pd.DataFrame, Layout]:
    """The dialect, first rows and columns of ``path``. In a file with the thousands point
    the date column is read as text: pandas read ``05.01.2026`` as the number 5012026, so
    a spreadsheet's export (``;``, ``1.005,5``, ``DD.MM.YYYY``) was skipped for rows 1,000,000
    seconds apart."""
    dialect = sniff(path)
    head = _read(path, SAMPLE_ROWS, "skip", dialect)
    if head.dropna(how="all").empty:
        raise CSVFormatError("no rows under the header")
    layout = detect_columns(head, date_column, dialect)
    if dialect.thousands and pd.api.types.is_numeric_dtype(head[layout.date_column].dtype):
        dialect = replace(dialect, text=(list(head.columns).index(layout.date_column),))
        head = _read(path, SAMPLE_ROWS, "skip", dialect)
    return dialect, head, layout


def scan(path: Path, date_column: str = "") -> Layout:
    """Columns, interval and time range of ``path`` from its head and tail only."""
    try:
        dialect, head, layout = _head(path, date_column)
        _warn_unread(path, head, layout)
        time_column = layout.time_column
        dates = head[layout.date_column]
        clock = head[time_column] if time_column else None
        columns = list(head.columns)
        indexes = [columns.index(name) for name in (layout.date_column, time_column) if name]
        tail_dates, tail_clock = _tail_dates(path, indexes, dialect)
        fmt = date_format(pd.concat([_text(dates), tail_dates], ignore_index=True))
        times, valid = row_times(dates, clock, date_format=fmt or "")
        local, local_valid = row_times(dates, clock, calendar=True)
        sample = np.sort(times[valid])
        interval = infer_interval(sample)
        shifted = not fmt and bool(np.any((local != times) & local_valid))
        if shifted and interval in (None, *CALENDAR):  # days written in local time
            days = infer_interval(np.sort(local[local_valid]))  # 2026-03-02T00:00:00+01:00
            calendar = days in CALENDAR
        else:
            calendar = False
        if calendar:
            times, valid, sample = local, local_valid, np.sort(local[local_valid])
            interval = infer_interval(sample)
        tail, tail_valid = row_times(tail_dates, tail_clock, calendar, fmt or "")
        tail = tail[tail_valid]
        names = tuple(head.columns) if isinstance(head.index, pd.RangeIndex) else ()
        hhmmss = clock is not None and _hhmmss(clock)
        epoch = _epoch(dates, calendar, fmt or "")
        ticker = _one_ticker(head)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CSVFormatError(f"cannot read: {exc}") from exc
    if not len(sample):
        example = next((str(v).strip() for v in dates if str(v).strip()), "")
        where = f"column {layout.date_column!r}"
        if time_column:
            where = f"columns {layout.date_column!r} and {time_column!r}"
        raise CSVFormatError(
            f"no readable date in the first rows of {where} (such as {example[:40]!r}):"
            " dates must be ISO-8601 (2026-03-02T09:30:00+01:00), YYYY-MM-DD HH:MM:SS,"
            " YYYY.MM.DD, YYYYMMDD, MM/DD/YYYY, DD/MM/YYYY, DD.MM.YYYY, Jan 02, 2024 or"
            " epoch seconds or milliseconds, the time of day after the date or in a column"
            " 'Time'"
        )
    if interval is None:
        raise CSVFormatError(
            f"rows are not spaced by a standard interval (1m ... 1M): {_spacing(sample)}"
        )
    ends = np.concatenate([sample, tail])
    ends = ends[~strays(ends)]
    candle, volume, lines = layout.candle, layout.volume, layout.lines
    first, last = _range(ends)
    return Layout(
        path,
        layout.date_column,
        candle,
        volume,
        lines,
        interval,
        first,
        last,
        dialect,
        calendar,
        time_column,
        fmt or "",
        names,
        hhmmss,
        epoch,
        ticker,
    )


def _hhmmss(clock: pd.Series) -> bool:
    """Whether times of day read as numbers hold one above 2359 (so digits are HHMMSS)."""
    if not pd.api.types.is_numeric_dtype(clock.dtype):
        return False
    n = clock.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.nanmax(n, initial=0) > 2359)


def _warn_unread(path: Path, head: pd.DataFrame, layout: Layout) -> None:
    """Log the open/high/low/close/volume columns that are not served because their values
    are not numbers (such as ``1,234`` in a file separated by commas or tabs)."""
    used = {*(layout.candle or ()), layout.volume, *layout.lines}
    for name in head.columns:
        if name not in used and str(name).lower() in (*CANDLE_NAMES, *VOLUME_NAMES):
            example = next((str(v) for v in head[name] if isinstance(v, str) and v.strip()), "")
            logger.warning(
                "%s: column %r is not served: its values are not numbers (such as %r)",
                path,
                name,
                example[:40],
            )


def _spacing(sample: IntArray) -> str:
    """How the rows of ``sample`` (sorted seconds) are spaced, for a message."""
    steps = np.diff(np.unique(sample))
    if not len(steps):
        return "a single date in the first rows"
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[int(np.argmax(counts))])
    return f"most are {step} second{'' if step == 1 else 's'} apart"


def strays(times: IntArray) -> BoolArray:
    """Where ``times`` holds a stray: one of at most :data:`STRAY_ROWS` rows at either end
    of the file's time range whose gap to the rest is longer than all the rest spans and
    than :data:`STRAY_STEPS` of the file's usual step: a date typed wrong (2030 or 1970 in a
    file of 2025), whose bar would stand alone years from the data and hide it from every
    chart. A real gap (a listing that paused for a year) has rows on both sides."""
    n = len(times)
    found = np.zeros(n, dtype=bool)
    if n < 2 * STRAY_ROWS + 2:
        return found
    order = np.argsort(times, kind="stable")
    t = times[order]
    gaps = np.diff(t)
    steps = gaps[gaps > 0]
    least = STRAY_STEPS * (float(np.median(steps)) if len(steps) else 0.0)
    lo, hi = 0, n  # the rows kept: t[lo:hi]; a stray at one end must not widen the other's
    for _ in range(2):  # "rest" (a 1970 row and a 2030 row in one file)
        if lo == 0:
            lo = next(
                (
                    k
                    for k in range(1, STRAY_ROWS + 1)
                    if t[k] - t[k - 1] > max(least, t[hi - 1] - t[k])
                ),
                0,
            )
        if hi == n:
            hi = n - next(
                (
                    k
                    for k in range(1, STRAY_ROWS + 1)
                    if t[hi - k] - t[hi - k - 1] > max(least, t[hi - k - 1] - t[lo])
                ),
                0,
            )
    found[order[:lo]] = True
    found[order[hi:]] = True
    return found


def _range(times: IntArray) -> tuple[int, int]:
    return int(times.min()), int(times.max())


def _tail_dates(
    path: Path, indexes: list[int], dialect: Dialect
) -> tuple[pd.Series, pd.Series | None]:
    """The dates of the last rows, and their times of day when in a column of their own:
    ``indexes`` are the date column's and the time of day's."""
    with path.open("rb") as handle:
        encoding = dialect.encoding
        if encoding == "utf-16":  # the byte order is in the mark at the start only
            encoding = "utf-16-be" if handle.read(2) == b"\xfe\xff" else "utf-16-le"
        size = handle.seek(0, 2)
        handle.seek(max(0, size - TAIL_BYTES) // 2 * 2)
        text = handle.read().decode(encoding, "replace")
    lines = text.splitlines()[1:]  # the header, or a line cut in the middle
    rows = [
        row for row in csv.reader(lines, delimiter=dialect.separator) if len(row) > max(indexes)
    ]
    dates = pd.Series([row[indexes[0]] for row in rows], dtype="string")
    times = pd.Series([row[indexes[1]] for row in rows], dtype=object) if len(indexes) > 1 else None
    return dates, times


def load(layout: Layout, logged: int = -1) -> tuple[dict[str, Rows], int, int, int]:
    """Every symbol's rows (key ``""`` for the candlestick, the column for a line), the
    first and last valid row time, and how many malformed rows were skipped. Malformed rows
    are logged, unless ``logged`` of them were when the file was read before."""
    try:
        frame, skipped = _read_all(layout.path, layout.dialect)
        _one_ticker(frame)
        blank = frame.isna().all(axis=1).to_numpy()
        problems = _Problems(layout.path, skipped, blank, layout.dialect.first_line)
        clock = frame[layout.time_column] if layout.time_column else None
        dates = frame[layout.date_column]
        times, valid = row_times(dates, clock, layout.calendar, layout.date_format)
    except (OSError, ValueError, UnicodeDecodeError, KeyError) as exc:
        raise CSVFormatError(f"cannot read: {exc!r}") from exc
    problems.add(~valid, "unreadable date")
    stray = np.zeros(len(valid), dtype=bool)
    stray[np.flatnonzero(valid)] = strays(times[valid])
    valid = valid & ~problems.add(stray, "a date far from every other row")
    out = _symbol_rows(frame, layout, times, valid, problems)
    malformed = problems.count()
    if malformed != logged:
        problems.log()
    used = [rows.times for rows in out.values() if len(rows)]
    if not used:
        raise CSVFormatError("no valid row")
    first, last = _range(np.concatenate(used))
    return out, first, last, malformed


def _symbol_rows(
    frame: pd.DataFrame, layout: Layout, times: IntArray, valid: BoolArray, problems: _Problems
) -> dict[str, Rows]:
    """Every symbol's rows of ``frame`` (of the rows ``valid`` so far), sorted by time."""
    duplicates = _earlier_duplicates(times, valid)
    valid = valid & ~problems.add(duplicates, DUPLICATE)
    columns = {
        name: _column(frame, name, valid, problems, layout.dialect) for name in _names(layout)
    }
    out: dict[str, Rows] = {}
    if layout.candle:
        o, h, lo, c = (columns[name][0] for name in layout.candle)
        finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
        problems.add(valid & ~finite, "missing price")
        ok, vol = valid & finite, None
        if layout.volume:
            vol, bad_volume = columns[layout.volume]
            ok &= ~bad_volume
        out[""] = _rows(times, ok, (o, h, lo, c), vol, line=False)
    for name in layout.lines:
        value = columns[name][0]
        out[name] = _rows(times, valid & np.isfinite(value), (value,) * 4, None, line=True)
    return out


def read_appended(layout: Layout, data: bytes) -> tuple[dict[str, Rows], IntArray] | None:
    """The rows of ``data``, lines appended to ``layout``'s file, read as :func:`load` reads
    the file (its columns, dates and numbers as its first rows are written), and the times of
    the rows with a date, in file order. ``None`` when they are not rows such a read would
    serve as they are: a line of another number of fields, a malformed row (an unreadable
    date, a bad value, a missing price), another ticker, a file in UTF-16 (whose bytes are
    not cut at line ends by :mod:`.growth`): the caller then reads the whole file, which
    logs them with their line. A date repeated among them is no problem (the later row
    is kept, as :func:`load` keeps it). What a whole read decides for the whole file is
    taken from the file's first read, not from the lines alone: their dates are epoch
    numbers or text as the file's are (a date of the other kind is unreadable), their
    ticker is the file's; a byte order mark at their start (which the parser drops there,
    not in the middle of a file) makes a whole read too."""
    if not layout.names or layout.dialect.encoding == "utf-16" or data.startswith(codecs.BOM_UTF8):
        return None
    names = list(layout.names)
    try:
        frame: pd.DataFrame = pd.read_csv(
            io.BytesIO(data),
            header=None,
            names=names,
            on_bad_lines="error",
            **_options(layout.dialect),
        )
        if not isinstance(frame.index, pd.RangeIndex) or list(frame.columns) != names:
            return None  # a field more on every line: pandas took the first as an index
        if _one_ticker(frame) not in ("", layout.ticker):
            return None
        blank = frame.isna().all(axis=1).to_numpy()
        problems = _Problems(layout.path, [], blank, 1)
        clock = frame[layout.time_column] if layout.time_column else None
        dates = frame[layout.date_column]
        fmt, epoch = layout.date_format, layout.epoch
        times, valid = row_times(dates, clock, layout.calendar, fmt, layout.hhmmss, epoch)
    except (ValueError, UnicodeDecodeError, KeyError, CSVFormatError):  # ParserError too
        return None
    problems.add(~valid, "unreadable date")
    out = _symbol_rows(frame, layout, times, valid, problems)
    if problems.found(but=DUPLICATE):
        return None
    return out, times[valid]


def extended(
    before: Mapping[str, Rows], added: Mapping[str, Rows], times: IntArray, interval: str
) -> dict[str, Rows] | None:
    """The rows ``before`` with those ``added`` after them (:func:`read_appended`, whose
    rows with a date are at ``times``): a row at the time of the last row replaces it
    (a bar written again while it formed), for every symbol, as a whole read keeps only the
    later row of a date (a line column left empty in it has no value there). None when a
    whole read of the file could serve other rows: a row earlier than the last one (out of
    order, or a date repeated), or a gap after the last row that could make it a stray
    (:func:`strays`)."""
    held = [rows for rows in before.values() if len(rows)]
    if not held:
        return None
    first = min(int(rows.times[0]) for rows in held)
    last = max(int(rows.times[-1]) for rows in held)
    steps = np.diff(np.r_[last, times])
    longest = max(STRAY_STEPS * intervals.nominal_seconds(interval), last - first)
    if len(steps) and (steps.min() < 0 or steps.max() > longest):
        return None
    out: dict[str, Rows] = {}
    for key, rows in before.items():
        new, kept = added.get(key), len(rows)
        if new is None or (rows.volume is None) != (new.volume is None):
            return None
        if kept and len(times) and times[0] == rows.times[-1]:
            kept -= 1
        out[key] = concat([part for part in (rows.take(0, kept), new) if len(part)], rows)
    return out


def _earlier_duplicates(times: IntArray, valid: BoolArray) -> BoolArray:
    """The valid rows whose date a later valid row of the file has too: the last row of a
    date is the one served, and the others are logged as skipped, not dropped silently (a
    file written in local time repeats an hour when the clocks go back)."""
    index = np.flatnonzero(valid)
    # sorted by date, file order kept within a date: every row but the last of its date
    index = index[np.argsort(times[index], kind="stable")]
    t = times[index]
    found = np.zeros(len(times), dtype=bool)
    found[index[:-1][t[1:] == t[:-1]]] = True
    return found


def _names(layout: Layout) -> list[str]:
    return [*(layout.candle or ()), *([layout.volume] if layout.volume else []), *layout.lines]


def _column(
    frame: pd.DataFrame, name: str, valid: BoolArray, problems: _Problems, dialect: Dialect
) -> tuple[FloatArray, BoolArray]:
    """A column's numbers (NaN where missing), and where it held something else."""
    raw = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
    values = numbers(raw, dialect).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = valid & raw.notna().to_numpy() & ~np.isfinite(values)
    return values, problems.add(bad, f"bad value in {name!r}")


def _rows(
    times: IntArray, ok: BoolArray, prices: tuple[FloatArray, ...], v: FloatArray | None, line: bool
) -> Rows:
    """The rows where ``ok``, sorted by time; of duplicate times the last row wins."""
    index = np.flatnonzero(ok)
    index = index[np.argsort(times[index], kind="stable")]
    t = times[index]
    index = index[np.r_[t[1:] != t[:-1], True]] if len(t) else index
    o, h, lo, c = (p[index] for p in prices)
    return Rows(times[index], o, h, lo, c, None if v is None else v[index], line)


class _Problems:
    """Malformed rows of one file, logged (the first few) with their path and line."""

    def __init__(self, path: Path, skipped: list[int], blank: BoolArray, first: int) -> None:
        self.path, self.skipped, self.blank = path, skipped, blank
        self.first = first  # the line of the first row (2 under a header line)
        self.masks: list[tuple[str, BoolArray]] = []

    def add(self, mask: BoolArray, reason: str) -> BoolArray:
        """Record the rows of ``mask`` (blank lines aside) as malformed; return the mask."""
        mask = mask & ~self.blank
        self.masks.append((reason, mask))
        return mask

    def _line(self, index: int) -> int:
        line = index + self.first
        for skipped in self.skipped:  # rows pandas dropped do not count in the index
            line += skipped <= line
        return line

    def found(self, but: str) -> bool:
        """Whether a row was found malformed for a reason other than ``but``."""
        return any(mask.any() for reason, mask in self.masks if reason != but)

    def count(self) -> int:
        bad = np.logical_or.reduce([mask for _, mask in self.masks])
        return len(self.skipped) + int(bad.sum())

    def log(self) -> None:
        bad = np.logical_or.reduce([mask for _, mask in self.masks])
        shown = [(line, "wrong number of fields") for line in self.skipped[:MAX_LOGGED_ROWS]]
        for i in np.flatnonzero(bad)[:MAX_LOGGED_ROWS].tolist():
            reason = next(reason for reason, mask in self.masks if mask[i])
            shown.append((self._line(i), reason))
        for line, reason in sorted(shown)[:MAX_LOGGED_ROWS]:
            logger.warning("%s:%d: malformed row skipped (%s)", self.path, line, reason)
        total = len(self.skipped) + int(bad.sum())
        if total > MAX_LOGGED_ROWS:
            logger.warning("%s: %d malformed rows skipped in all", self.path, total)
