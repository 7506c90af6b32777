"""A writer's failing writes (``backend.write_health``): a full disk is an error at once;
another process holding the write lock (``populate.py`` writing its rows) is a wait, a
warning, and ``/health`` calls it failing only once it has lasted ``LOCK_GRACE_SECONDS``."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from backend import write_health
from backend.write_health import WriteHealth


def writer() -> WriteHealth:
    return WriteHealth("bar store", "bars stay in memory", logging.getLogger("test"), "db")


def test_a_full_disk_is_an_error_and_failing_at_once(caplog: pytest.LogCaptureFixture) -> None:
    health = writer()
    with caplog.at_level(logging.WARNING):
        health.failed(sqlite3.OperationalError("database or disk is full"), lambda: "3 bars")
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert health.health()["state"] == "failing"


def test_a_lock_held_elsewhere_is_a_warning_and_ok_until_the_grace_is_over(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = writer()
    with caplog.at_level(logging.WARNING):
        health.failed(sqlite3.OperationalError("database is locked"), lambda: "3 bars")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert health.health() == {"state": "ok", "waiting_for_lock": "database is locked"}
    monkeypatch.setattr(write_health, "LOCK_GRACE_SECONDS", 0.0)
    assert health.health()["state"] == "failing"  # a lock held for longer is reported
    health.succeeded()
    assert health.health() == {"state": "ok"}
