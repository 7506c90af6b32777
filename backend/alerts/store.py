"""Alerts in SQLite (the ``DB`` file): they survive a restart with their armed state.

A small synchronous store (one connection, a lock); the hub calls it through
``asyncio.to_thread`` so no query runs on the event loop. ``alert_quota`` counts the alerts
each client address created per UTC day (``MAX_ALERTS_PER_DAY``); deleting an alert does
not give its slot back.

Hub workers (``--workers N``) share the file, each with its own connection: the quota is
counted in one transaction, listing and deletion read and write the table, and
``alert_deleted`` holds, for a few seconds, the ids one worker deleted while another
evaluates them (that worker drops them at its next sweep).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

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
"""

Row = dict[str, Any]
BUSY_TIMEOUT_MS = 30_000  # a write waits this long for the database lock (see __init__)


class AlertStore:
    """The ``alerts`` and ``alert_quota`` tables."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # Every call runs on a worker thread, so it may wait for the bar store's flush (a
            # transaction of many statements) however long a stalled event loop makes it.
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"alert store {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self, spec: dict[str, Any], peer: str, expires_at: float, per_day: int
    ) -> Row | None:
        """Store a new alert; None when ``peer`` created ``per_day`` alerts today (UTC);
        ``StorageError`` when the database cannot take it now (locked, full, read-only)."""
        try:
            return self._create(spec, peer, expires_at, per_day)
        except sqlite3.Error as exc:
            raise StorageError(f"alert store: {exc}") from exc

    def _create(
        self, spec: dict[str, Any], peer: str, expires_at: float, per_day: int
    ) -> Row | None:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        subscription = spec.get("subscription")
        endpoint = subscription.get("endpoint") if isinstance(subscription, dict) else None
        with self._lock, self._db:
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
                "INSERT INTO alerts(spec, peer, endpoint, owner, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (json.dumps(spec), peer, endpoint, spec.get("owner"), now, expires_at),
            )
            alert_id = cursor.lastrowid
        return self.get(int(alert_id or 0))

    def get(self, alert_id: int) -> Row | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return None if row is None else _row(row)

    def active(self, now: float, share: tuple[int, int] = (0, 1)) -> list[Row]:
        """Every alert that has not expired, oldest first; ``share`` ``(k, n)``: only those
        whose ``id % n == k`` (the share of hub worker ``k + 1`` of ``n``)."""
        remainder, modulus = share
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM alerts WHERE expires_at > ? AND id % ? = ? ORDER BY id",
                (now, modulus, remainder),
            ).fetchall()
        return [_row(row) for row in rows]

    def expired(self, now: float, share: tuple[int, int] = (0, 1)) -> list[Row]:
        """The alerts that expired by ``now`` and are still stored (the server was down
        when they expired), of ``share`` as in :meth:`active`, oldest first."""
        remainder, modulus = share
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM alerts WHERE expires_at <= ? AND id % ? = ? ORDER BY id",
                (now, modulus, remainder),
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
            self._db.execute(
                "UPDATE alerts SET armed = ?, fired = ? WHERE id = ?", (int(armed), fired, alert_id)
            )

    def drop_subscription(self, alert_id: int, spec: dict[str, Any]) -> None:
        """The push service said the subscription is gone (404/410): store ``spec``, whose
        subscription has no keys left. The endpoint stays: it still names the alert's
        owner (the browser lists and deletes its alerts by it)."""
        with self._lock:
            self._db.execute(
                "UPDATE alerts SET spec = ? WHERE id = ?", (json.dumps(spec), alert_id)
            )

    def delete(self, alert_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in alert_ids])

    def delete_of(
        self, alert_id: int, endpoint: str | None, owner: str | None, tombstone: bool
    ) -> bool:
        """Delete ``alert_id`` if it belongs to that endpoint or owner; ``tombstone``: note
        it in ``alert_deleted`` for the worker that evaluates it. False: no such alert."""
        with self._lock, self._db:
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
