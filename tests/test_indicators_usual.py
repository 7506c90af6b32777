"""The hub's usual indicator update (:meth:`GroupFrames.usual`: each computation peeked at
the forming bar and the frames formatted in one pass) against the general one (rows from
:meth:`LiveIndicators.compute`, then :meth:`GroupFrames.frames` or one message at a time):
two hubs fed the same bars and subscriptions, one with the usual path turned off, queue the
same bytes to every client, entry for entry, whatever happens between two updates."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.hub.clients import Client, Replies
from backend.indicators.engine import Binding, bind
from backend.model.bars import Bar
from backend.wire.frames import payloads_of
from backend.wire.outbox import Outbox
from tests.test_indicators_hub import _INDICATORS, KEY, Hub, _gone, forming, py_bars

CLOSE = [Binding("close", KEY, "close")]
OHLC = [Binding(column, KEY, column) for column in ("open", "high", "low", "close")]
CHARTS = {  # chart id -> (indicator, inputs, columns)
    "ema": ("talib.overlap.EMA", {"timeperiod": 5}, CLOSE),
    "macd": ("talib.momentum.MACD", {}, CLOSE),
    "bb": ("talib.overlap.BBANDS", {"timeperiod": 20}, CLOSE),
    "rsi": ("talib.momentum.RSI", {"timeperiod": 14}, CLOSE),
    "doji": ("talib.pattern.CDLDOJI", {}, OHLC),  # an integer output: never the usual path
    "sma": ("talib.overlap.SMA", {"timeperiod": 10}, CLOSE),  # over a tail: never either
}
CLIENTS = (1, 2, 3)
STEADY = ("ema", "macd", "bb", "rsi")  # what the benchmark's clients hold


class Twin:
    """A hub and the same hub with the usual path turned off, driven alike."""

    def __init__(self, bars: list[Bar]) -> None:
        self.bars = bars
        self.hubs = (Hub(_INDICATORS, list(bars)), Hub(_INDICATORS, list(bars)))
        self.usual = 0  # usual updates made by the first
        fast, general = (hub.indicating for hub in self.hubs)
        made = fast._usual

        def counted(*args: Any) -> bool:
            done = made(*args)
            self.usual += done
            return done

        fast._usual = counted  # type: ignore[method-assign]
        general._usual = lambda *args: False  # type: ignore[method-assign]
        self.bound = {
            chart_id: bind(_INDICATORS, indicator_id, inputs, columns)
            for chart_id, (indicator_id, inputs, columns) in CHARTS.items()
        }
        for hub in self.hubs:
            for client_id in CLIENTS:
                client = Client(client_id, "test", Outbox(10_000), _gone, Replies(1, "test"))
                hub.clients[client_id] = client

    def hold(self, client_id: int, chart_id: str) -> None:
        for hub in self.hubs:
            hub.indicating.live.subscribe(client_id, chart_id, self.bound[chart_id])

    def drop(self, client_id: int, chart_id: str) -> None:
        for hub in self.hubs:
            hub.indicating.live.unsubscribe(client_id, chart_id)

    def data(self, client_id: int, on: bool) -> None:
        for hub in self.hubs:
            if on:
                hub.fanout.start_delivery(hub.clients[client_id], KEY)
            else:
                hub.fanout.stop_delivery(client_id, KEY)

    def send(self, *bars: Bar) -> None:
        for hub in self.hubs:
            hub.send(*bars)

    def correct(self, back: int, delta: float) -> None:
        """A provider's correction of an older closed bar, in the cache alone."""
        t, o, h, low, c, v = self.bars[-back]
        close = c + delta
        self.bars[-back] = (t, o, max(h, close), min(low, close), close, v)
        for hub in self.hubs:
            hub.cache.get(KEY).upsert(self.bars[-back])

    def entries(self) -> tuple[dict[int, list[bytes]], dict[int, list[bytes]]]:
        fast, general = (
            {client_id: list(hub.clients[client_id].outbox.drain()) for client_id in CLIENTS}
            for hub in self.hubs
        )
        return fast, general


CLOSES = st.one_of(
    st.floats(50.0, 200.0, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), 0.0, 1e12]),
)
STEPS = st.one_of(
    st.tuples(st.just("tick"), CLOSES),
    st.tuples(st.just("bar"), CLOSES),
    st.tuples(st.just("both"), CLOSES),  # the bar's last update and the next bar's first
    st.tuples(st.just("correct"), st.integers(2, 30), st.floats(-5.0, 5.0)),
    st.tuples(st.just("hold"), st.sampled_from(CLIENTS), st.sampled_from(sorted(CHARTS))),
    st.tuples(st.just("drop"), st.sampled_from(CLIENTS), st.sampled_from(sorted(CHARTS))),
    st.tuples(st.just("data"), st.sampled_from(CLIENTS), st.booleans()),
)


def step(twin: Twin, action: tuple[Any, ...]) -> None:
    bars = twin.bars
    match action:
        case ("tick", close):
            bars[-1] = forming(bars, close)
            twin.send(bars[-1])
        case ("bar", close):
            bars.append((bars[-1][0] + 3600, close, close, close, close, 1.0))
            twin.send(bars[-1])
        case ("both", close):
            bars[-1] = forming(bars, close)
            bars.append((bars[-1][0] + 3600, close, close, close, close, 1.0))
            twin.send(bars[-2], bars[-1])
        case ("correct", back, delta):
            twin.correct(back, delta)
        case ("hold", client_id, chart_id):
            twin.hold(client_id, chart_id)
        case ("drop", client_id, chart_id):
            twin.drop(client_id, chart_id)
        case ("data", client_id, on):
            twin.data(client_id, on)


def steady_twin() -> Twin:
    """Every client streams the key and holds the benchmark's four indicators."""
    twin = Twin(py_bars(300))
    for client_id in CLIENTS:
        twin.data(client_id, True)
        for chart_id in STEADY:
            twin.hold(client_id, chart_id)
    return twin


@settings(max_examples=150, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=40))
def test_the_usual_path_queues_the_bytes_of_the_general_one(actions: list[Any]) -> None:
    twin = steady_twin()
    for action in actions:
        step(twin, action)
        fast, general = twin.entries()
        assert fast == general, action


def test_the_usual_path_is_the_one_taken_while_only_the_forming_bar_changes() -> None:
    twin = steady_twin()
    twin.send(twin.bars[-1])  # the first update plans and opens: the general path,
    step(twin, ("tick", 100.0))  # and the next, which checks the bar fed is the cache's
    fast, general = twin.entries()
    assert fast == general and twin.usual == 0
    for close in (101.0, 102.5, 99.25):
        step(twin, ("tick", close))
        fast, general = twin.entries()
        assert fast == general and all(len(fast[c]) == 1 for c in CLIENTS)
    assert twin.usual == 3
    step(twin, ("bar", 100.0))  # a bar closed: the running computations feed it
    step(twin, ("tick", 100.5))  # and then the usual path again
    fast, general = twin.entries()
    assert fast == general and twin.usual == 4
    for client_id in CLIENTS:  # an integer output in the group: the general path
        step(twin, ("hold", client_id, "doji"))
    for close in (100.75, 101.0):
        step(twin, ("tick", close))
    fast, general = twin.entries()
    assert fast == general and twin.usual == 4
    for client_id in CLIENTS:  # the newest update of the bar replaced the one before
        (entry,) = fast[client_id]
        assert len(payloads_of(entry)) == 1 + len(STEADY) + 1  # data_update, then each chart
