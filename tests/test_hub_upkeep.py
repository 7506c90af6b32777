"""The hub's housekeeping task: a failing step is logged and the others go on; stop is
bounded."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from backend.errors import StorageError
from backend.hub.upkeep import Upkeep
from tests.harness import seconds
from tests.hub_fakes import make_hub


class PruneFails:
    """A bar store whose retention (prune) always fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def apply_retention(self, cutoffs: dict[str, int]) -> int:
        self.calls += 1
        raise StorageError("database is locked")


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + seconds(timeout)
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_store_that_cannot_prune_does_not_stop_closing_slow_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = PruneFails()
    hub, _ = make_hub(
        None, store, tick_seconds=0.01, BAR_RETENTION_DAYS="30", SLOW_CLIENT_TIMEOUT=0.05
    )
    kicked: list[int] = []
    client = hub.add_client("slow", lambda code, reason: kicked.append(code))
    assert client is not None
    with caplog.at_level(logging.ERROR):
        await hub.start()
        await wait_until(lambda: store.calls >= 1 and hub.upkeep.ticks >= 1)
        for n in range(client.outbox.soft_limit + 1):
            client.outbox.push(b"x", n)
        await wait_until(lambda: kicked == [1013])
        started = time.monotonic()
        await hub.stop()
    assert time.monotonic() - started < seconds(2)
    assert client.id not in hub.clients
    assert "_apply_retention failed" in caplog.text
    assert "database is locked" in caplog.text
    assert hub.metrics.value("candlewire_internal_errors_total") >= 1


async def test_a_failing_step_is_logged_and_the_next_step_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("bug")

    upkeep = Upkeep([broken, lambda: ran.append("next")], [], every=0.01)
    with caplog.at_level(logging.ERROR):
        await upkeep.tick()
        await upkeep.tick()
    assert ran == ["next", "next"]
    assert caplog.text.count("broken failed") == 2


async def test_stop_returns_within_its_timeout_while_a_step_hangs() -> None:
    entered = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        await asyncio.Event().wait()

    upkeep = Upkeep([], [hangs], every=0.01)
    upkeep.start()
    await asyncio.wait_for(entered.wait(), seconds(5))
    started = time.monotonic()
    await upkeep.stop(timeout=1.0)
    assert time.monotonic() - started < seconds(1.5)
