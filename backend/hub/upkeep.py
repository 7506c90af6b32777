"""The hub's housekeeping task: once a second, close clients that cannot keep up and keep
the bar cache within its bounds; once an hour, drop bars older than their retention.

Each step logs its own failure and the next tick tries again: a failing step (a store that
cannot prune, say) never stops the others. The task is owned here: a done-callback logs if
it ever ends with an error, and :meth:`Upkeep.stop` cancels it and waits at most a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from backend.tasks import Tasks, cancel_owned, start_owned

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0
RETENTION_EVERY = 3600.0
STOP_TIMEOUT = 5.0

Step = Callable[[], None]
SlowStep = Callable[[], Awaitable[None]]


class Upkeep:
    """Runs ``steps`` every ``every`` seconds and ``hourly`` every ``RETENTION_EVERY``."""

    def __init__(
        self,
        steps: list[Step],
        hourly: list[SlowStep],
        every: float = TICK_SECONDS,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.steps = steps
        self.hourly = hourly
        self.every = every
        self.on_failure = on_failure
        self.ticks = 0
        self._tasks: Tasks = set()
        self._stopped = False
        self._last_hourly: float | None = None

    def start(self, error: BaseException | None = None) -> None:
        """Start ticking; a task that died (logged by its owner) is started again."""
        if not self._stopped:
            start_owned(self._tasks, self._run(), "hub upkeep", self.start)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self._stopped = True
        await cancel_owned(self._tasks, timeout)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.tick()

    async def tick(self) -> None:
        """One round: every step, each on its own."""
        for step in self.steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - logged; the next tick tries again
                self._failed(getattr(step, "__name__", repr(step)))
        now = time.monotonic()
        if self._last_hourly is None or now - self._last_hourly > RETENTION_EVERY:
            self._last_hourly = now
            for slow in self.hourly:
                try:
                    await slow()
                except Exception:  # noqa: BLE001 - logged; tried again in an hour
                    self._failed(getattr(slow, "__name__", repr(slow)))
        self.ticks += 1

    def _failed(self, name: str) -> None:
        logger.exception("hub upkeep: %s failed; carrying on", name)
        if self.on_failure is not None:
            self.on_failure()
