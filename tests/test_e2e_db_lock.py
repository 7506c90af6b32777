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
    assert time.monotonic() - started < 8
