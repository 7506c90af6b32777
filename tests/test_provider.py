"""The Provider base class without a process: bookkeeping, seed messages, publish formats."""

from __future__ import annotations

import json
import time

import pytest

from backend.model.bars import flaw, to_bar
from backend.runtime.messages import BarUpdate, Event
from backend.runtime.provider import Provider
from backend.settings import load_settings


class Recorder(Provider):
    def init(self) -> None:
        self.calls: list[str] = []

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self.calls.append(f"first {symbol} {interval}")

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        self.calls.append(f"last {symbol} {interval}")

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        return 5.0


@pytest.fixture
def provider() -> tuple[Recorder, list[Event]]:
    events: list[Event] = []
    p = Recorder()
    p._attach("rec", load_settings(PROVIDERS="csv"), events.append)
    p.init()
    return p, events


def test_first_and_last_subscriber_hooks_run_once_per_key(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, _ = provider
    p._subscribe(1, "BTC", "1m")
    p._subscribe(2, "BTC", "1m")
    p._subscribe(2, "BTC", "1m")
    p._unsubscribe(1, "BTC", "1m")
    p._unsubscribe(2, "BTC", "1m")
    p._unsubscribe(2, "BTC", "1m")
    assert p.calls == ["first BTC 1m", "last BTC 1m"]
    assert p.streaming_keys() == []


def test_the_seed_write_message_becomes_a_bar_update(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, events = provider
    point = {
        "date": "2026-03-01 13:00:00",
        "rec-BTC-1h-open": 1,
        "rec-BTC-1h-high": "2.5",
        "rec-BTC-1h-low": 0.5,
        "rec-BTC-1h-close": 2,
        "rec-BTC-1h-volume": 10,
    }
    p.send_from(
        {
            "action": "write_message",
            "ws_clients": [1],
            "source": "rec",
            "name": "BTC",
            "interval": "1h",
            "args": [
                json.dumps(
                    {
                        "type": "data_update",
                        "source": "rec",
                        "name": "BTC",
                        "interval": "1h",
                        "data": point,
                    }
                )
            ],
        }
    )
    [event] = events
    assert isinstance(event, BarUpdate)
    assert event.bar == (1772370000, 1.0, 2.5, 0.5, 2.0, 10.0)


def test_publish_accepts_klines_tuples_and_datapoints(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, events = provider
    p.publish("BTC", "1m", [1772370000000, "1", "2", "0.5", "1.5", "3"])
    p.publish("BTC", "1m", (1772370060, 1.5, 2.0, 1.0, 1.8, None))
    p.publish("BTC", "1m", p.format_datapoint("BTC", "1m", [1772370120000, 1, 2, 0, 1, 5]))
    bars = [e.bar for e in events if isinstance(e, BarUpdate)]
    assert bars == [
        (1772370000, 1.0, 2.0, 0.5, 1.5, 3.0),
        (1772370060, 1.5, 2.0, 1.0, 1.8, None),
        (1772370120, 1.0, 2.0, 0.0, 1.0, 5.0),
    ]


def test_non_finite_values_become_none(provider: tuple[Recorder, list[Event]]) -> None:
    p, events = provider
    p.publish("BTC", "1m", [1772370000000, "nan", "inf", 1, 1, 1])
    [event] = events
    assert isinstance(event, BarUpdate)
    assert event.bar[1] is None and event.bar[2] is None


def test_a_key_without_updates_past_its_limit_is_stale_once(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, _ = provider
    p._subscribe(1, "BTC", "1m")
    now = time.monotonic()
    assert p._stale_keys(now + 1) == []
    assert p._stale_keys(now + 6) == [("BTC", "1m")]
    assert p._stale_keys(now + 7) == []


def test_an_unknown_action_is_ignored_with_a_log(
    provider: tuple[Recorder, list[Event]], caplog: pytest.LogCaptureFixture
) -> None:
    p, events = provider
    p.send_from({"action": "dance"})
    assert events == []
    assert "unknown action" in caplog.text


def test_a_bar_without_a_price_is_impossible_so_the_hub_drops_it() -> None:
    """A kline of garbage fields became a bar of nulls, which replaced the good forming bar
    history had given (data_init then showed nulls)."""
    garbage = to_bar([1772370000000, "a", "b", "c", "d", "e"])
    assert garbage == (1772370000, None, None, None, None, None)
    assert flaw(garbage) == "no price (open, high, low and close missing or not numbers)"
    assert flaw((1772370000, None, None, None, 1.5, None)) is None  # a close alone is a price


def test_a_bad_point_of_a_write_message_is_skipped_and_the_others_published(
    provider: tuple[Recorder, list[Event]], caplog: pytest.LogCaptureFixture
) -> None:
    p, events = provider
    good = p.format_datapoint("BTC", "1m", [1772370060000, 1, 2, 0.5, 1.5, 3])
    bad = {"date": "not a date", "rec-BTC-1m-close": 1.0}
    update = {"type": "data_update", "name": "BTC", "interval": "1m", "data": [bad, good]}
    p.send_from({"action": "write_message", "name": "BTC", "interval": "1m", "args": [update]})
    assert [e.bar for e in events if isinstance(e, BarUpdate)] == [
        (1772370060, 1.0, 2.0, 0.5, 1.5, 3.0)
    ]
    assert "not a date" in caplog.text


@pytest.mark.parametrize(
    "junk",
    [
        "hello",
        None,
        42,
        (1, 2, 3),  # a tuple crossed the pipe as a bar update and raised in the hub's loop
        ("BTC", "1m", "bar", False),
        (1772370000, 1.0, 2.0, 0.5, 1.5, 3.0),
        [1772370000000, 1, 2, 0.5, 1.5, 3],
        lambda: None,  # unpicklable: it killed the process's writer thread
        BarUpdate("BTC", "1m", "junk", False),  # type: ignore[arg-type]
    ],
)
def test_junk_sent_with_send_from_is_logged_and_never_reaches_the_hub(
    provider: tuple[Recorder, list[Event]], caplog: pytest.LogCaptureFixture, junk: object
) -> None:
    p, events = provider
    p.send_from(junk)  # type: ignore[arg-type]
    assert events == []
    assert "send_from()" in caplog.text


def test_a_typed_bar_update_sent_with_send_from_is_published(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, events = provider
    p.send_from(BarUpdate("BTC", "1m", (1772370000, 1.0, 2.0, 0.5, 1.5, 3.0), True))
    assert events == [BarUpdate("BTC", "1m", (1772370000, 1.0, 2.0, 0.5, 1.5, 3.0), True)]


@pytest.mark.parametrize("args", [["{not json"], "{not json", [b"\xff"], 7, [None]])
def test_a_write_message_whose_args_are_no_json_is_logged_and_skipped(
    provider: tuple[Recorder, list[Event]], caplog: pytest.LogCaptureFixture, args: object
) -> None:
    """It raised JSONDecodeError (or TypeError) in the provider's thread, which ended a
    stream thread that did not expect the seed's message to raise."""
    p, events = provider
    p.send_from({"action": "write_message", "name": "BTC", "interval": "1m", "args": args})
    assert events == []
    assert "write_message" in caplog.text


def test_a_write_message_whose_args_is_one_string_is_read_as_one_argument(
    provider: tuple[Recorder, list[Event]],
) -> None:
    p, events = provider
    point = p.format_datapoint("BTC", "1m", [1772370060000, 1, 2, 0.5, 1.5, 3])
    update = json.dumps({"type": "data_update", "name": "BTC", "interval": "1m", "data": point})
    p.send_from({"action": "write_message", "name": "BTC", "interval": "1m", "args": update})
    assert [e.bar for e in events if isinstance(e, BarUpdate)] == [
        (1772370060, 1.0, 2.0, 0.5, 1.5, 3.0)
    ]


class OwnInit(Provider):
    """A provider that sets itself up in ``__init__`` and forgets ``super().__init__()``."""

    def __init__(self) -> None:  # no super().__init__(): as plain classes are written
        self.seen: list[str] = []

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self.seen.append(f"first {symbol} {interval}")


def test_a_subclass_init_without_super_still_gets_the_bookkeeping() -> None:
    """Its process died with AttributeError ``_bookkeeping`` a second after it was ready (the
    staleness check), and again after every restart."""
    events: list[Event] = []
    p = OwnInit()
    p._attach("own", load_settings(PROVIDERS="csv"), events.append)
    assert p._stale_keys(time.monotonic()) == []
    p._subscribe(1, "BTC", "1m")
    assert p.seen == ["first BTC 1m"] and p.streaming_keys() == [("BTC", "1m")]
    p.publish("BTC", "1m", (1772370000, 1.0, 2.0, 0.5, 1.5, 3.0))
    assert len(events) == 1
