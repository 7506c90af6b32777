"""Ownership of background tasks: every task the hub starts is watched by its owner.

``start_owned`` creates a task, keeps a strong reference in the owner's set and adds a
done-callback that logs a failure with its traceback (a task that dies is never silent) and
runs the owner's ``on_failure`` (restart it, or stop the service loudly). ``cancel_owned``
cancels an owner's tasks and waits for them, with a timeout, at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

Tasks = set["asyncio.Task[Any]"]


def start_owned(
    tasks: Tasks,
    coroutine: Coroutine[Any, Any, Any],
    name: str,
    on_failure: Callable[[BaseException], None] | None = None,
) -> asyncio.Task[Any]:
    """Run ``coroutine`` as a task named ``name`` owned by ``tasks``."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    tasks.add(task)

    def done(finished: asyncio.Task[Any]) -> None:
        tasks.discard(finished)
        if finished.cancelled():
            return
        error = finished.exception()
        if error is None:
            return
        logger.error("background task %s failed", name, exc_info=error)
        if on_failure is not None:
            on_failure(error)

    task.add_done_callback(done)
    return task


async def cancel_owned(tasks: Tasks, timeout: float = 5.0) -> None:
    """Cancel every task of ``tasks`` and wait for them (at most ``timeout`` seconds)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, still_running = await asyncio.wait(pending, timeout=timeout)
    for task in still_running:
        logger.error("background task %s did not stop within %.0f s", task.get_name(), timeout)
