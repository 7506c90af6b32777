"""A client's outbox: conflation of forming bars, bounded growth, never a silent drop."""

from __future__ import annotations

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
