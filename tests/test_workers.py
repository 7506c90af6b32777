"""The hub's worker keeper (``backend.workers.WorkerKeeper``): a worker that exits is started
again, with a delay that doubles while it keeps exiting soon after its start, and none is
started once the keeper stops. (A real ``--workers 2`` hub: tests/test_bus.py.)"""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest

from backend import workers
from tests import harness


def spawn(*argv: str) -> int:
    return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", *argv], os.environ)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(workers, "FIRST_DELAY_SECONDS", 0.05)
    monkeypatch.setattr(workers, "MAX_DELAY_SECONDS", 0.2)


@pytest.mark.usefixtures("quick")
def test_a_worker_that_keeps_exiting_is_started_again_ever_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []

    def start(index: int) -> int:
        assert index == 2
        starts.append(time.monotonic())
        return spawn("exit 3")

    keeper = workers.WorkerKeeper([spawn("exit 3")], port=1, argv=[], start=start)
    with caplog.at_level(logging.WARNING, logger="candlewire.workers"):
        keeper.run()
        harness.until(lambda: len(starts) >= 5, 20, "five starts")
        pids = keeper.stop()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.1, 0.2, 0.2, 0.2 s (the delay doubles up to its ceiling), each a poll or so later;
    # without the ceiling the fourth would be 0.8
    assert gaps[0] >= 0.1 and all(gap >= 0.2 for gap in gaps[1:4]), gaps
    assert gaps[3] < 0.6, gaps
    assert "hub worker 2 (pid" in caplog.text and "exit status 3" in caplog.text
    assert keeper.restarts == len(starts)
    workers.stop_workers(pids)


@pytest.mark.usefixtures("quick")
def test_no_worker_is_started_once_the_keeper_stops_and_the_rest_are_stopped() -> None:
    starts: list[int] = []
    long_lived = spawn("sleep 60")

    def start(index: int) -> int:
        starts.append(index)
        return spawn("sleep 60")

    keeper = workers.WorkerKeeper([long_lived, spawn("exit 0")], port=1, argv=[], start=start)
    keeper.run()
    harness.until(lambda: starts == [3], 20, "worker 3 started again")
    pids = keeper.stop()
    assert long_lived in pids and len(pids) == 2
    workers.stop_workers(pids, timeout=5)
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert starts == [3]


def test_a_start_that_fails_is_tried_again_later(
    quick: None, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    def start(index: int) -> int:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OSError("no more processes")
        return spawn("sleep 60")

    keeper = workers.WorkerKeeper([spawn("exit 1")], port=1, argv=[], start=start)
    with caplog.at_level(logging.ERROR, logger="candlewire.workers"):
        keeper.run()
        harness.until(lambda: len(calls) == 3, 20, "a third start")
        pids = keeper.stop()
    assert "could not be started (no more processes)" in caplog.text
    assert len(pids) == 1
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.1  # the delay grew
    workers.stop_workers(pids, timeout=5)
