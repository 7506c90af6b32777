"""Alerts in SQLite (the ``DB`` file): they survive a restart with their armed state, and
so do their pending deliveries.

A small synchronous store (one connection, a lock); the hub calls it through
``asyncio.to_thread`` so no query runs on the event loop. ``alert_quota`` counts the alerts
each client address created per UTC day (``MAX_ALERTS_PER_DAY``); deleting an alert does
not give its slot back.

``alert_deliveries`` holds each push and webhook call from the firing (or creation, or
expiry) that made it until it is sent or given up, with the attempts made and the time
the next may start: :meth:`AlertStore.commit` writes a :class:`Batch` (armed states, expired
alerts, new deliveries, their progress) in one transaction, so a firing's state and its
deliveries are stored together or not at all. Each row names the hub worker that wrote it,
the one that resumes it after a restart (:meth:`AlertStore.take_deliveries`). The table is
bounded: a worker keeps at most ``cap`` rows (the oldest go first) and none older than
``older_than``; what goes is returned, for the caller to log and count.

Hub workers (``--workers N``) share the file, each with its own connection: the quota is
counted in one transaction, listing and deletion read and write the table, and
``alert_deleted`` holds, for a few seconds, the ids one worker deleted while another
evaluates them (that worker drops them at its next sweep). Each alert notes the worker
that evaluates it and the hub's *run* (one start of the hub, all its workers): a worker
takes the alerts of its share not yet taken in this run (:meth:`AlertStore.claim`), and
evaluates those noted as its own in this run, so one started again alone takes back what
its previous process evaluated, and nothing another worker does.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.dbfile import file_id
from backend.errors import StorageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    peer TEXT NOT NULL,
    endpoint TEXT,
    owner TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    armed INTEGER NOT NULL DEFAULT 1,
    fired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_endpoint ON alerts(endpoint);
CREATE INDEX IF NOT EXISTS alerts_owner ON alerts(owner);
CREATE TABLE IF NOT EXISTS alert_deleted (
    id INTEGER PRIMARY KEY,
    deleted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_quota (
    peer TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (peer, day)
);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    owner TEXT,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_deliveries_worker ON alert_deliveries(worker, id);
"""

Row = dict[str, Any]
BUSY_TIMEOUT_MS = 30_000  # a write waits this long for the database lock (see __init__)
ADDED_COLUMNS = (("alerts", "worker", "INTEGER"), ("alerts", "run", "TEXT"))
Mine = tuple[int, str]
"""``(worker, run)``: the alerts a hub worker evaluates in this run of the hub."""


@dataclass(slots=True)
class PendingDelivery:
    """One push (``kind`` "push": ``body`` is ``{"subscription", "payload"}``) or webhook
    call (``body`` is the JSON posted) of alert ``alert_id``, until it is sent or given up.
    ``trusted``: the operator's ``ALERT_WEBHOOK_URL``; ``owner``: whose share of the delivery
    slots it takes; ``attempts`` made so far, the next not before ``next_at`` (epoch
    seconds); ``id`` is the row's, 0 until it is written."""

    alert_id: int
    kind: str
    url: str
    trusted: bool
    owner: str | None
    body: dict[str, Any]
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    id: int = 0


