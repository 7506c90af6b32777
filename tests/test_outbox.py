"""A client's outbox: conflation of forming bars, bounded growth in frames and bytes, never
a silent drop, and replies paced by the client's reading."""

from __future__ import annotations

import asyncio

import pytest

from backend.wire.outbox import HARD_LIMIT_FACTOR, Outbox


def test_a_newer_state_of_the_same_bar_replaces_the_unsent_one_in_place() -> None:
    outbox = Outbox(10)
    outbox.push("init")
    outbox.push("bar1-a", ("k", 1))
    outbox.push("other", ("j", 1))
    outbox.push("bar1-b", ("k", 1))
    assert outbox.drain() == ["init", "bar1-b", "other"]
    assert outbox.conflations == 1


def test_a_new_bar_does_not_replace_the_closing_state_of_the_previous_one() -> None:
    outbox = Outbox(10)
    outbox.push("bar1-final", ("k", 1))
    outbox.push("bar2-first", ("k", 2))
    assert outbox.drain() == ["bar1-final", "bar2-first"]


def test_the_hard_limit_refuses_instead_of_dropping() -> None:
    outbox = Outbox(10)
    accepted = [outbox.push(f"f{i}") for i in range(10 * HARD_LIMIT_FACTOR + 1)]
    assert accepted[-1] is False
    assert all(accepted[:-1])


def test_conflation_still_works_at_the_hard_limit() -> None:
    outbox = Outbox(10)
    for i in range(10 * HARD_LIMIT_FACTOR - 1):
        outbox.push(f"f{i}")
    assert outbox.push("forming-a", ("k", 5))
    assert outbox.push("forming-b", ("k", 5))
    assert outbox.drain()[-1] == "forming-b"


def test_stall_time_counts_only_while_over_the_soft_limit() -> None:
    outbox = Outbox(10)
    assert outbox.stalled_for(100.0) == 0.0
    for i in range(11):
        outbox.push(f"f{i}")
    assert outbox.over_limit_since is not None
    outbox.drain()
    assert outbox.stalled_for(1e12) == 0.0


def test_the_byte_limit_counts_frames_and_what_the_socket_still_holds() -> None:
    in_socket = [0]
    outbox = Outbox(1000, max_bytes=1000)
    outbox.set_wake(lambda: None, lambda: in_socket[0])
    assert outbox.push(b"x" * 600)
    assert outbox.over_limit_since is None
    outbox.drain()
    outbox.handed_on(600)  # written, and still in the socket's buffer
    in_socket[0] = 600
    assert outbox.pending_bytes() == 600
    assert outbox.push(b"y" * 500)  # 1,100 bytes pending: over the soft limit
    assert outbox.over_limit_since is not None
    assert outbox.stalled_for(outbox.over_limit_since + 3) == pytest.approx(3)  # a float sum
    in_socket[0] = 0  # the client read it all
    assert outbox.stalled_for(1e12) == 0.0


def test_over_four_times_the_byte_limit_is_refused_even_in_one_frame() -> None:
    outbox = Outbox(1000, max_bytes=1000)
    assert outbox.push(b"a" * 3000)
    assert not outbox.push(b"b" * 1001)
    assert not Outbox(1000, max_bytes=1000).push(b"c" * 4001)


def test_the_hard_byte_limit_asks_the_socket_again_before_refusing() -> None:
    in_socket = [3500]
    outbox = Outbox(1000, max_bytes=1000)
    outbox.set_wake(lambda: None, lambda: in_socket[0])
    outbox.handed_on(3500)
    in_socket[0] = 0  # read meanwhile: the cached figure is stale
    assert outbox.push(b"z" * 1000)


def test_a_replaced_forming_bar_counts_its_new_size_only() -> None:
    outbox = Outbox(10, max_bytes=1000)
    outbox.push(b"a" * 100, ("k", 1))
    outbox.push(b"b" * 300, ("k", 1))
    assert outbox.nbytes == 300
    assert outbox.conflations == 1


def test_a_closed_outbox_drops_everything_and_forgets_its_writer() -> None:
    woken = []
    outbox = Outbox(10)
    outbox.set_wake(lambda: woken.append(1), lambda: 10**9)
    outbox.push(b"frame")
    outbox.close()
    assert len(outbox) == 0
    assert outbox.nbytes == 0
    assert outbox.pending_bytes() == 0
    assert outbox.push(b"late")  # not a reason to close anyone again
    assert len(outbox) == 0
    assert woken == [1]


async def test_replies_wait_for_room_one_at_a_time_and_a_wait_counts_as_a_stall() -> None:
    pending = [4000]
    released = asyncio.Event()
    limits = []

    async def until_below(limit: int) -> None:
        limits.append(limit)
        await released.wait()
        pending[0] = 0

    outbox = Outbox(10, max_bytes=1000)
    outbox.set_wake(lambda: None, lambda: pending[0], until_below)
    order = []

    async def reply(n: int) -> None:
        async with outbox.room():
            order.append(n)

    tasks = [asyncio.create_task(reply(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert order == []
    assert limits == [500]  # half the byte limit; the others wait their turn
    assert outbox.waiting_since is not None
    assert outbox.stalled_for(outbox.waiting_since + 7) >= 7
    released.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert outbox.waiting_since is None
