"""A client's reply jobs (``backend.hub.clients.Replies``): order per lane, other lanes
going on, the bound, cancellation and failures reported with their request."""

from __future__ import annotations

import asyncio

import pytest

from backend.hub.clients import Replies
from tests.harness import eventually


async def test_a_lane_keeps_its_order_while_other_lanes_go_on() -> None:
    replies = Replies(4, "client 1")
    gate = asyncio.Event()
    done: list[str] = []

    async def slow() -> None:
        done.append("slow started")
        await gate.wait()
        await asyncio.sleep(0)  # a bare yield on the way
        done.append("slow answered")

    async def quick(name: str) -> None:
        done.append(name)

    await replies.submit("lane", slow)
    await replies.submit("lane", lambda: quick("after slow"))  # same lane: waits for it
    await replies.submit("other", lambda: quick("other lane"))  # another lane: goes on
    await eventually(lambda: "other lane" in done, what="the other lane's job to run")
    assert done == ["slow started", "other lane"] and len(replies) == 2
    gate.set()
    await replies.idle()
    assert done == ["slow started", "other lane", "slow answered", "after slow"]


async def test_cancel_reaches_a_job_that_waits_and_frees_its_slot() -> None:
    replies = Replies(1, "client 1")
    cleaned: list[str] = []

    waiting = asyncio.Event()

    async def waits_for_ever() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")

    await replies.submit("lane", waits_for_ever)
    [task] = list(replies._tasks)
    await asyncio.wait_for(waiting.wait(), 5)  # it waits inside the job
    replies.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]
    assert replies._slots._value == 1  # the slot came back


@pytest.mark.parametrize("waits", [False, True])
async def test_a_failing_job_is_reported_with_its_request_and_frees_its_slot(
    waits: bool,
) -> None:
    failures: list[tuple[str, object]] = []
    replies = Replies(1, "client 1", lambda error, request: failures.append((str(error), request)))

    async def broken() -> None:
        if waits:
            await asyncio.sleep(0)
        raise RuntimeError("a bug")

    await replies.submit("lane", broken, {"type": "search_data"})
    await replies.idle()
    assert failures == [("a bug", {"type": "search_data"})]
    assert replies._slots._value == 1
    await replies.submit("lane", broken, "next")  # the bound (1) is free again
    await replies.idle()
    assert failures[-1] == ("a bug", "next")


async def test_a_job_submitted_while_the_bound_is_reached_waits_for_a_slot() -> None:
    replies = Replies(1, "client 1")
    gate = asyncio.Event()
    done: list[str] = []

    async def slow() -> None:
        await gate.wait()
        done.append("slow")

    async def quick() -> None:
        done.append("quick")

    await replies.submit("a", slow)
    second = asyncio.get_running_loop().create_task(replies.submit("b", quick))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done() and done == []  # the reader waits: one job at most
    gate.set()
    await second
    await replies.idle()
    assert done == ["slow", "quick"]
