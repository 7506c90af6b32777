"""Background tasks have owners: a failure is logged and handled, shutdown waits for them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from backend.history.store import BarStore
from backend.tasks import Tasks, cancel_owned, start_owned
from tests.harness import eventually


async def test_a_failing_task_is_logged_with_its_traceback_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks: Tasks = set()
    failures: list[BaseException] = []

    async def broken() -> None:
        raise RuntimeError("on purpose")

    start_owned(tasks, broken(), "broken-task", failures.append)
    await eventually(lambda: failures, what="the failure callback")
    assert isinstance(failures[0], RuntimeError)
    assert tasks == set()
    assert "background task broken-task failed" in caplog.text
    assert "RuntimeError: on purpose" in caplog.text


async def test_a_cancelled_or_finished_task_is_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks: Tasks = set()
    failures: list[BaseException] = []
    start_owned(tasks, asyncio.sleep(0), "quick", failures.append)
    start_owned(tasks, asyncio.sleep(3600), "long", failures.append)
    await eventually(lambda: len(tasks) == 1, what="the quick task to finish")
    await cancel_owned(tasks)
    assert tasks == set() and failures == []
    assert "failed" not in caplog.text


async def test_cancel_owned_gives_up_on_a_task_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks: Tasks = set()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    start_owned(tasks, stubborn(), "stubborn")
    await asyncio.sleep(0)  # let it reach its first await
    await cancel_owned(tasks, timeout=0.1)
    assert "did not stop within" in caplog.text
    release.set()
    await eventually(lambda: not tasks, what="the stubborn task to end")


async def test_the_bar_store_flusher_is_started_again_after_it_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    original = BarStore._flush_loop

    async def dies_once(self: BarStore) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("flusher bug")
        await original(self)

    monkeypatch.setattr(BarStore, "_flush_loop", dies_once)
    with caplog.at_level(logging.ERROR):
        store = await BarStore.open(tmp_path / "db.sqlite3")
        await eventually(lambda: calls == 2, what="the flusher's second start")
        assert "bar-store-flush failed" in caplog.text
        await store.close()


def test_no_wait_for_in_the_backend() -> None:
    """Python 3.11's ``asyncio.wait_for`` drops a cancel that comes as what it waits for
    ends (it returns the result and the cancelled task goes on: a stopped scan waited out a
    history call that way); ``asyncio.timeout`` does not. The backend uses the latter."""
    backend = Path(__file__).resolve().parent.parent / "backend"
    found = [
        f"{path.relative_to(backend)}:{number}"
        for path in sorted(backend.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "wait_for(" in line and not line.lstrip().startswith("#")
    ]
    assert found == []
