"""The CSV provider: history from the files of ``CSV_FOLDER_PATH``, live bars by replaying them.

Every ``*.csv`` file under the folder (searched recursively) is scanned cheaply at start
(header, first rows, last bytes). A file with open/high/low/close columns is the candlestick
symbol named after the file; every other numeric column is the line symbol
``{file}__{column}``. A file is read in full on its first history request or stream, and
kept as numpy arrays (:mod:`backend.data_providers.csv.files`), until it changes.
A symbol the provider does not know (a file added since the start, then populated) makes
it look for new files, at most once per :data:`RESCAN_SECONDS`.

A file changed since it was read (rows appended, or rewritten) is read again at the next
request or replay step that uses it: a loaded file is looked at (``stat``) at most once per
:data:`CHECK_SECONDS`. Rows added after the ones read are new bars; when rows read before
changed, the hub is told (``history_changed``) and forgets what it held of the file's
symbols. A file that only grew (:mod:`.growth`) has only its lines added parsed
(:func:`.files.read_appended`), unless they are not rows a whole read would serve as
they are (out of order, malformed): then, and for every other change, it is read whole.
A changed file that cannot be read (written at that moment) keeps serving what it held,
and is tried again once it changes again; one that changed within :data:`SETTLE_SECONDS`
and whose last line has no line end yet is read at the next look.
With speed 0 the clock moves to the new last row and the new bars are published to the
keys streamed.

Each file has a replay clock (``CSV_REPLAY_SPEED`` data seconds per wall second) that stood at
its midpoint at a fixed wall time (:data:`.replay.REPLAY_EPOCH`), so every process, started
whenever, agrees on the data time and a restart continues the replay; it is reported to the
hub with ``set_clock``. Past the last row the file repeats, shifted by its span. One
background thread publishes the forming bar of every streamed key and the bars that closed
since its last tick; a bar that closes as its forming state last showed it is not sent
again (its close was in that update). Speed 0 freezes the clock at the last row: the thread
then publishes only the bars that a change of the file brought.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.data_providers.csv import growth
from backend.data_providers.csv.files import (
    CSVFormatError,
    Layout,
    Rows,
    extended,
    load,
    read_appended,
    scan,
)
from backend.data_providers.csv.replay import ReplayClock, ReplaySeries
from backend.errors import ProtocolError, UnknownSymbol
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.provider import Provider, StreamKey

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
RESCAN_SECONDS = 1.0  # an unknown symbol looks for new files at most this often
CHECK_SECONDS = 2.0  # a loaded file is looked at for changes at most this often
SETTLE_SECONDS = 1.0  # a change this recent with a last line not ended is not read yet
MAX_FINAL_BARS_PER_TICK = 1_000
# files of bars that are not read until made .csv: Stooq's bulk files (.txt), tab files,
# data.binance.vision's and other archives, spreadsheets; each is logged once
NOT_CSV = {
    ".txt": "rename it to .csv",
    ".tsv": "rename it to .csv",
    ".zip": "unzip it into the folder",
    ".gz": "unpack it into the folder (gunzip)",
    ".xlsx": "save it as CSV",
    ".xls": "save it as CSV",
}
_EARLIEST = -(2**53)


@dataclass
class _File:
    """One scanned CSV file: its layout, replay clock, and (once loaded) its series."""

    layout: Layout
    relative: str
    clock: ReplayClock
    lock: threading.Lock = field(default_factory=threading.Lock)
    series: dict[str, ReplaySeries] | None = None
    error: str = ""
    error_mtime: int | None = None  # the file's st_mtime_ns when it failed (None: missing)
    data_time: float = -math.inf  # the replay thread's last clock (never goes back)
    stat: tuple[int, int] | None = None  # (st_mtime_ns, st_size) of what was read
    checked: float = -math.inf  # monotonic time of the last look for a change
    unreadable: tuple[int, int] | None = None  # a change that could not be read
    version: int = 0  # bumped by every read (the streams of a frozen clock follow it)
    malformed: int = -1  # malformed rows logged at the last read
    mark: growth.Mark | None = None  # what was read, to tell rows appended from a change

    def served(self) -> list[str]:
        base = self.layout.interval
        return [i for i in intervals.INTERVALS if intervals.can_aggregate(base, i)]


@dataclass
class _Stream:
    """What the replay thread last published for one streamed key."""

    last: Bar | None = None
    final: bool = False
    version: int = -1  # the file's version last looked at (speed 0)


class CSVProvider(Provider):
    """Serves the CSV files of ``CSV_FOLDER_PATH`` (source key ``csv``)."""

    persist_history = False  # the files are the store
    history_budget = False  # reading them costs no upstream

    def __init__(self) -> None:
        super().__init__()
        self._files: list[_File] = []
        self._symbols: dict[str, tuple[_File, str]] = {}  # symbol -> (file, column key)
        self._scan_lock = threading.Lock()
        self._scanned = False
        self._rescanned = -math.inf  # monotonic time of the last look for new files
        self._skipped: dict[Path, int] = {}  # unreadable files: tried again once changed
        self._not_csv: set[Path] = set()  # files of NOT_CSV already logged
        self._streams: dict[StreamKey, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall: Callable[[], float] = time.time

    # ------------------------------------------------------------------ hooks

    def init(self) -> None:
        self._scan()
        # The clocks are anchored to a fixed wall time, not to the hub's start: a restarted
        # server continues every replay where the previous one was.
        self._set_clocks(self._symbols)
        self._warn_not_started()
        self.report_status("ready", f"{len(self._symbols)} symbols in {len(self._files)} files")

    def _warn_not_started(self) -> None:
        """Log the files whose replay clock has not reached their first row yet: with a
        ``CSV_REPLAY_EPOCH`` ahead of the wall clock their charts were empty, with no update
        and no word of why, until it does."""
        wall = self._wall()
        waiting = [
            f for f in self._files if f.clock.speed > 0 and f.clock.at(wall) < f.layout.first
        ]
        if not waiting:
            return
        starts = min(
            f.clock.origin_wall + (f.layout.first - f.clock.origin_data) / f.clock.speed
            for f in waiting
        )
        logger.warning(
            "csv: the replay of %d of %d files has not reached their first row (CSV_REPLAY_EPOCH"
            " %s is ahead of the wall clock): they have no bars until then (the first at %s UTC)",
            len(waiting),
            len(self._files),
            self.settings.CSV_REPLAY_EPOCH,
            intervals.format_date(math.ceil(starts)),
        )

    def get_dataset(self) -> Iterable[Mapping[str, Any]]:
        self._scan()
        rows = []
        for symbol, (file, column) in self._symbols.items():
            candle = column == ""
            outputs = [{"name": name, "y_axis": name} for name in [symbol]]
            if candle:
                names = ("open", "high", "low", "close", "volume")
                outputs = [
                    {"name": n, "y_axis": "volume" if n == "volume" else "price"} for n in names
                ]
            rows.append(
                {
                    "source": self.source,
                    "name": symbol,
                    "name_label": symbol if candle else _label(file.layout.path, column),
                    "type": "candlestick" if candle else "line",
                    "categories": ["CSV"],
                    "intervals": file.served(),
                    "outputs": outputs,
                    "path": file.relative,
                }
            )
        return rows

    def get_history(
        self,
        symbol: str,
        interval: str,
        start_time_query: str,
        end_time_query: str,
        count: int,
    ) -> list[Bar]:
        file, series = self._series(symbol, interval)
        clock = file.clock.at(self._wall())
        frozen = file.clock.speed == 0
        end = _parse_time(end_time_query)
        end = math.floor(clock) if end is None else end
        start = _parse_time(start_time_query)
        if start is not None:
            return series.bars(interval, start, end, clock, frozen)
        if count <= 0:
            return series.bars(interval, _EARLIEST, end, clock, frozen)
        span = intervals.nominal_seconds(interval) * (count + 1)
        while True:  # no start: widen the window until it holds `count` bars
            bars = series.bars(interval, end - span, end, clock, frozen)
            if len(bars) >= count or end - span < series.first:
                return bars[-count:]
            span *= 4

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        # Also with a frozen clock (speed 0): rows added to the file are new bars.
        try:
            self._lookup(symbol, interval)
        except UnknownSymbol as exc:
            self.notify(symbol, interval, exc.code, str(exc))
            return
        stream = _Stream()
        if self.settings.CSV_REPLAY_SPEED <= 0:
            self._baseline(symbol, interval, stream)
        with self._streams_lock:
            self._streams[(symbol, interval)] = stream
        self._start_replay()

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        with self._streams_lock:
            self._streams.pop((symbol, interval), None)

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        speed = self.settings.CSV_REPLAY_SPEED
        if speed <= 0:
            return None
        entry = self._symbols.get(symbol)
        if entry is None:
            return None  # never streamed: nothing to restart
        return max(30.0, 5 * intervals.nominal_seconds(entry[0].layout.interval) / speed)

    def shutdown(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # ------------------------------------------------------------------ files

    def _scan(self) -> None:
        with self._scan_lock:
            if self._scanned:
                return
            self._scanned = True
            folder = Path(self.settings.CSV_FOLDER_PATH)
            if not folder.is_dir():
                logger.error("CSV_FOLDER_PATH %s is not a folder: no CSV symbols", folder)
                return
            self._add_files(folder)

    def _add_files(self, folder: Path) -> list[str]:
        """Add the files of ``folder`` not added yet; the symbols they brought."""
        known = {file.layout.path for file in self._files}
        before = set(self._symbols)
        found = sorted(folder.rglob("*"))
        paths = [p for p in found if p.suffix.lower() == ".csv"]
        self._log_not_csv(p for p in found if p.suffix.lower() in NOT_CSV)
        for path in paths:
            if path not in known and path.is_file() and not self._unchanged(path):
                self._add_file(path, folder)
        return [symbol for symbol in self._symbols if symbol not in before]

    def _log_not_csv(self, paths: Iterable[Path]) -> None:
        """Say once per file that a file of :data:`NOT_CSV` is not read, and what to do: it
        was passed over without a word, its symbol missing."""
        for path in paths:
            if path in self._not_csv or not path.is_file():
                continue
            self._not_csv.add(path)
            what = NOT_CSV[path.suffix.lower()]
            logger.warning("%s: not read: only files ending in .csv are; %s", path, what)

    def _unchanged(self, path: Path) -> bool:
        """Whether ``path`` was skipped as unreadable and has not changed since."""
        try:
            return self._skipped.get(path) == path.stat().st_mtime_ns
        except OSError:
            return True

    def _skip(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            self._skipped[path] = path.stat().st_mtime_ns

    def _rescan(self) -> None:
        """Look for files added to the folder since the start (a user dropped one in and ran
        populate.py, so the hub knows its symbol): at most once per ``RESCAN_SECONDS``."""
        with self._scan_lock:
            now = time.monotonic()
            if now - self._rescanned < RESCAN_SECONDS:
                return
            self._rescanned = now
            folder = Path(self.settings.CSV_FOLDER_PATH)
            added = self._add_files(folder) if folder.is_dir() else []
        if added:
            logger.info("csv: %d symbols from files added since the start", len(added))
            self._set_clocks(added)

    def _set_clocks(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            clock = self._symbols[symbol][0].clock
            self.set_clock(symbol, clock.origin_data, clock.speed, origin_wall=clock.origin_wall)

    def _add_file(self, path: Path, folder: Path) -> None:
        try:
            layout = scan(path, self.settings.CSV_DATE_COLUMN)
        except CSVFormatError as exc:
            self._skip(path)
            logger.warning("%s: skipped: %s", path, exc)
            return
        except Exception:  # one broken file must never stop the others
            self._skip(path)
            logger.exception("%s: skipped: unexpected error while scanning", path)
            return
        speed = self.settings.CSV_REPLAY_SPEED
        epoch = self.settings.replay_epoch()
        clock = ReplayClock.for_file(layout.first, layout.last, layout.interval, speed, epoch)
        file = _File(layout, path.relative_to(folder).as_posix(), clock)
        added = self._register(file)
        self._files.append(file)  # known, even with no symbol: not scanned again
        logger.info("%s: %s rows, %d symbols", file.relative, layout.interval, len(added))

    def _register(self, file: _File) -> list[str]:
        """Map the symbols of ``file``'s columns not mapped yet to it; those it got."""
        path, layout = file.layout.path, file.layout
        added = []
        for key in ([""] if layout.candle else []) + list(layout.lines):
            symbol = _symbol_name(path, key)
            entry = self._symbols.get(symbol)
            if entry is not None:
                if entry[0] is not file:
                    other = entry[0].relative
                    logger.warning(
                        "%s: symbol %s already comes from %s; skipped", path, symbol, other
                    )
                continue
            self._symbols[symbol] = (file, key)
            added.append(symbol)
        return added

    def _symbols_of(self, file: _File) -> list[str]:
        return [symbol for symbol, (f, _) in list(self._symbols.items()) if f is file]

    def _lookup(self, symbol: str, interval: str) -> _File:
        self._scan()
        entry = self._symbols.get(symbol)
        if entry is None:
            self._rescan()
            entry = self._symbols.get(symbol)
        if entry is None:
            raise UnknownSymbol(f"csv: unknown symbol {symbol!r}")
        file = entry[0]
        if interval not in file.served():
            served = ", ".join(file.served())
            raise UnknownSymbol(f"csv: {symbol} serves {served}, not {interval!r}")
        return file

    def _series(self, symbol: str, interval: str) -> tuple[_File, ReplaySeries]:
        """The file and series of ``symbol``, loading the file once (thread-safe)."""
        file = self._lookup(symbol, interval)
        with file.lock:
            if file.error and _mtime(file.layout.path) != file.error_mtime:
                # Changed or back since it failed (a file saved by renaming a new one over
                # it was missing for a moment): read it again, not "could not be read"
                # until the provider restarts.
                file.error = ""
            if file.series is None and not file.error:
                self._load(file)
            elif file.series is not None:
                self._read_if_changed(file)
        if file.series is None or self._symbols[symbol][1] not in file.series:
            raise UnknownSymbol(f"csv: {symbol} could not be read: {file.error or 'no rows'}")
        return file, file.series[self._symbols[symbol][1]]

    def _load(self, file: _File) -> None:
        started = time.perf_counter()
        stat = _stat(file.layout.path)  # before reading: a change meanwhile is seen next
        mark = _mark(file.layout.path, stat)
        try:
            rows, first, last, file.malformed = load(file.layout)
        except CSVFormatError as exc:
            file.error, file.error_mtime = str(exc), _mtime(file.layout.path)
            logger.warning("%s: skipped: %s", file.layout.path, exc)
            return
        base = file.layout.interval
        file.series = {key: ReplaySeries(r, base, first, last) for key, r in rows.items()}
        file.stat, file.checked, file.mark = stat, time.monotonic(), mark
        file.version += 1
        if (first, last) != (file.layout.first, file.layout.last):
            logger.warning(
                "%s: valid rows span %s .. %s, not %s .. %s as scanned (unsorted or malformed"
                " rows); %s",
                file.layout.path,
                *(
                    intervals.format_date(t)
                    for t in (first, last, file.layout.first, file.layout.last)
                ),
                "the replay clock keeps the scanned range"
                if file.clock.speed
                else "the clock stands at the last valid row",
            )
            self._freeze_at(file, first, last)
        logger.info("%s: loaded in %.2f s", file.relative, time.perf_counter() - started)

    def _freeze_at(self, file: _File, first: int, last: int) -> None:
        """With speed 0, stand ``file``'s clock at its last valid row ``last``: it was
        frozen at the last date the scan read (dates only), such as that of a last row with
        a bad price, one step past the rows, where their repeat begins: history showed a
        bar there with the first row's values."""
        if file.clock.speed != 0 or file.clock.origin_data == last:
            return
        epoch = self.settings.replay_epoch()
        file.clock = ReplayClock.for_file(first, last, file.layout.interval, 0, epoch)
        with self._scan_lock:
            symbols = self._symbols_of(file)
        self._set_clocks(symbols)

    def _read_if_changed(self, file: _File) -> None:
        """Read ``file`` again if it changed since it was read (looked at once per
        :data:`CHECK_SECONDS` at most; called with its lock held)."""
        now = time.monotonic()
        if now - file.checked < CHECK_SECONDS:
            return
        file.checked = now
        stat = _stat(file.layout.path)
        # missing: saved by renaming a new file over it, back in a moment
        if stat is None:
            return
        self._verify(file, now)
        if stat in (file.stat, file.unreadable):
            return
        # its last line may be cut: only the lines before it now, the rest at the next look
        writing = _being_written(file.layout.path, stat)
        if not self._read_appended(file, stat, writing) and not writing:
            self._read_again(file, stat)

    def _verify(self, file: _File, now: float) -> None:
        """Compare all the bytes read before the rows read by :meth:`_read_appended` with
        the file (at most once per ``growth.VERIFY_SECONDS``): a row changed far from both
        ends along with an append is not seen by the parts of the file compared for it.
        A difference makes the file read in full at this look."""
        mark = file.mark
        if mark is None or not growth.due(mark, now):
            return
        if growth.verify(file.layout.path, mark):
            file.mark = replace(mark, verified=now, pending=False)
            return
        logger.info("%s: rows read before changed along with rows appended", file.relative)
        file.mark, file.stat = None, None

    def _read_appended(self, file: _File, stat: tuple[int, int], writing: bool) -> bool:
        """Read only the lines added to ``file`` if it only grew and they are rows read as
        a whole read would serve them (:func:`.files.read_appended`); only the lines ended
        when its last line is being ``writing``. False when the whole file is to be read
        (or, ``writing``, to be looked at again)."""
        path, before = file.layout.path, file.series
        mark = file.mark
        found = None if mark is None else growth.grown(path, mark, stat[1], writing)
        if found is None or not before:
            return False
        rows = {key: series.rows for key, series in before.items()}
        lines = found.data.count(b"\n") + (found.data[-1:] not in (b"", b"\n"))
        if found.data.strip():
            read = read_appended(file.layout, found.data)
            more = None if read is None else extended(rows, *read, file.layout.interval)
            if more is None:
                return False
            rows = more
        ends = [(int(r.times[0]), int(r.times[-1])) for r in rows.values() if len(r)]
        first, last = min(t for t, _ in ends), max(t for _, t in ends)
        layout = replace(file.layout, last=max(file.layout.last, last))
        added = not self._repeated(file, self._wall())
        # the size read: a line being written makes the next look read on
        seen = (stat[0], found.mark.size)
        self._install(file, layout, rows, (first, last), seen, file.malformed, added)
        file.mark = found.mark
        logger.info(
            "%s: %d appended lines read from byte %d, not the whole file",
            file.relative,
            lines,
            found.start,
        )
        return True

    def _read_again(self, file: _File, stat: tuple[int, int]) -> None:
        """Replace the rows of a changed file; tell the hub when rows it served changed."""
        path, before = file.layout.path, file.series or {}
        mark = _mark(path, stat)
        try:
            layout = scan(path, self.settings.CSV_DATE_COLUMN)
            rows, first, last, malformed = load(layout, logged=file.malformed)
        except CSVFormatError as exc:
            file.unreadable = stat
            logger.warning("%s: changed, but cannot be read: %s; what it held is served", path, exc)
            return
        added = _appended(before, rows) and not self._repeated(file, self._wall())
        self._install(file, layout, rows, (first, last), stat, malformed, added)
        file.mark = mark

    def _install(
        self,
        file: _File,
        layout: Layout,
        rows: Mapping[str, Rows],
        span: tuple[int, int],
        stat: tuple[int, int],
        malformed: int,
        added: bool,
    ) -> None:
        """Serve ``rows`` (of ``layout``, from ``span[0]`` to ``span[1]``) as the file's;
        tell the hub when rows it served changed (not only ``added``)."""
        first, last = span
        old_clock = file.clock
        if old_clock.speed == 0:  # frozen at the last row: now the new one
            epoch = self.settings.replay_epoch()
            file.clock = ReplayClock.for_file(first, last, layout.interval, 0, epoch)
        file.layout, file.stat, file.unreadable, file.malformed = layout, stat, None, malformed
        file.series = {
            key: ReplaySeries(r, layout.interval, first, last) for key, r in rows.items()
        }
        file.version += 1
        with self._scan_lock:
            self._register(file)
            symbols = self._symbols_of(file)
        if file.clock != old_clock:
            self._set_clocks(symbols)
        if not added:
            for symbol in symbols:
                self.history_changed(symbol)
        logger.info(
            "%s: changed: read again, %s rows up to %s%s",
            file.relative,
            layout.interval,
            intervals.format_date(last),
            "" if added else "; rows served before changed: the hub forgets them",
        )

    def _repeated(self, file: _File, wall: float) -> bool:
        """Whether the replay of ``file`` is past its rows (in a repeat, whose bars a new
        length of the file moves)."""
        if file.clock.speed == 0 or not file.series:
            return False
        series = next(iter(file.series.values()))
        return file.clock.at(wall) >= series.first + series.period

    # ------------------------------------------------------------------ replay thread

    def _start_replay(self) -> None:
        """Start the one replay thread of the provider (once)."""
        with self._streams_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="csv-replay", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self._tick()

    def _tick(self) -> None:
        """Publish what changed on every streamed key since the last tick."""
        with self._streams_lock:
            streams = list(self._streams.items())
        for (symbol, interval), state in streams:
            try:
                file, series = self._series(symbol, interval)
            except UnknownSymbol as exc:
                self.notify(symbol, interval, exc.code, str(exc))
                self.on_last_subscriber(symbol, interval)
                continue
            # The clock is read once the file is loaded: its first read takes seconds on a
            # loaded machine (a restarted process), and a clock read before it published
            # the forming bar of seconds ago, after history (waiting for the same read) had
            # served that bar closed: the hub took that older state as the bar's last.
            file.data_time = max(file.data_time, file.clock.at(self._wall()))
            try:
                if file.clock.speed == 0:
                    self._follow(symbol, interval, series, state, file)
                else:
                    self._advance(symbol, interval, series, state, file.data_time)
            except Exception:  # a bug on one key must not stop the others
                logger.exception("csv: replay of %s %s failed", symbol, interval)

    def _advance(
        self, symbol: str, interval: str, series: ReplaySeries, state: _Stream, clock: float
    ) -> None:
        until = series.complete_until(interval, clock)
        if state.last is not None:
            lo = state.last[0] + (1 if state.final else 0)
            closed = series.complete(interval, lo, until - 1, math.floor(clock)).bars()
            for bar in closed[-MAX_FINAL_BARS_PER_TICK:]:
                if bar != state.last:  # not a forming bar already shown whole: no repeat
                    self.publish(symbol, interval, bar, final=True)
                state.last, state.final = bar, True
        forming = series.forming(interval, clock)
        if forming is None or forming == state.last:
            return
        last = state.last
        if last is None or forming[0] > last[0] or (forming[0] == last[0] and not state.final):
            self.publish(symbol, interval, forming)
            state.last, state.final = forming, False

    def _follow(
        self, symbol: str, interval: str, series: ReplaySeries, state: _Stream, file: _File
    ) -> None:
        """With a frozen clock: publish the bars a new read of the file brought (the newest
        bar changed, new ones after it), once per read."""
        if state.version == file.version:
            return
        now = math.floor(file.clock.at(self._wall()))
        if state.version < 0 or state.last is None or now < state.last[0]:
            # the first look (the client has the bars from history), or a shorter file
            state.last, state.version = _newest(series, interval, now), file.version
            return
        bars = series.complete(interval, state.last[0], now, now).bars()
        for i, bar in enumerate(bars):
            if bar != state.last:
                self.publish(symbol, interval, bar, final=i < len(bars) - 1)
        if bars:
            state.last = bars[-1]
        state.version = file.version

    def _baseline(self, symbol: str, interval: str, stream: _Stream) -> None:
        """With a frozen clock: the bars ``stream`` starts from are those of the file as
        read now (its client's history came from them; a read after this brings updates)."""
        entry = self._symbols.get(symbol)
        if entry is None:
            return
        file = entry[0]
        with file.lock:
            series = (file.series or {}).get(entry[1])
            if series is not None:
                now = math.floor(file.clock.at(self._wall()))
                stream.last, stream.version = _newest(series, interval, now), file.version


