"""The hub's live indicator path (sans sockets): the frames equal the encoder's, each
client's indicator frames ride in the entry of its data_update of the same bar, and closed
bars that change other than by appending open the running computations again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.history.cache import BarCache
from backend.hub.clients import Client, Replies
from backend.hub.fanout import Fanout
from backend.hub.indicating import Indicating
from backend.hub.indicator_frames import GroupFrames
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.indicators import messages
from backend.indicators.engine import Binding, bind, compute
from backend.indicators.live import IndicatorUpdate, LiveIndicators
from backend.indicators.registry import Indicators, build_indicators
from backend.model.bars import Bar, SeriesId
from backend.runtime.clocks import Clocks
from backend.wire import protocol
from backend.wire.frames import payloads_of, text_frame
from backend.wire.outbox import Outbox
from tests.test_indicators_engine import make_bars

KEY = SeriesId("csv", "BTCUSDT", "1h")
_INDICATORS = build_indicators()  # for the property tests (a fixture is per test, not example)


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
        self.indicating.attach(self.fanout)
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
    frame = hub.indicating.encoded.frame(update, {})
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
    bars, hub, client = streaming(indicators)
    bars[-1] = forming(bars, 120.0)  # its last update and the next bar's first, one batch
    bars.append(next_bar(bars))
    hub.send(bars[-2], bars[-1])
    assert len(client.outbox) == 2
    assert_closed_then_newest(client, bars)


def streaming(indicators: Indicators) -> tuple[list[Bar], Hub, Client]:
    """300 bars, and a client that got the update of the newest and holds EMA(5) on it."""
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    client = hub.client(1)
    hub.send(bars[-1])
    client.outbox.drain()
    return bars, hub, client


def next_bar(bars: list[Bar]) -> Bar:
    return (bars[-1][0] + 3600, 120.0, 121.0, 119.0, 120.5, 1.0)


def assert_closed_then_newest(client: Client, bars: list[Bar]) -> None:
    """The client got the data_update and the indicator_update of the bar before the newest
    (its final row), then those of the newest."""
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


def _expected(hub: Hub, chart_id: str, bound: Any, bars: list[Bar]) -> dict[str, Any]:
    """The ``indicator_update`` of ``chart_id`` over ``bars`` (the batch computation over its
    tail, the values of the running computation bit for bit)."""
    computed = compute(bound, {KEY: bars[-bound.tail_size() :]})
    row: dict[str, object] = {"date": protocol.intervals.format_date(bars[-1][0])}
    for output, values in zip(bound.indicator.outputs, computed.values, strict=True):
        row[f"{chart_id}-{output.name}"] = float(values[-1])
    dates = {"csv-BTCUSDT-1h": protocol.intervals.format_date(bars[-1][0])}
    return messages.indicator_update(chart_id, row, dates)


def test_clients_with_different_chart_ids_and_inputs_on_one_key_get_their_own_frames(
    indicators: Indicators, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    slow = bind(
        indicators, "talib.overlap.EMA", {"timeperiod": 9}, [Binding("close", KEY, "close")]
    )
    macd = bind(indicators, "talib.momentum.MACD", {}, [Binding("close", KEY, "close")])
    first, second, third = hub.client(1), hub.client(2), hub.client(3)  # each holds "ema"
    live = hub.indicating.live
    live.subscribe(1, "macd", macd)  # 1: ema + macd
    live.subscribe(2, "slow", slow)  # 2: ema + slow (other inputs, other chart id)
    live.subscribe(3, "macd", macd)  # 3: like 1, and one more
    live.subscribe(3, 'we"ird%b', slow)  # ... and a chart id to escape
    hub.send(bars[-1])
    for client in (first, second, third):
        client.outbox.drain()
    bars[-1] = forming(bars, 131.0)
    monkeypatch.setattr(hub.indicating, "_push", None)  # every group's frames made in one go
    hub.send(bars[-1])
    wanted = {
        1: [("ema", hub.bound), ("macd", macd)],
        2: [("ema", hub.bound), ("slow", slow)],
        3: [("ema", hub.bound), ("macd", macd), ('we"ird%b', slow)],
    }
    for client in (first, second, third):
        (entry,) = client.outbox.drain()  # data_update and the indicator frames: one entry
        payloads = payloads_of(entry)
        assert orjson.loads(payloads[0])["type"] == "data_update"
        got = sorted((orjson.loads(p) for p in payloads[1:]), key=lambda m: m["id"])
        expected = sorted(
            (_expected(hub, chart_id, bound, bars) for chart_id, bound in wanted[client.id]),
            key=lambda m: m["id"],
        )
        assert got == expected
        for payload in payloads[1:]:  # the encoder's bytes, byte for byte
            assert text_frame(payload) == text_frame(protocol.encode(orjson.loads(payload)))
    assert hub.indicating.delivered == 2 * (2 + 2 + 3)


def test_a_client_that_stops_holding_an_indicator_gets_no_more_of_its_frames(
    indicators: Indicators,
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    staying, leaving, closing = hub.client(1), hub.client(2), hub.client(3)
    hub.send(bars[-1])
    for client in (staying, leaving, closing):
        assert [m["type"] for m in messages_of(client)] == ["data_update", "indicator_update"]
    hub.indicating.drop_series(2, KEY)  # it unsubscribed the key's indicators
    del hub.clients[3]  # its socket closed; the hub drops its indicators after
    bars[-1] = forming(bars, 77.0)
    hub.send(bars[-1])
    assert [m["type"] for m in messages_of(staying)] == ["data_update", "indicator_update"]
    assert [m["type"] for m in messages_of(leaving)] == ["data_update"]
    assert [m["type"] for m in messages_of(closing)] == ["data_update"]  # from the fan-out
    hub.indicating.drop_client(3)
    bars[-1] = forming(bars, 78.0)
    hub.send(bars[-1])
    assert [m["type"] for m in messages_of(leaving)] == ["data_update"]
    update = messages_of(staying)[-1]
    assert update["data"]["ema-EMA"] == _expected(hub, "ema", hub.bound, bars)["data"]["ema-EMA"]


def test_the_data_update_and_the_indicator_frames_of_the_same_clients_go_as_one_entry(
    indicators: Indicators,
) -> None:
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    clients = [hub.client(1), hub.client(2)]  # the key's data clients hold the same chart ids
    hub.send(bars[-1])
    entries = [client.outbox.drain() for client in clients]
    assert len(entries[0]) == 1 and entries[1][0] is entries[0][0]  # one object for both
    bars[-1] = forming(bars, 140.0)
    hub.send(bars[-1])
    bars[-1] = forming(bars, 141.0)  # the next batch, before the writers ran
    hub.send(bars[-1])
    (entry,) = clients[0].outbox.drain()  # replaced in place: only the newest of the bar
    data, update = (orjson.loads(p) for p in payloads_of(entry))
    assert data["type"] == "data_update" and data["data"]["csv-BTCUSDT-1h-close"] == 141.0
    assert update["data"]["ema-EMA"] == _expected(hub, "ema", hub.bound, bars)["data"]["ema-EMA"]
    assert hub.indicating.delivered == 2 * 3


GROUP_CASES = [
    ("talib.overlap.EMA", {"timeperiod": 5}),  # one output
    ("talib.momentum.MACD", {}),  # three
    ("talib.overlap.BBANDS", {"timeperiod": 20}),
]
VALUE = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e16, 2.5e-7, 1.0, 123456789.125]),
)


@settings(max_examples=200, deadline=None)
@given(
    chart_ids=st.lists(
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
        min_size=3,
        max_size=3,
        unique=True,
    ),
    values=st.lists(VALUE, min_size=7, max_size=7),
    time=st.integers(0, 2_000_000_000),
    last_dates=st.dictionaries(st.text(max_size=8), st.text(max_size=24), max_size=3),
    pad=st.sampled_from([0, 100, 65_500]),
)
def test_the_frames_of_a_group_are_the_encoders_frames_byte_for_byte(
    chart_ids: list[str],
    values: list[float | None],
    time: int,
    last_dates: dict[str, str],
    pad: int,
) -> None:
    """:meth:`GroupFrames.frames`: each chart id's frame, back to back, byte for byte
    ``text_frame(protocol.encode(messages.indicator_update(...)))`` (``None`` only when
    one's length does not take 16 bits), and ``None`` for rows of different bars, a
    computation with no row or two, or a row of the wrong length."""
    live = LiveIndicators()
    for chart_id, (indicator_id, inputs) in zip(chart_ids, GROUP_CASES, strict=True):
        bound = bind(_INDICATORS, indicator_id, inputs, [Binding("close", KEY, "close")])
        live.subscribe(1, chart_id, bound)
    (group,) = live.compute(KEY, lambda series, n: [])  # no bars: no rows
    encoder = GroupFrames(group)
    if pad:
        last_dates["x" * pad] = ""  # a frame of 16-bit length, or one too long for it
    dates = orjson.dumps(last_dates)
    rows = iter([values[:1], values[1:4], values[4:7]])
    for shared, _, _ in group:
        shared.rows = [(time, next(rows))]
    made = encoder.frames(lambda t: orjson.dumps(protocol.intervals.format_date(t)), dates)
    expected = []
    for shared, chart_id, chart in group:
        date = protocol.intervals.format_date(time)
        row = dict(zip(chart.names, (date, *shared.rows[0][1]), strict=True))
        message = messages.indicator_update(chart_id, row, last_dates)
        expected.append(text_frame(protocol.encode(message)))
    if all(len(frame) < 4 + (1 << 16) and frame[1] == 0x7E for frame in expected):
        assert made == (time, b"".join(expected))
    else:
        assert made is None
    first = group[0][0]
    for rows_now in ([], [(time, values[:1])] * 2, [(time + 60, values[:1])], [(time, [])]):
        first.rows = rows_now
        assert encoder.frames(lambda t: b'"d"', dates) is None


def test_a_change_of_the_data_clients_alone_is_seen_by_the_joined_entries(
    indicators: Indicators,
) -> None:
    """The check that a group's holders are the key's data_update clients is kept between
    batches only while neither changes: a client that stops (or starts again) getting the
    data_updates, holding the same chart ids, gets the indicator frames alone (or joined)."""
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    first, second = hub.client(1), hub.client(2)
    for close, data in ((140.0, True), (141.0, False), (142.0, True)):
        if data:
            hub.fanout.start_delivery(second, KEY)
        else:
            hub.fanout.stop_delivery(second.id, KEY)
        bars[-1] = forming(bars, close)
        hub.send(bars[-1])
        assert [m["type"] for m in messages_of(first)] == ["data_update", "indicator_update"]
        expected = ["data_update", "indicator_update"] if data else ["indicator_update"]
        assert [m["type"] for m in messages_of(second)] == expected


def test_a_key_updated_in_several_slices_of_one_wakeup_is_computed_and_pushed_once(
    indicators: Indicators,
) -> None:
    """Between ``begin_wakeup`` and ``end_wakeup`` (one loop callback of a provider's pipe
    reader, where nothing is written to a socket) the indicators of a key are computed once,
    from its newest bar, and each client gets one entry: the work for the states replaced
    before the flush was spent for nothing (at a hub's saturation it made it fall behind
    faster)."""
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    client = hub.client(1)
    before = hub.indicating.computed
    hub.fanout.begin_wakeup()
    for close in (150.0, 151.0, 152.0):  # three slices
        bars[-1] = forming(bars, close)
        hub.send(bars[-1])
        assert len(client.outbox) == 0  # held to the end of the wakeup
    hub.fanout.end_wakeup()
    assert hub.indicating.computed - before == 1
    data, update = messages_of(client)
    assert data["type"] == "data_update" and data["data"]["csv-BTCUSDT-1h-close"] == 152.0
    ema = compute(hub.bound, {KEY: bars[-hub.bound.tail_size() :]}).values[0][-1]
    assert update["type"] == "indicator_update" and update["data"]["ema-EMA"] == ema
    # outside a wakeup (a refill's replay, the bus), each call settles at once
    bars[-1] = forming(bars, 153.0)
    hub.send(bars[-1])
    assert [m["type"] for m in messages_of(client)] == ["data_update", "indicator_update"]


def test_a_bar_that_closed_between_two_slices_of_a_wakeup_still_gets_its_final_row(
    indicators: Indicators,
) -> None:
    bars, hub, client = streaming(indicators)
    hub.fanout.begin_wakeup()
    bars[-1] = forming(bars, 120.0)
    hub.send(bars[-1])  # the bar's last state, in one slice
    bars.append(next_bar(bars))
    hub.send(bars[-1])  # the next bar's first, in the next
    hub.fanout.end_wakeup()
    assert_closed_then_newest(client, bars)


def test_a_wakeup_settles_early_once_it_holds_settle_keys_keys(
    indicators: Indicators, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work left for the end of a wakeup is bounded (``SETTLE_KEYS``)."""
    monkeypatch.setattr("backend.hub.fanout.SETTLE_KEYS", 1)
    bars = py_bars(300)
    hub = Hub(indicators, bars)
    client = hub.client(1)
    hub.fanout.begin_wakeup()
    bars[-1] = forming(bars, 150.0)
    hub.send(bars[-1])
    assert [m["type"] for m in messages_of(client)] == ["data_update", "indicator_update"]
    hub.fanout.end_wakeup()
    assert messages_of(client) == []
