"""End to end: one server per ``DB``. A second server started by mistake on the file of a
running one stops with one line naming ``DB`` (it started and evaluated every stored alert
too: each crossing fired twice, two webhook calls and two pushes); the lock goes with the
server, also when it is killed (SIGKILL), so a restart is not refused."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from backend.app import LOCK_WAIT_SECONDS
from tests.harness import ServerProcess, base_env, populate


def test_a_second_server_on_the_same_db_stops_with_a_clear_error(tmp_path: Path) -> None:
    env = base_env(tmp_path, PROVIDERS="counting")
    assert populate(env).returncode == 0
    first = ServerProcess(env, tmp_path / "first.log").start()
    second = ServerProcess(env, tmp_path / "second.log")
    try:
        with pytest.raises(RuntimeError, match="server did not start"):
            second.start()
        assert second.proc is not None and second.proc.returncode == 2
        log = (tmp_path / "second.log").read_text()
        assert f"candlewire: DB: {env['DB']} is in use by another server" in log
        assert first.proc is not None and f"(pid {first.proc.pid}," in log
        assert first.get("/health")["status"] == "ok"  # the first one serves on
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    finally:
        second.stop()  # one that started (before the lock) is stopped with the test
        first.stop()
    started = time.monotonic()
    with ServerProcess(env, tmp_path / "again.log") as again:  # no wait for a dead holder
        assert again.get("/health")["status"] == "ok"
    assert time.monotonic() - started < LOCK_WAIT_SECONDS  # it did not wait out the lock


def test_the_hubs_of_a_bus_deployment_take_no_lock(tmp_path: Path) -> None:
    """Several hubs on one machine over the bus may have been started on one file: they
    are left as they were (each should have a DB of its own, README)."""
    from backend.app import lock_database
    from backend.settings import load_settings

    settings = load_settings(DB=str(tmp_path / "hub.sqlite3"), BUS_URL="redis://127.0.0.1:6379/0")
    assert lock_database(settings, "hub") is None
    assert not (tmp_path / "hub.sqlite3.lock").exists()
