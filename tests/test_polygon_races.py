"""Live Polygon bars against a REST that races the stream: a subscription landing mid-minute
and a stream dropped mid-minute still publish, for every closed minute, exactly the bar the
fake's REST aggregates say (the provider driven directly, the fake's clock at 10x)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from backend.model.bars import Bar
from tests.fakes.polygon import FakePolygon
from tests.harness import seconds
from tests.polygon_direct import Direct, rest_bars, wait_until

#: 12 s into a minute; the clock runs at FIDELITY_SPEED, so a minute lasts 3 s of real time.
MID_MINUTE = datetime(2026, 3, 10, 15, 58, 12, tzinfo=UTC)
FIDELITY_SPEED = 20
FAULTS = {
    "REST trails the stream by 4 s": lambda fake: fake.lag_rest(4),
    "REST answers 0.3 s late": lambda fake: fake.delay_rest(0.3),
}


def wait_for_second(fake: FakePolygon, second: int) -> int:
    """Wait until the fake clock reaches ``second`` of a minute; the minute's open time."""
    wait_until(lambda: fake.now_ms() // 1000 % 60 >= second, f"second {second} of the minute")
    now = fake.now_ms() // 1000
    return now - now % 60


def assert_closed_minutes_equal_rest(direct: Direct, symbol: str, first: int, last: int) -> None:
    """The last 1m bar published for each minute ``first..last`` is REST's bar, exactly."""
    fake = direct.fake
    expected = rest_bars(fake, symbol, "1m", first, last)

    def published() -> list[Bar]:
        return [bar for t, bar in sorted(direct.published(symbol, "1m").items()) if t <= last]

    with_timeout = 5.0  # corrections that are still in flight land within this
    deadline = time.monotonic() + seconds(with_timeout)
    while published()[-len(expected) :] != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    got = published()
    assert [b[0] for b in expected] == list(range(first, last + 1, 60)), "REST has every minute"
    assert got[-len(expected) :] == expected, symbol


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_subscription_landing_mid_minute_forms_the_rest_bar_exactly(fault: str) -> None:
    with FakePolygon(now=MID_MINUTE, speed=FIDELITY_SPEED, always_open=True) as fake:
        FAULTS[fault](fake)
        direct = Direct(fake, markets="stocks,crypto")
        try:
            subscribed: dict[str, int] = {}
            for symbol, second in (("AAPL", 20), ("MSFT", 35), ("X:BTCUSD", 50)):
                subscribed[symbol] = wait_for_second(fake, second)
                direct.subscribe(symbol, "1m")
            last = max(subscribed.values()) + 60  # the minute after the last subscription's
            wait_until(lambda: fake.now_ms() >= (last + 65) * 1000, "two more minutes", 60)
            fake.freeze(True)
            for symbol, minute in subscribed.items():
                assert_closed_minutes_equal_rest(direct, symbol, minute, last)
        finally:
            direct.close()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_bar_spanning_a_stream_drop_mid_minute_is_the_rest_bar(fault: str) -> None:
    with FakePolygon(now=MID_MINUTE, speed=FIDELITY_SPEED, always_open=True) as fake:
        FAULTS[fault](fake)
        direct = Direct(fake, markets="stocks,crypto")
        try:
            symbols = ("AAPL", "MSFT", "X:ETHUSD", "X:BTCUSD")
            for symbol in symbols:
                direct.subscribe(symbol, "1m")
            wait_until(lambda: len(fake.connections()) == 2, "both clusters connected")
            first = wait_for_second(fake, 59) + 60  # the first whole minute streamed
            opened = dict(fake.connections_opened)
            wait_until(lambda: fake.now_ms() >= (first + 30) * 1000, "mid-way into the minute")
            fake.drop_connections()
            wait_until(
                lambda: all(fake.connections_opened[m] > opened[m] for m in opened), "reconnects"
            )
            last = first + 60
            wait_until(lambda: fake.now_ms() >= (last + 65) * 1000, "the next minute", 60)
            fake.freeze(True)
            for symbol in symbols:
                assert_closed_minutes_equal_rest(direct, symbol, first, last)
        finally:
            direct.close()
