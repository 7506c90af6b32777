"""The hub's live indicator path (sans sockets): the frames equal the encoder's, each
client's indicator frames ride in the entry of its data_update of the same bar, and closed
bars that change other than by appending open the running computations again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from backend.history.cache import BarCache
from backend.hub.clients import Client, Replies
from backend.hub.fanout import Fanout
from backend.hub.indicating import Indicating
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.indicators import messages
from backend.indicators.engine import Binding, bind, compute
from backend.indicators.live import IndicatorUpdate
from backend.indicators.registry import Indicators, build_indicators
from backend.model.bars import Bar, SeriesId
from backend.runtime.clocks import Clocks
from backend.wire import protocol
from backend.wire.frames import payloads_of, text_frame
from backend.wire.outbox import Outbox
from tests.test_indicators_engine import make_bars

KEY = SeriesId("csv", "BTCUSDT", "1h")


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


class Hub:
    """The parts of a hub the fan-out and the indicators use, with clients on ``KEY``."""

    def __init__(self, indicators: Indicators, bars: list[Bar]) -> None:
        self.cache = BarCache()
        self.clients: dict[int, Client] = {}
        hub: Any = SimpleNamespace(
            cache=self.cache,
            clients=self.clients,
            settings=SimpleNamespace(INDICATOR_UPDATE_SECONDS=0.0),
            metrics=Metrics(),
        )
        self.fanout = Fanout(
            self.cache, Subscriptions(), Listeners(), Clocks(), hub.metrics, None, _kick
        )
        self.indicating = Indicating(hub, indicators, _kick)
        self.fanout.watches = self.indicating.live.watches
        self.fanout.after_updates = self.indicating.on_updates
        self.cache.get(KEY).merge(bars)
        self.fanout.wire_keys(KEY, {})
        self.bound = bind(
            indicators, "talib.overlap.EMA", {"timeperiod": 5}, [Binding("close", KEY, "close")]
        )

    def client(self, client_id: int, data: bool = True) -> Client:
        client = Client(client_id, "test", Outbox(100), _gone, Replies(1, "test"))
        self.clients[client_id] = client
        if data:
            self.fanout.start_delivery(client, KEY)
        self.indicating.live.subscribe(client_id, "ema", self.bound)
        return client

    def send(self, *bars: Bar) -> None:
        self.fanout.on_provider_events(
            KEY.source, [(KEY.name, KEY.interval, bar, False) for bar in bars]
        )


def _kick(client: Client, reason: str) -> None:
    raise AssertionError(f"client {client.id} kicked: {reason}")


def _gone(code: int, reason: str) -> None:
    pass


def py_bars(n: int) -> list[Bar]:
    """:func:`make_bars` as the providers send them: Python numbers."""
    return [(int(b[0]), *(float(x) for x in b[1:])) for b in make_bars(n)]  # type: ignore[misc]


def messages_of(client: Client) -> list[dict[str, Any]]:
    return [orjson.loads(p) for entry in client.outbox.drain() for p in payloads_of(entry)]


def forming(bars: list[Bar], close: float) -> Bar:
    t, o, h, low, _, v = bars[-1]
    return (t, o, max(h, close), min(low, close), close, v + 1)


@pytest.mark.parametrize(
    ("chart_id", "values"),
    [("ema", (1.5,)), ('we"ird%b\\', (None, 1e16, -0.0)), ("x%%", (2.5e-7, 3.0, float(7)))],
)
def test_an_update_frame_is_the_encoders_frame_byte_for_byte(
    indicators: Indicators, chart_id: str, values: tuple[object, ...]
) -> None:
    hub = Hub(indicators, py_bars(50))
    names = ("date", *(f"{chart_id}-{i}" for i in range(len(values))))
    update = IndicatorUpdate(
        chart_id, names, ("2023-11-14 22:00:00", *values), frozenset(), (KEY,), 1
    )
    frame = hub.indicating._frame(update, {})
    dates = {"csv-BTCUSDT-1h": protocol.intervals.format_date(py_bars(50)[-1][0])}
    expected = protocol.encode(messages.indicator_update(chart_id, update.row, dates))
    assert frame == text_frame(expected)


def test_indicator_frames_follow_the_data_update_in_its_entry_or_come_alone(
    indicators: Indicators,
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    streaming, waiting = hub.client(1), hub.client(2, data=False)  # 2: no data_init yet
    other = hub.client(3)
    bars[-1] = forming(bars, 150.0)
    hub.send(bars[-1])
    assert len(streaming.outbox) == 1 and len(waiting.outbox) == 1  # one entry each
    (entry,) = streaming.outbox.drain()
    assert other.outbox.drain()[0] is entry  # the holders share one joined copy
    data, update = (orjson.loads(p) for p in payloads_of(entry))
    assert data["type"] == "data_update" and update["type"] == "indicator_update"
    ema = compute(hub.bound, {KEY: bars[-hub.bound.tail_size() :]}).values[0][-1]
    assert update["data"]["ema-EMA"] == ema
    assert [m["type"] for m in messages_of(waiting)] == ["indicator_update"]


def test_a_bar_that_closed_in_the_batch_gets_its_row_in_its_own_entry(
    indicators: Indicators,
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    client = hub.client(1)
    hub.send(bars[-1])
    client.outbox.drain()
    bars[-1] = forming(bars, 120.0)  # its last update and the next bar's first, one batch
    bars.append((bars[-1][0] + 3600, 120.0, 121.0, 119.0, 120.5, 1.0))
    hub.send(bars[-2], bars[-1])
    assert len(client.outbox) == 2
    got = [(m["type"], m["data"]["date"]) for m in messages_of(client)]
    closed, newest = (protocol.intervals.format_date(b[0]) for b in bars[-2:])
    assert got == [
        ("data_update", closed),
        ("indicator_update", closed),
        ("data_update", newest),
        ("indicator_update", newest),
    ]


def test_a_closed_bar_changed_in_the_cache_opens_the_running_computation_again(
    indicators: Indicators,
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    client = hub.client(1)
    hub.send(bars[-1])
    client.outbox.drain()
    corrected = (*bars[-10][:4], bars[-10][4] + 5.0, bars[-10][5])
    bars[-10] = corrected
    hub.cache.get(KEY).upsert(corrected)  # a provider's correction of an older bar
    bars[-1] = forming(bars, 99.0)
    hub.send(bars[-1])
    update = messages_of(client)[-1]
    ema = compute(hub.bound, {KEY: bars[-hub.bound.tail_size() :]}).values[0][-1]
    assert update["data"]["ema-EMA"] == ema
