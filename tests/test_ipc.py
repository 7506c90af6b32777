"""The provider pipe's batches: bar updates as plain tuples, conflation when the hub is behind."""

from __future__ import annotations

from backend.runtime.messages import (
    BarUpdate,
    Clock,
    Heartbeat,
    Status,
    conflate,
    decode_batch,
    encode_batch,
)


def bar(t: int, close: float) -> tuple[int, float, float, float, float, float]:
    return (t, 1.0, 2.0, 0.5, close, 10.0)


def test_a_batch_crosses_the_pipe_with_bar_updates_as_plain_tuples() -> None:
    events = [BarUpdate("BTC", "1m", bar(60, 1.5)), Heartbeat(0), Status("connected")]
    decoded = decode_batch(encode_batch(events))
    assert decoded[0] == ("BTC", "1m", bar(60, 1.5), False)
    assert type(decoded[0]) is tuple
    assert decoded[1:] == events[1:]


def test_conflation_keeps_the_newest_state_of_each_bar_in_the_place_of_its_first() -> None:
    clock = Clock(None, 0.0, 0.0, 1.0)
    events = [
        BarUpdate("BTC", "1m", bar(60, 1.0)),
        BarUpdate("ETH", "1m", bar(60, 5.0)),
        clock,
        BarUpdate("BTC", "1m", bar(60, 1.1)),  # same bar: replaces the first state
        BarUpdate("BTC", "1m", bar(120, 1.2)),  # next bar: after the previous one
        BarUpdate("BTC", "5m", bar(0, 9.0)),  # other interval: its own key
        BarUpdate("BTC", "1m", bar(60, 1.15)),  # a late correction of the closed bar
        Status("connected"),
    ]
    assert conflate(events) == [
        BarUpdate("BTC", "1m", bar(60, 1.15)),
        BarUpdate("ETH", "1m", bar(60, 5.0)),
        clock,
        BarUpdate("BTC", "1m", bar(120, 1.2)),
        BarUpdate("BTC", "5m", bar(0, 9.0)),
        Status("connected"),
    ]
