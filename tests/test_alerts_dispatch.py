"""The delivery scheduler: a destination that hangs holds at most its own slots, others go
on, and the backlog is bounded by dropping the busiest destination's oldest job."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from backend import tasks
from backend.alerts.dispatch import Dispatcher, pause
from tests.harness import eventually


class Recorder:
    def __init__(self) -> None:
        self.owned: tasks.Tasks = set()
        self.started: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    def start(self, job: Coroutine[Any, Any, None], name: str) -> None:
        self.started.append(name)
        tasks.start_owned(self.owned, job, name)

    def drop(self, destination: str, name: str) -> None:
        self.dropped.append((destination, name))

    async def hang(self) -> None:
        await self.release.wait()

    async def quick(self) -> None:
        return None


async def test_a_hanging_destination_holds_only_its_own_slots_and_others_go_on() -> None:
    seen = Recorder()
    dispatcher = Dispatcher(seen.start, seen.drop, at_once=8, per_destination=3, backlog=100)
    for n in range(20):
        dispatcher.submit("http://hung", f"hung {n}", seen.hang)
    dispatcher.submit("https://push.example", "victim", seen.quick)
    assert seen.started == ["hung 0", "hung 1", "hung 2", "victim"]
    assert dispatcher.running <= 3 + 1 and dispatcher.waiting == 17
    seen.release.set()
    await eventually(lambda: dispatcher.running == 0 and dispatcher.waiting == 0, 5, "all jobs")
    assert len(seen.started) == 21 and seen.dropped == []


async def test_the_backlog_drops_the_oldest_job_of_the_busiest_destination() -> None:
    seen = Recorder()
    dispatcher = Dispatcher(seen.start, seen.drop, at_once=2, per_destination=1, backlog=4)
    for n in range(6):
        dispatcher.submit("http://hung", f"hung {n}", seen.hang)
    dispatcher.submit("http://other", "other 0", seen.hang)  # runs: a slot is free
    dispatcher.submit("http://other", "other 1", seen.hang)
    # running: hung 0, other 0; waiting: hung 1..5 and other 1, bounded to 4
    assert seen.started == ["hung 0", "other 0"]
    assert seen.dropped == [("http://hung", "hung 1"), ("http://hung", "hung 2")]
    assert dispatcher.waiting == 4
    dispatcher.close()
    seen.release.set()
    await tasks.cancel_owned(seen.owned)
    assert seen.started == ["hung 0", "other 0"]  # nothing starts after close


async def test_waiting_destinations_are_served_in_turn() -> None:
    seen = Recorder()
    dispatcher = Dispatcher(seen.start, seen.drop, at_once=1, per_destination=1, backlog=100)
    dispatcher.submit("a", "a 0", seen.hang)
    for n in range(1, 4):
        dispatcher.submit("a", f"a {n}", seen.quick)
    dispatcher.submit("b", "b 0", seen.quick)
    seen.release.set()
    await eventually(lambda: len(seen.started) == 5, 5, "every job")
    assert seen.started.index("b 0") <= 2  # not behind every job of "a"


async def test_a_job_waiting_to_retry_gives_its_slot_to_the_next_and_then_goes_first() -> None:
    """Retries kept their slots through their backoff: a client naming eight hanging
    endpoints held all 32 slots and other pushes waited about a minute."""
    seen = Recorder()
    retried = asyncio.Event()
    order: list[str] = []

    async def failing_then_retrying() -> None:
        order.append("attempt 1")
        await pause(0.2)  # a retry's backoff, without the slot
        order.append("attempt 2")
        retried.set()

    async def victim() -> None:
        order.append("victim")

    dispatcher = Dispatcher(seen.start, seen.drop, at_once=1, per_destination=1, backlog=100)
    dispatcher.submit("http://attacker", "retrying", failing_then_retrying)
    dispatcher.submit("https://push.example", "victim", victim)
    await eventually(lambda: order[:2] == ["attempt 1", "victim"], 5, "the victim in the pause")
    await asyncio.wait_for(retried.wait(), 5)
    assert order == ["attempt 1", "victim", "attempt 2"]
    await eventually(lambda: dispatcher.running == 0 and dispatcher.waiting == 0, 5, "all done")


async def test_pause_outside_a_dispatched_job_is_a_plain_wait() -> None:
    await pause(0.01)


async def test_one_owner_naming_many_hanging_endpoints_holds_only_its_share() -> None:
    """A client whose alerts named eight or more hanging endpoints (one host each) held all
    the slots for a whole attempt: another user's push waited 10 s. Its jobs beyond its
    share wait; other owners' jobs, and the operator's (no owner), pass them."""
    seen = Recorder()
    dispatcher = Dispatcher(
        seen.start, seen.drop, at_once=8, per_destination=4, backlog=100, per_owner=3
    )
    for n in range(10):
        dispatcher.submit(f"http://hung{n}", f"hung {n}", seen.hang, owner="attacker")
    dispatcher.submit("http://hung0", "attacker again", seen.hang, owner="attacker")
    dispatcher.submit("http://hung0", "victim", seen.quick, owner="victim")
    dispatcher.submit("https://ops.example", "operator", seen.quick)
    assert seen.started[:3] == ["hung 0", "hung 1", "hung 2"]
    assert set(seen.started[3:]) == {"victim", "operator"}
    await eventually(lambda: dispatcher.running == 3, 5, "the victim's and operator's jobs done")
    assert dispatcher.waiting == 8  # the attacker's: they start as its own jobs end
    seen.release.set()
    await eventually(lambda: dispatcher.running == 0 and dispatcher.waiting == 0, 5, "all jobs")
    assert len(seen.started) == 13 and seen.dropped == []


async def test_a_paused_job_gives_back_its_owners_slot_and_waits_for_one() -> None:
    seen = Recorder()
    order: list[str] = []

    async def retrying() -> None:
        order.append("attempt 1")
        await pause(0.2)
        order.append("attempt 2")

    async def second() -> None:
        order.append("second")
        await seen.hang()

    dispatcher = Dispatcher(
        seen.start, seen.drop, at_once=8, per_destination=4, backlog=100, per_owner=1
    )
    dispatcher.submit("http://a", "retrying", retrying, owner="one")
    dispatcher.submit("http://b", "second", second, owner="one")
    await eventually(lambda: order == ["attempt 1", "second"], 5, "the second in the pause")
    await asyncio.sleep(0.4)  # time must pass: the retry may not run while "second" holds
    assert order == ["attempt 1", "second"]  # the owner's one slot is taken
    seen.release.set()
    await eventually(lambda: order[-1:] == ["attempt 2"], 5, "the retry after the slot frees")
    await eventually(lambda: dispatcher.running == 0 and dispatcher.waiting == 0, 5, "all done")


async def test_the_owners_of_one_destination_take_turns_and_the_busiest_loses_the_backlog() -> None:
    seen = Recorder()
    dispatcher = Dispatcher(
        seen.start, seen.drop, at_once=1, per_destination=1, backlog=4, per_owner=1
    )
    dispatcher.submit("d", "x 0", seen.hang, owner="x")  # runs
    for n in range(1, 4):
        dispatcher.submit("d", f"x {n}", seen.quick, owner="x")
    dispatcher.submit("d", "y 0", seen.quick, owner="y")
    dispatcher.submit("d", "y 1", seen.quick, owner="y")  # over the backlog: x's oldest goes
    assert seen.dropped == [("d", "x 1")]
    seen.release.set()
    await eventually(lambda: len(seen.started) == 5, 5, "every job left")
    assert seen.started[1:3] in (["y 0", "x 2"], ["x 2", "y 0"])  # in turn, not all of x first
    assert seen.started.index("y 0") < seen.started.index("x 3")