def _symbol_name(path: Path, column: str) -> str:
    """The symbol of a file's candles (``column`` "") or of one of its columns, in Unicode's
    composed form (NFC): a name written decomposed (NFD, as macOS's HFS+ stores ``é``, kept
    by the archives and copies made there) is served under the name users type and link."""
    name = f"{path.stem}__{column}" if column else path.stem
    return unicodedata.normalize("NFC", name)


def _label(path: Path, column: str) -> str:
    """The name shown for a column's line series: the file's name and the column's."""
    return unicodedata.normalize("NFC", f"{path.stem} {column}")


def _newest(series: ReplaySeries, interval: str, now: int) -> Bar | None:
    """The newest bar of ``series`` at ``now``, whole (a frozen clock)."""
    t = series.last_row(now)
    if t is None:
        return None
    bars = series.complete(interval, intervals.floor(t, interval), now, now).bars()
    return bars[-1] if bars else None


def _appended(before: Mapping[str, ReplaySeries], rows: Mapping[str, Rows]) -> bool:
    """Whether ``rows`` only add rows to those ``before`` (the last row read may have
    changed: a bar written while it formed)."""
    for key, series in before.items():
        old, new = series.rows, rows.get(key)
        keep = len(old) - 1
        if new is None or len(new) < len(old) or (old.volume is None) != (new.volume is None):
            return False
        pairs = zip(_arrays(old), _arrays(new), strict=True)
        if not all(np.array_equal(a[:keep], b[:keep], equal_nan=True) for a, b in pairs):
            return False
    return True


