"""The bar store: bars and their coverage persisted in SQLite, written behind the cache.

Writes are queued without awaiting (the newest state of a bar replaces an older queued one)
and flushed in one transaction every ``FLUSH_SECONDS``, so a bar answered to a client is on
disk within a second. Reads load a series' coverage and its newest bars, or a range of older
bars on demand. SQLite runs in WAL mode through aiosqlite: the event loop never blocks on
disk, and a killed server leaves a database that opens cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiosqlite

from backend.dbfile import file_id
from backend.errors import StorageError
from backend.model.bars import Bar, SeriesId
from backend.tasks import Tasks, cancel_owned, start_owned
from backend.write_health import WriteHealth

logger = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parent / "bars.sql"
FLUSH_SECONDS = 0.25
# The journal (DB-wal) is reused from its start after each checkpoint but never shrunk: one
# large transaction (a retention pass deleting millions of bars) left it that large for the
# rest of the run. SQLite truncates it to this size when it starts it again (live writes
# cycle it at about 4 MB: 1000 pages, SQLite's automatic checkpoint).
WAL_LIMIT = 16 * 2**20
# A populate may hold the file's write lock for a while: wait a little (busy_timeout), then
# keep the batch queued and try again at the next flush (reads never wait for writes in WAL
# mode).
PRAGMAS = (
    "journal_mode = WAL",
    "synchronous = NORMAL",
    "busy_timeout = 1000",
    f"journal_size_limit = {WAL_LIMIT}",
)


@dataclass(slots=True)
class Snapshot:
    """What the store knows of one series when it is loaded into memory."""

    coverage: list[tuple[int, int]]
    exhausted_before: int | None
    bars: list[Bar]  # the newest ``limit`` bars, ascending
    complete: bool  # True when ``bars`` is every stored bar of the series


@dataclass(slots=True)
class _Pending:
    bars: dict[int, tuple[Bar, bool]] = field(default_factory=dict)
    coverage: list[tuple[int, int]] | None = None
    exhausted_before: int | None = None


def check_openable(path: Path, writable: bool = False) -> None:
    """Raise ``StorageError`` when ``path`` cannot be the bar store: its folder cannot be
    made, or it is a folder, a file that is not SQLite, or not readable (or, ``writable``,
    not writable: the file, or its folder, where SQLite writes its journal). The server and
    ``populate.py`` check it before they start (``DB`` named in one line), instead of a
    traceback. A file that does not exist yet is created empty, as opening the store would."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open {path}: {exc}") from exc
    if not writable:
        return
    for target, what in ((path, "the file"), (path.parent, "its folder")):
        if not os.access(target, os.W_OK):
            raise StorageError(f"cannot write {path}: {what} is not writable")


def hold_exclusive(path: Path, wait: float) -> TextIO:
    """Take the lock file ``<path>.lock`` for this server, waiting up to ``wait`` seconds
    for another holder to go; ``StorageError`` naming the holder when it does not. The
    lock (``flock``) lasts while the returned file is open in this process or a process
    forked from it (hub workers), and goes with them, even after a SIGKILL; processes
    started with ``spawn`` (providers) do not hold it. It notes this process's pid."""
    lock = path.with_name(path.name + ".lock")
    try:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {lock}: {exc}") from exc
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise StorageError(
                    f"{path} is in use by another server ({holder}, {lock} is locked);"
                    " each server needs a DB of its own (hub workers of --workers N share one)"
                ) from None
            time.sleep(0.1)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