@dataclass(slots=True)
class Batch:
    """What one transaction writes: armed states (alert id -> ``(armed, fired)``), alerts to
    delete, new deliveries, the progress of those retrying (delivery id -> ``(attempts,
    next_at)``), the deliveries done (sent or given up), and ``older_than``: drop this
    worker's deliveries made before that time (0: none)."""

    states: dict[int, tuple[bool, int]] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    new: list[PendingDelivery] = field(default_factory=list)
    retries: dict[int, tuple[int, float]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    older_than: float = 0.0

    def __bool__(self) -> bool:
        return bool(
            self.states or self.deleted or self.new or self.retries or self.done or self.older_than
        )

    def after(self, earlier: Batch) -> Batch:
        """One batch of ``earlier`` followed by this one (a batch that could not be written
        goes again with the next)."""
        return Batch(
            {**earlier.states, **self.states},
            earlier.deleted | self.deleted,
            earlier.new + self.new,
            {**earlier.retries, **self.retries},
            earlier.done | self.done,
            max(earlier.older_than, self.older_than),
        )


@dataclass(frozen=True, slots=True)
class Dropped:
    """Deliveries the bound took away: ``ids`` of their rows (0 for one dropped before it
    was written), and why ("too_old", "table_full")."""

    ids: tuple[int, ...]
    reason: str


class AlertStore:
    """The ``alerts``, ``alert_quota``, ``alert_deleted`` and ``alert_deliveries`` tables."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._moved = False  # DB was deleted or replaced since it was opened
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # Every call runs on a worker thread, so it may wait for the bar store's flush (a
            # transaction of many statements) however long a stalled event loop makes it.
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"alert store {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._file = file_id(path)

    def _check_file(self) -> None:
        """Before a write (under the lock): ``sqlite3.OperationalError`` when the file at
        ``DB`` is no longer the one opened (deleted, or replaced while the server runs).
        The connection keeps the old file, but the journal (``DB-wal``) is found by name:
        whoever opens the new file would copy this server's pages into it. So nothing is
        written any more, and the journal is emptied into the old file once."""
        if not self._moved:
            if file_id(self.path) == self._file:
                return
            self._moved = True
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raise sqlite3.OperationalError(
            "it was deleted or replaced while the server ran (the server still holds the file"
            " it opened, and writes no more)"
        )

    def _migrate(self) -> None:
        """Add the columns a database made by an older version lacks (workers starting
        together may race to add one: the loser finds it there)."""
        for table, column, kind in ADDED_COLUMNS:
            found = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column in found:
                continue
            try:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self,
        spec: dict[str, Any],
        peer: str,
        expires_at: float,
        per_day: int,
        mine: Mine = (1, ""),
    ) -> Row | None:
        """Store a new alert, evaluated by ``mine`` (the creating worker, this run); None
        when ``peer`` created ``per_day`` alerts today (UTC); ``StorageError`` when the
        database cannot take it now (locked, full, read-only)."""
        try:
            return self._create(spec, peer, expires_at, per_day, mine)
        except sqlite3.Error as exc:
            raise StorageError(f"alert store: {exc}") from exc

    def _create(
        self, spec: dict[str, Any], peer: str, expires_at: float, per_day: int, mine: Mine
    ) -> Row | None:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        subscription = spec.get("subscription")
        endpoint = subscription.get("endpoint") if isinstance(subscription, dict) else None
        with self._lock, self._db:
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")
            found = self._db.execute(
                "SELECT count FROM alert_quota WHERE peer = ? AND day = ?", (peer, day)
            ).fetchone()
            if (found[0] if found is not None else 0) >= per_day:
                return None
            self._db.execute(
                "INSERT INTO alert_quota(peer, day, count) VALUES (?, ?, 1) "
                "ON CONFLICT(peer, day) DO UPDATE SET count = count + 1",
                (peer, day),
            )
            self._db.execute("DELETE FROM alert_quota WHERE day < ?", (day,))
            cursor = self._db.execute(
                "INSERT INTO alerts(spec, peer, endpoint, owner, created_at, expires_at, "
                "worker, run) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (json.dumps(spec), peer, endpoint, spec.get("owner"), now, expires_at, *mine),
            )
            alert_id = cursor.lastrowid
        return self.get(int(alert_id or 0))

    def get(self, alert_id: int) -> Row | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return None if row is None else _row(row)

    def claim(self, share: tuple[int, int], mine: Mine) -> None:
        """Note the alerts of ``share`` (as in :meth:`active`) as ``mine`` (a worker, this
        run), but for those already noted in this run: made by a worker since the run
        began, or taken by this worker's previous process."""
        remainder, modulus = share
        worker, run = mine
        with self._lock, self._db:
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE alerts SET worker = ?, run = ? WHERE id % ? = ? AND run IS NOT ?",
                (worker, run, modulus, remainder, run),
            )

    def active(
        self, now: float, share: tuple[int, int] = (0, 1), mine: Mine | None = None
    ) -> list[Row]:
        """Every alert that has not expired, oldest first; ``share`` ``(k, n)``: only those
        whose ``id % n == k`` (the share of hub worker ``k + 1`` of ``n``); ``mine``: only
        those noted as a worker's in a run (:meth:`claim`), whatever their share."""
        return self._select("expires_at > ?", now, share, mine)

    def expired(
        self, now: float, share: tuple[int, int] = (0, 1), mine: Mine | None = None
    ) -> list[Row]:
        """The alerts that expired by ``now`` and are still stored (the server was down
        when they expired), of ``share`` or ``mine`` as in :meth:`active`, oldest first."""
        return self._select("expires_at <= ?", now, share, mine)

    def _select(
        self, when: str, now: float, share: tuple[int, int], mine: Mine | None
    ) -> list[Row]:
        remainder, modulus = share
        values: tuple[object, ...]
        which, values = "id % ? = ?", (modulus, remainder)
        if mine is not None:
            which, values = "worker = ? AND run = ?", mine
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM alerts WHERE {when} AND {which} ORDER BY id", (now, *values)
            ).fetchall()
        return [_row(row) for row in rows]

    def of(self, endpoint: str | None, owner: str | None, now: float, limit: int) -> list[Row]:
        """The unexpired alerts of a push endpoint or an owner key, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM alerts WHERE (endpoint = ? OR owner = ?) AND expires_at > ? "
                "ORDER BY id LIMIT ?",
                (endpoint, owner, now, limit),
            ).fetchall()
        return [_row(row) for row in rows]

    def save_state(self, alert_id: int, armed: bool, fired: int) -> None:
        with self._lock:
            self._check_file()
            self._db.execute(
                "UPDATE alerts SET armed = ?, fired = ? WHERE id = ?", (int(armed), fired, alert_id)
            )

    def commit(self, batch: Batch, worker: int, cap: int) -> list[Dropped]:
        """Write ``batch`` in one transaction, as hub worker ``worker``; each new delivery
        gets its row's ``id``. Then at most ``cap`` deliveries of this worker are kept (the
        oldest go) and none made before ``batch.older_than``: what went is returned.
        ``StorageError`` when the database cannot take it now (nothing of it is written)."""
        try:
            with self._lock, self._db:
                self._check_file()
                self._db.execute("BEGIN IMMEDIATE")
                return self._commit(batch, worker, cap)
        except sqlite3.Error as exc:
            for delivery in batch.new:
                delivery.id = 0
            raise StorageError(f"alert store: {exc}") from exc

    def _commit(self, batch: Batch, worker: int, cap: int) -> list[Dropped]:
        db = self._db
        db.executemany(
            "UPDATE alerts SET armed = ?, fired = ? WHERE id = ?",
            [(int(armed), fired, i) for i, (armed, fired) in batch.states.items()],
        )
        db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in batch.deleted])
        for delivery in batch.new:
            cursor = db.execute(
                "INSERT INTO alert_deliveries(alert_id, worker, kind, url, trusted, owner, "
                "body, attempts, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.alert_id,
                    worker,
                    delivery.kind,
                    delivery.url,
                    int(delivery.trusted),
                    delivery.owner,
                    json.dumps(delivery.body),
                    delivery.attempts,
                    delivery.next_at,
                    delivery.created_at,
                ),
            )
            delivery.id = int(cursor.lastrowid or 0)
        db.executemany(
            "UPDATE alert_deliveries SET attempts = ?, next_at = ? WHERE id = ?",
            [(made, next_at, i) for i, (made, next_at) in batch.retries.items()],
        )
        db.executemany("DELETE FROM alert_deliveries WHERE id = ?", [(i,) for i in batch.done])
        dropped = []
        if batch.older_than:
            old = db.execute(
                "DELETE FROM alert_deliveries WHERE worker = ? AND created_at < ? RETURNING id",
                (worker, batch.older_than),
            ).fetchall()
            if old:
                dropped.append(Dropped(tuple(row[0] for row in old), "too_old"))
        if batch.new:
            over = db.execute(
                "DELETE FROM alert_deliveries WHERE worker = ? AND id <= (SELECT id FROM "
                "alert_deliveries WHERE worker = ? ORDER BY id DESC LIMIT 1 OFFSET ?) "
                "RETURNING id",
                (worker, worker, cap),
            ).fetchall()
            if over:
                dropped.append(Dropped(tuple(row[0] for row in over), "table_full"))
        return dropped

    def take_deliveries(self, worker: int, workers: int) -> list[PendingDelivery]:
        """The pending deliveries hub worker ``worker`` of ``workers`` resumes at its start:
        those it wrote before (its previous process is gone: it is the one starting), and
        for worker 1 also those of workers beyond ``workers`` (a hub now run with fewer),
        which become its own. Oldest first."""
        with self._lock, self._db:
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")
            if worker == 1:
                self._db.execute(
                    "UPDATE alert_deliveries SET worker = 1 WHERE worker > ? OR worker < 1",
                    (workers,),
                )
            rows = self._db.execute(
                "SELECT * FROM alert_deliveries WHERE worker = ? ORDER BY id", (worker,)
            ).fetchall()
        return [
            PendingDelivery(
                row["alert_id"],
                row["kind"],
                row["url"],
                bool(row["trusted"]),
                row["owner"],
                json.loads(row["body"]),
                row["created_at"],
                row["attempts"],
                row["next_at"],
                row["id"],
            )
            for row in rows
        ]

    def drop_subscription(self, alert_id: int, spec: dict[str, Any]) -> None:
        """The push service said the subscription is gone (404/410): store ``spec``, whose
        subscription has no keys left. The endpoint stays: it still names the alert's
        owner (the browser lists and deletes its alerts by it)."""
        with self._lock:
            self._check_file()
            self._db.execute(
                "UPDATE alerts SET spec = ? WHERE id = ?", (json.dumps(spec), alert_id)
            )

    def delete(self, alert_ids: list[int]) -> None:
        with self._lock:
            self._check_file()
            self._db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in alert_ids])

    def delete_of(
        self, alert_id: int, endpoint: str | None, owner: str | None, tombstone: bool
    ) -> bool:
        """Delete ``alert_id`` if it belongs to that endpoint or owner; ``tombstone``: note
        it in ``alert_deleted`` for the worker that evaluates it. False: no such alert."""
        with self._lock, self._db:
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute(
                "DELETE FROM alerts WHERE id = ? AND (endpoint = ? OR owner = ?)",
                (alert_id, endpoint, owner),
            ).rowcount
            if deleted and tombstone:
                self._db.execute(
                    "INSERT OR REPLACE INTO alert_deleted(id, deleted_at) VALUES (?, ?)",
                    (alert_id, time.time()),
                )
        return deleted > 0

    def tombstones(self) -> list[int]:
        """The ids in ``alert_deleted`` (usually none); ``StorageError`` when unreadable."""
        try:
            with self._lock:
                return [row[0] for row in self._db.execute("SELECT id FROM alert_deleted")]
        except sqlite3.Error as exc:
            raise StorageError(f"alert store: reading deletion notes: {exc}") from exc

    def forget_tombstones(self, alert_ids: list[int], older_than: float) -> None:
        """Remove these ids from ``alert_deleted``, and every entry older than ``older_than``
        (a worker that would have taken it is gone); ``StorageError`` when it cannot."""
        ids = [(alert_id,) for alert_id in alert_ids]
        try:
            with self._lock, self._db:
                self._check_file()
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM alert_deleted WHERE id = ?", ids)
                self._db.execute("DELETE FROM alert_deleted WHERE deleted_at < ?", (older_than,))
        except sqlite3.Error as exc:
            raise StorageError(f"alert store: removing deletion notes: {exc}") from exc


def _row(row: sqlite3.Row) -> Row:
    found = dict(row)
    found["spec"] = json.loads(found["spec"])
    found["armed"] = bool(found["armed"])
    return found