def _arrays(rows: Rows) -> list[npt.NDArray[Any]]:
    values = [rows.times, rows.open, rows.high, rows.low, rows.close]
    return values if rows.volume is None else [*values, rows.volume]


def _being_written(path: Path, stat: tuple[int, int]) -> bool:
    """Whether ``path`` changed less than :data:`SETTLE_SECONDS` ago and its last line has
    no line end yet: a row being appended, whose cut number (a close of 31 for 310.5) would
    be served until the next look."""
    if time.time() - stat[0] / 1e9 >= SETTLE_SECONDS or stat[1] == 0:
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, stat[1] - 2))
            return not handle.read(2).endswith((b"\n", b"\r", b"\n\x00", b"\r\x00"))  # UTF-16
    except OSError:
        return False


def _mark(path: Path, stat: tuple[int, int] | None) -> growth.Mark | None:
    """The mark of the first ``stat[1]`` bytes of ``path``, read in full now."""
    return None if stat is None else growth.mark(path, stat[1], time.monotonic())


def _stat(path: Path) -> tuple[int, int] | None:
    """``(st_mtime_ns, st_size)`` of ``path``; None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _mtime(path: Path) -> int | None:
    """When ``path`` last changed (``st_mtime_ns``); None when it cannot be read."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _parse_time(text: str | None) -> int | None:
    """UTC seconds of a ``%Y-%m-%d %H:%M:%S`` query time; ``None`` for empty or "now UTC"."""
    try:
        return intervals.parse_query_time(text)
    except ValueError:
        raise ProtocolError("bad_time", f"csv: cannot read the time {text!r}") from None
