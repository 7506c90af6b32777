"""The delivery scheduler against a model: random submissions (destinations, owners),
completions and retry pauses, with the real :class:`Dispatcher` and real asyncio tasks on a
loop stepped by the test.

The model is the policy in a few lines: at most ``at_once`` jobs run, ``per_destination``
per destination and ``per_owner`` per owner (the operator's jobs, owner ``None``, have no
owner limit); at most ``backlog`` wait; a job is never lost (it runs, waits, was dropped by
the backlog, or ended), and the scheduler is work-conserving: no job waits that could run
now. Without these the dispatcher could hold a slot forever (a leak on pause and resume)
or leave a job of an idle owner behind one of a busy owner.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from backend.alerts.dispatch import Dispatcher, pause
from tests.test_subscription_model import PROFILE

AT_ONCE, PER_DESTINATION, PER_OWNER, BACKLOG = 5, 2, 3, 8
DESTINATIONS = ["a", "b", "c"]
OWNERS = ["x", "y", None]


class DispatchAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count()
        self.jobs: dict[str, tuple[str, str | None]] = {}  # name -> (destination, owner)
        self.state: dict[str, str] = {}  # name -> waiting, running, paused, done, dropped
        self.finish: dict[str, asyncio.Event] = {}
        self.pause_for: dict[str, asyncio.Event] = {}  # a running job asked to pause once
        self.tasks: set[asyncio.Task[None]] = set()
        self.dispatcher = Dispatcher(
            self._start,
            self._drop,
            at_once=AT_ONCE,
            per_destination=PER_DESTINATION,
            backlog=BACKLOG,
            per_owner=PER_OWNER,
        )

    # ------------------------------------------------------------------ plumbing

    def _start(self, job: Coroutine[Any, Any, None], name: str) -> None:
        self.state[name] = "running"
        task = self.loop.create_task(job)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _drop(self, destination: str, name: str) -> None:
        assert self.state[name] == "waiting", (name, self.state[name])
        self.state[name] = "dropped"

    def _job(self, name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def job() -> None:
            while True:
                done = asyncio.create_task(self.finish[name].wait())
                paused = asyncio.create_task(self.pause_for[name].wait())
                await asyncio.wait((done, paused), return_when=asyncio.FIRST_COMPLETED)
                for waiter in (done, paused):
                    waiter.cancel()
                if self.finish[name].is_set():
                    self.state[name] = "done"
                    return
                self.pause_for[name].clear()
                self.state[name] = "paused"
                await pause(0)  # gives the slot away, waits for one again
                self.state[name] = "running"

        return job

    def _settle(self) -> None:
        for _ in range(12):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _running(self) -> list[str]:
        return [n for n, s in self.state.items() if s == "running"]

    # ------------------------------------------------------------------ rules

    @rule(destination=st.sampled_from(DESTINATIONS), owner=st.sampled_from(OWNERS))
    def submit(self, destination: str, owner: str | None) -> None:
        name = f"job{next(self.ids)}"
        self.jobs[name] = (destination, owner)
        self.state[name] = "waiting"
        self.finish[name] = asyncio.Event()
        self.pause_for[name] = asyncio.Event()
        self.dispatcher.submit(destination, name, self._job(name), owner)
        self._settle()

    @precondition(lambda self: bool(self._running()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self._running())))
        self.finish[name].set()
        self._settle()
        assert self.state[name] == "done"

    @precondition(lambda self: bool(self._running()))
    @rule(data=st.data())
    def retry_pause(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self._running())))
        self.pause_for[name].set()
        self._settle()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def limits_hold(self) -> None:
        running = self._running()
        assert len(running) <= AT_ONCE
        assert self.dispatcher.running == len(running)
        by_destination = Counter(self.jobs[n][0] for n in running)
        by_owner = Counter(self.jobs[n][1] for n in running if self.jobs[n][1] is not None)
        assert max(by_destination.values(), default=0) <= PER_DESTINATION
        assert max(by_owner.values(), default=0) <= PER_OWNER
        assert self.dispatcher.waiting == sum(s == "waiting" for s in self.state.values())
        assert self.dispatcher.waiting <= BACKLOG

    @invariant()
    def nothing_that_could_run_waits(self) -> None:
        running = self._running()
        if len(running) >= AT_ONCE:
            return
        by_destination = Counter(self.jobs[n][0] for n in running)
        by_owner = Counter(self.jobs[n][1] for n in running)
        for name, state in self.state.items():
            if state in ("waiting", "paused"):
                destination, owner = self.jobs[name]  # paused: back, waiting for a slot
                assert not (
                    by_destination[destination] < PER_DESTINATION
                    and (owner is None or by_owner[owner] < PER_OWNER)
                ), f"{name} ({destination}, {owner}) waits with room for it"

    def teardown(self) -> None:
        self.dispatcher.close()
        for event in self.finish.values():
            event.set()
        self._settle()
        for task in list(self.tasks):
            task.cancel()
        self._settle()
        self.loop.close()


DispatchAgainstModel.TestCase.settings = PROFILE
TestDispatchAgainstModel = DispatchAgainstModel.TestCase