class BarStore:
    """Persistence of bars and coverage for every series, in one SQLite file."""

    def __init__(
        self, db: aiosqlite.Connection, path: Path | None = None, max_queued: int = 0
    ) -> None:
        self._db = db
        self.path = path
        # While writes fail, at most this many bars wait (0: no bound); see _bound().
        self.max_queued = max_queued
        self.given_up = 0  # queued bars given up (writes failing, the queue full)
        # Series whose queued bars were given up: their coverage is not stored this run.
        self._untrusted: set[SeriesId] = set()
        self._file = file_id(path) if path is not None else None  # the file opened
        self._moved = False  # DB was deleted or replaced since: never written again
        self._ids: dict[SeriesId, int] = {}
        self._pending: dict[SeriesId, _Pending] = {}
        # The batch a flush is writing, until it is committed: still read as queued. The
        # flush writes it in several statements, each awaited, on the connection the reads
        # use, and a read between them (the coverage deleted, the new one not written yet)
        # found neither it in the file nor it queued.
        self._writing: dict[SeriesId, _Pending] = {}
        self._tasks: Tasks = set()
        self._lock = asyncio.Lock()
        self._closed = False
        self.flushes = 0
        self.writes = WriteHealth(
            "bar store", "bars stay in memory (and are answered)", logger, path
        )

    @classmethod
    async def open(cls, path: Path, max_queued: int = 0) -> BarStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path)
            for pragma in PRAGMAS:
                await db.execute(f"PRAGMA {pragma}")
            await db.executescript(SCHEMA.read_text())
            await db.commit()
        except (aiosqlite.Error, OSError) as exc:
            raise StorageError(f"cannot open the bar store {path}: {exc}") from exc
        store = cls(db, path, max_queued)
        start_owned(store._tasks, store._flush_loop(), "bar-store-flush", store._flusher_died)
        return store

    async def close(self) -> None:
        """Write what is queued and close the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await cancel_owned(self._tasks)
        try:
            await self.flush()
        except StorageError as exc:  # still failing at the stop: say what is not stored
            logger.error(
                "bar store: %d bars could not be written to DB %s before the stop: %s",
                self.queued_bars,
                self.path,
                exc,
            )
        finally:
            await self._db.close()

    # ------------------------------------------------------------------ writes (queued)

    def put_bars(self, key: SeriesId, bars: list[Bar], forming_t: int | None = None) -> None:
        """Queue bars; the bar at ``forming_t`` (if any) is stored as forming."""
        pending = self._pending_of(key)
        for bar in bars:
            pending.bars[bar[0]] = (bar, bar[0] == forming_t)
        self._bound()

    def _bound(self) -> None:
        """While writes fail, keep at most ``max_queued`` bars waiting: give up the series
        queued first (their bars stay answered from memory while cached, and are fetched
        again when asked). Their coverage is no longer stored this run (the cache's would
        claim the bars given up), so the file's coverage stays true of its bars."""
        if not self.max_queued or self.writes.error is None:
            return
        queued = self.queued_bars
        if queued <= self.max_queued:
            return
        keep = self.max_queued * 9 // 10  # a margin: not one give-up per bar
        dropped: list[SeriesId] = []
        for key in list(self._pending):
            if queued <= keep:
                break
            count = len(self._pending.pop(key).bars)
            queued -= count
            self.given_up += count
            self._untrusted.add(key)
            dropped.append(key)
        logger.error(
            "bar store: %d series given up (%s...): their queued bars are not stored; at"
            " most %d bars (CACHE_MAX_BARS) wait while DB %s cannot be written; %d given up"
            " since the start",
            len(dropped),
            ", ".join(":".join(key) for key in dropped[:3]),
            self.max_queued,
            self.path,
            self.given_up,
        )

    def put_coverage(
        self, key: SeriesId, spans: list[tuple[int, int]], exhausted_before: int | None
    ) -> None:
        """Queue the full coverage of a series (it replaces the stored one)."""
        pending = self._pending_of(key)
        pending.coverage = spans
        pending.exhausted_before = exhausted_before

    def _pending_of(self, key: SeriesId) -> _Pending:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        return pending

    async def flush(self) -> None:
        """Write everything queued, in one transaction; on failure it stays queued."""
        async with self._lock:
            if not self._pending:
                return
            await self._check_file()
            batch, self._pending = self._pending, {}
            self._writing = batch
            try:
                await self._write(batch)
                await self._db.commit()
                self.flushes += 1
            except aiosqlite.Error as exc:
                with contextlib.suppress(aiosqlite.Error):
                    await self._db.rollback()
                self._requeue(batch)
                self.writes.failed(exc, self._queued_text)
                raise StorageError(f"bar store write failed: {exc}") from exc
            except asyncio.CancelledError:
                # close() cancelled the flush loop mid-flush: the batch goes back to the
                # queue, which close() writes next (what this flush wrote already is in the
                # same open transaction, and writing it again replaces it).
                self._requeue(batch)
                raise
            finally:
                self._writing = {}
            self.writes.succeeded()

    async def _check_file(self) -> None:
        """``StorageError`` when the file at ``DB`` is no longer the one opened (deleted, or
        replaced: a backup copied in, a new database moved there). The connections keep the
        old file, whose bars no restart would see, while the journal (``DB-wal``, found by
        name) is shared with whoever opens the new one: a process opening it would copy this
        server's pages into a file of another layout. So once seen the store writes no more
        and empties its journal into the old file (checkpoint, truncate)."""
        if self.path is None or self._file is None:
            return
        if not self._moved:
            now = file_id(self.path)
            if now == self._file:
                return
            self._moved = True
            with contextlib.suppress(aiosqlite.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        error = StorageError(
            "it was deleted or replaced while the server ran (the server still holds the file"
            " it opened, and writes no more)"
        )
        self.writes.failed(error, self._queued_text, "restart the server to use the file there")
        raise error

    def _queued_text(self) -> str:
        return f"{self.queued_bars} bars queued"

    @property
    def queued_bars(self) -> int:
        """Bars waiting to be written (kept in memory, and readable, until they are)."""
        return sum(len(pending.bars) for pending in self._pending.values())

    def health(self) -> dict[str, object]:
        """The store's part of ``/health``: whether writes succeed, and since when not."""
        return {**self.writes.health(), "queued_bars": self.queued_bars}

    def _requeue(self, batch: dict[SeriesId, _Pending]) -> None:
        """Put a failed batch back under what was queued meanwhile (newer writes win)."""
        for key, old in batch.items():
            new = self._pending.get(key)
            if new is None:
                self._pending[key] = old
                continue
            new.bars = {**old.bars, **new.bars}
            if new.coverage is None:
                new.coverage, new.exhausted_before = old.coverage, old.exhausted_before

    def _flusher_died(self, error: BaseException) -> None:
        # Bars stay queued (and readable) while nothing writes them: start writing again.
        if not self._closed:
            start_owned(self._tasks, self._flush_loop(), "bar-store-flush", self._flusher_died)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except StorageError:
                await asyncio.sleep(1.0)  # logged in flush(); try again, never spin

    async def _write(self, batch: dict[SeriesId, _Pending]) -> None:
        """The batch in a handful of statements, whatever its number of series: the write
        transaction lasts a few round trips to the database thread, not a few per series
        (a loop slowed by load stretched it, and other writers of the file waited)."""
        ids = await self._series_ids(list(batch))
        bars = [
            (ids[key], *bar, int(forming))
            for key, pending in batch.items()
            for bar, forming in pending.bars.values()
        ]
        if bars:
            await self._db.executemany(
                "INSERT OR REPLACE INTO bars (series, t, o, h, l, c, v, forming) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                bars,
            )
        covered = [
            (ids[key], pending)
            for key, pending in batch.items()
            if pending.coverage is not None and key not in self._untrusted
        ]
        if not covered:
            return
        await self._db.executemany(
            "DELETE FROM bar_coverage WHERE series = ?", [(series,) for series, _ in covered]
        )
        await self._db.executemany(
            "INSERT INTO bar_coverage (series, a, b) VALUES (?, ?, ?)",
            [(series, a, b) for series, pending in covered for a, b in pending.coverage or ()],
        )
        await self._db.executemany(
            "UPDATE bar_series SET exhausted_before = ? WHERE id = ?",
            [(pending.exhausted_before, series) for series, pending in covered],
        )

    async def _series_ids(self, keys: list[SeriesId]) -> dict[SeriesId, int]:
        """The row id of each series; those not known yet are made in one statement, read
        back and committed (a series is new once in the life of the file)."""
        new = [key for key in keys if key not in self._ids]
        if not new:
            return {key: self._ids[key] for key in keys}
        made: dict[SeriesId, int] = {}
        await self._db.executemany(
            "INSERT OR IGNORE INTO bar_series (source, name, interval) VALUES (?, ?, ?)", new
        )
        for key in new:
            async with self._db.execute(
                "SELECT id FROM bar_series WHERE source = ? AND name = ? AND interval = ?",
                key,
            ) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            made[key] = int(row[0])
        # Committed apart: a batch rolled back later must not leave ids that are not there.
        # The ids are kept only once committed: a commit that fails (a full disk) rolls the
        # rows back, and bars written later under their ids belonged to no series (lost to
        # every read, and taken by the next series made, which got the same id).
        await self._db.commit()
        self._ids.update(made)
        return {key: self._ids[key] for key in keys}

    # ------------------------------------------------------------------ reads

    async def load(self, key: SeriesId, limit: int) -> Snapshot:
        """The coverage of ``key`` and its newest ``limit`` bars (queued writes included)."""
        snapshot = await self._load_stored(key, limit)
        return self._overlay(key, snapshot, limit)

    async def _load_stored(self, key: SeriesId, limit: int) -> Snapshot:
        try:
            async with self._db.execute(
                "SELECT id, exhausted_before FROM bar_series "
                "WHERE source = ? AND name = ? AND interval = ?",
                key,
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return Snapshot([], None, [], True)
            series, exhausted = int(row[0]), row[1]
            self._ids[key] = series
            async with self._db.execute(
                "SELECT a, b FROM bar_coverage WHERE series = ? ORDER BY a", (series,)
            ) as cursor:
                coverage = [(int(a), int(b)) for a, b in await cursor.fetchall()]
            bars = await self._select(series, None, None, limit + 1)
        except aiosqlite.Error as exc:
            raise StorageError(f"cannot read {key} from the bar store: {exc}") from exc
        complete = len(bars) <= limit
        return Snapshot(coverage, exhausted, bars[-limit:] if limit else [], complete)

    async def read(self, key: SeriesId, a: int, b: int, limit: int) -> list[Bar]:
        """The newest ``limit`` bars with ``a <= t <= b``, ascending (queued ones included)."""
        series = self._ids.get(key)
        stored: list[Bar] = []
        if series is not None:
            try:
                stored = await self._select(series, a, b, limit)
            except aiosqlite.Error as exc:
                raise StorageError(f"cannot read {key} from the bar store: {exc}") from exc
        queued = [bar for bar in self._queued_bars(key) if a <= bar[0] <= b]
        return _merge(stored, queued)[-limit:] if queued else stored

    def _queued(self, key: SeriesId) -> list[_Pending]:
        """What is queued for ``key`` and not committed yet: the batch being written, then
        what was queued since (newer)."""
        return [
            pending
            for pending in (self._writing.get(key), self._pending.get(key))
            if pending is not None
        ]

    def _queued_bars(self, key: SeriesId) -> list[Bar]:
        """The bars of :meth:`_queued`, ascending, a newer one of a time replacing the older."""
        lists = [[bar for bar, _ in pending.bars.values()] for pending in self._queued(key)]
        if len(lists) == 2:
            return _merge(*lists)
        return lists[0] if lists else []

    def _overlay(self, key: SeriesId, snapshot: Snapshot, limit: int) -> Snapshot:
        queued = self._queued(key)
        if not queued:
            return snapshot
        for pending in queued:
            if pending.coverage is not None:
                snapshot.coverage = list(pending.coverage)
                snapshot.exhausted_before = pending.exhausted_before
        merged = _merge(snapshot.bars, self._queued_bars(key))
        snapshot.complete = snapshot.complete and len(merged) <= limit
        snapshot.bars = merged[-limit:] if limit else []
        return snapshot

    async def _select(self, series: int, a: int | None, b: int | None, limit: int) -> list[Bar]:
        low = -(2**62) if a is None else a
        high = 2**62 if b is None else b
        async with self._db.execute(
            "SELECT t, o, h, l, c, v FROM bars WHERE series = ? AND t BETWEEN ? AND ? "
            "ORDER BY t DESC LIMIT ?",
            (series, low, high, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in reversed(list(rows))]

    async def apply_retention(self, cutoffs: dict[str, int]) -> int:
        """Delete bars and coverage older than each interval's cutoff; returns bars deleted."""
        with contextlib.suppress(StorageError):
            await self.flush()  # a locked file: the queue stays, retention runs anyway
        with contextlib.suppress(StorageError):
            await self._check_file()  # also when nothing was queued
        if self._moved:  # DB deleted or replaced (logged, in /health): write nothing more
            return 0
        removed = 0
        async with self._lock:
            try:
                for interval, cutoff in cutoffs.items():
                    removed += await self._prune_interval(interval, cutoff)
                await self._db.commit()
            except aiosqlite.Error as exc:
                with contextlib.suppress(aiosqlite.Error):
                    await self._db.rollback()
                raise StorageError(f"bar store retention failed: {exc}") from exc
        return removed

    async def _prune_interval(self, interval: str, cutoff: int) -> int:
        of_interval = "series IN (SELECT id FROM bar_series WHERE interval = ?)"
        cursor = await self._db.execute(
            f"DELETE FROM bars WHERE t < ? AND {of_interval}", (cutoff, interval)
        )
        await self._db.execute(
            f"DELETE FROM bar_coverage WHERE b < ? AND {of_interval}", (cutoff, interval)
        )
        await self._db.execute(
            f"UPDATE bar_coverage SET a = ? WHERE a < ? AND {of_interval}",
            (cutoff, cutoff, interval),
        )
        await self._db.execute(
            "UPDATE bar_series SET exhausted_before = NULL "
            "WHERE interval = ? AND exhausted_before < ?",
            (interval, cutoff),
        )
        return max(0, cursor.rowcount)


def _merge(stored: list[Bar], queued: list[Bar]) -> list[Bar]:
    """Stored bars with queued ones on top (a queued bar replaces the stored one)."""
    by_time = {bar[0]: bar for bar in stored}
    by_time.update((bar[0], bar) for bar in queued)
    return [by_time[t] for t in sorted(by_time)]
