"""The CSV provider: history from the files of ``CSV_FOLDER_PATH``, live bars by replaying them.

Every ``*.csv`` file under the folder (searched recursively) is scanned cheaply at start
(header, first rows, last bytes). A file with open/high/low/close columns is the candlestick
symbol named after the file; every other numeric column is the line symbol
``{file}__{column}``. A file is read in full once, on its first history request or stream,
and kept as numpy arrays (:mod:`backend.data_providers.csv.files`).
A symbol the provider does not know (a file added since the start, then populated) makes
it look for new files, at most once per :data:`RESCAN_SECONDS`.

Each file has a replay clock (``CSV_REPLAY_SPEED`` data seconds per wall second) that stood at
its midpoint at a fixed wall time (:data:`.replay.REPLAY_EPOCH`), so every process, started
whenever, agrees on the data time and a restart continues the replay; it is reported to the
hub with ``set_clock``. Past the last row the file repeats, shifted by its span. One
background thread publishes the forming bar of every streamed key and the bars that closed
since its last tick; a bar that closes as its forming state last showed it is not sent
again (its close was in that update). Speed 0 freezes the clock at the last row.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.data_providers.csv.files import CSVFormatError, Layout, load, scan
from backend.data_providers.csv.replay import ReplayClock, ReplaySeries
from backend.errors import ProtocolError, UnknownSymbol
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.provider import Provider, StreamKey

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
RESCAN_SECONDS = 1.0  # an unknown symbol looks for new files at most this often
MAX_FINAL_BARS_PER_TICK = 1_000
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

    def served(self) -> list[str]:
        base = self.layout.interval
        return [i for i in intervals.INTERVALS if intervals.can_aggregate(base, i)]


@dataclass
class _Stream:
    """What the replay thread last published for one streamed key."""

    last: Bar | None = None
    final: bool = False


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
                    "name_label": symbol if candle else f"{file.layout.path.stem} {column}",
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
        if self.settings.CSV_REPLAY_SPEED <= 0:
            return  # a frozen clock: nothing ever changes
        try:
            self._lookup(symbol, interval)
        except UnknownSymbol as exc:
            self.notify(symbol, interval, exc.code, str(exc))
            return
        with self._streams_lock:
            self._streams[(symbol, interval)] = _Stream()
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
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".csv")
        for path in paths:
            if path not in known and path.is_file() and not self._unchanged(path):
                self._add_file(path, folder)
        return [symbol for symbol in self._symbols if symbol not in before]

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
        keys = ([""] if layout.candle else []) + list(layout.lines)
        added = 0
        for key in keys:
            symbol = f"{path.stem}__{key}" if key else path.stem
            if symbol in self._symbols:
                other = self._symbols[symbol][0].relative
                logger.warning("%s: symbol %s already comes from %s; skipped", path, symbol, other)
                continue
            self._symbols[symbol] = (file, key)
            added += 1
        self._files.append(file)  # known, even with no symbol: not scanned again
        logger.info("%s: %s rows, %d symbols", file.relative, layout.interval, added)

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
        if file.series is None or self._symbols[symbol][1] not in file.series:
            raise UnknownSymbol(f"csv: {symbol} could not be read: {file.error or 'no rows'}")
        return file, file.series[self._symbols[symbol][1]]

    def _load(self, file: _File) -> None:
        started = time.perf_counter()
        try:
            rows, first, last = load(file.layout)
        except CSVFormatError as exc:
            file.error, file.error_mtime = str(exc), _mtime(file.layout.path)
            logger.warning("%s: skipped: %s", file.layout.path, exc)
            return
        base = file.layout.interval
        file.series = {key: ReplaySeries(r, base, first, last) for key, r in rows.items()}
        if (first, last) != (file.layout.first, file.layout.last):
            logger.warning(
                "%s: valid rows span %s .. %s, not %s .. %s as scanned (unsorted or malformed"
                " rows); the replay clock keeps the scanned range",
                file.layout.path,
                *(
                    intervals.format_date(t)
                    for t in (first, last, file.layout.first, file.layout.last)
                ),
            )
        logger.info("%s: loaded in %.2f s", file.relative, time.perf_counter() - started)

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
        wall = self._wall()
        for (symbol, interval), state in streams:
            try:
                file, series = self._series(symbol, interval)
            except UnknownSymbol as exc:
                self.notify(symbol, interval, exc.code, str(exc))
                self.on_last_subscriber(symbol, interval)
                continue
            file.data_time = max(file.data_time, file.clock.at(wall))
            try:
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
