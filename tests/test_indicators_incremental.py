"""Live values from running computations (TA-Lib's streaming handles): bit for bit the batch
values over the bars since the handle opened, through forming-bar ticks and bars that close,
opened again when closed bars change, and the batch way where a handle cannot answer."""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.indicators.base import Memory
from backend.indicators.engine import Binding, LiveComputation, bind, compute
from backend.indicators.incremental import RECENT, peek_all
from backend.indicators.live import LiveIndicators
from backend.indicators.registry import Indicators, build_indicators
from backend.model.bars import FIELDS, Bar, SeriesId
from tests.test_indicators_engine import make_bars

BTC = SeriesId("csv", "BTCUSDT", "1h")
CASES = [
    ("talib.overlap.EMA", {"timeperiod": 20}),
    ("talib.momentum.RSI", {"timeperiod": 14}),
    ("talib.momentum.MACD", {}),
    ("talib.overlap.BBANDS", {"timeperiod": 20}),
    ("talib.volatility.ATR", {}),
    ("talib.overlap.SAR", {}),  # path-dependent: opened on every bar
    ("talib.pattern.CDLENGULFING", {}),  # integer outputs
    # reported by users as different from the batch values in the old talib.stream
    # (TA-Lib/ta-lib-python#441, #503): CMO smooths like RSI, HT_PHASOR carries the Hilbert
    # transform's state (opened on every bar, as KAMA)
    ("talib.momentum.CMO", {"timeperiod": 14}),
    ("talib.cycle.HT_PHASOR", {}),
    ("talib.overlap.KAMA", {"timeperiod": 10}),
]


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


class Fetch:
    """The cache's bars, recording the sizes asked for."""

    def __init__(self, bars: list[Bar]) -> None:
        self.bars = bars
        self.asked: list[int | None] = []

    def __call__(self, series: SeriesId, n: int | None) -> Sequence[Bar]:
        self.asked.append(n)
        return self.bars if n is None else self.bars[-n:]


def bound_of(indicators: Indicators, indicator_id: str, inputs: dict[str, object]) -> object:
    columns = indicators.get(indicator_id).columns
    bindings = [Binding(c, BTC, c if c in FIELDS else "close") for c in columns]
    return bind(indicators, indicator_id, inputs, bindings)


def batch_newest(bound: object, bars: list[Bar]) -> list[float | None]:
    values = compute(bound, {BTC: bars}).values  # type: ignore[arg-type]
    return [float(v[-1]) if np.isfinite(v[-1]) else None for v in values]


def tick(bars: list[Bar], step: int) -> None:
    """The forming bar changes (two steps in three) or a new bar opens."""
    t, o, h, low, c, v = bars[-1]
    if step % 3 == 2:
        bars.append((t + 3600, c, c + 1, c - 1, c + 0.1 * step, 1.0))
    else:
        bars[-1] = (t, o, h + 0.5, low - 0.1, c + 0.25 * (step % 5 - 2), v + 1)


@pytest.mark.parametrize(("indicator_id", "inputs"), CASES)
def test_live_values_are_the_batch_values_over_the_bars_since_opening_bit_for_bit(
    indicators: Indicators, indicator_id: str, inputs: dict[str, object]
) -> None:
    bound = bound_of(indicators, indicator_id, inputs)
    live = LiveComputation(bound)  # type: ignore[arg-type]
    assert live.running == BTC
    bars = make_bars(2000)
    size = bound.tail_size()  # type: ignore[attr-defined]
    opened_at = len(bars) - (size or len(bars))  # the first bar of the opening tail
    for step in range(30):
        tick(bars, step)
        fetch = Fetch(bars)
        time, values = live.step(fetch) or (0, [])
        assert time == bars[-1][0]
        assert values == batch_newest(bound, bars[opened_at:])  # exact, not approx
        if step:
            assert fetch.asked == [RECENT]  # constant work: only the newest bars read


def test_a_bar_that_closes_is_fed_once_and_its_final_row_comes_first(
    indicators: Indicators,
) -> None:
    live = LiveIndicators()
    live.subscribe("a", "ema", bound_of(indicators, "talib.overlap.EMA", {"timeperiod": 20}))  # type: ignore[arg-type]
    bars = make_bars(700)
    fetch = Fetch(bars)
    live.on_bar(BTC, fetch, since=bars[-1][0])
    closing = bars[-1][0]
    bars[-1] = (*bars[-1][:4], bars[-1][4] + 1.0, bars[-1][5])  # its last update...
    tick(bars, 2)  # ...and the next bar, in one batch
    updates = live.on_bar(BTC, fetch, since=closing)
    assert [u.time for u in updates] == [closing, bars[-1][0]]
    size = bound_of(indicators, "talib.overlap.EMA", {"timeperiod": 20}).tail_size()  # type: ignore[attr-defined]
    start = len(bars) - 1 - size
    bound = bound_of(indicators, "talib.overlap.EMA", {"timeperiod": 20})
    assert updates[0].values[1:] == tuple(batch_newest(bound, bars[start:-1]))
    assert updates[1].values[1:] == tuple(batch_newest(bound, bars[start:]))


def test_a_changed_closed_bar_or_a_resync_opens_it_again_from_the_tail(
    indicators: Indicators,
) -> None:
    bound = bound_of(indicators, "talib.momentum.RSI", {"timeperiod": 14})
    live = LiveComputation(bound)  # type: ignore[arg-type]
    bars = make_bars(1000)
    size = bound.tail_size()  # type: ignore[attr-defined]
    live.step(Fetch(bars))
    bars[-2] = (*bars[-2][:4], bars[-2][4] + 3.0, bars[-2][5])  # the closed bar corrected
    fetch = Fetch(bars)
    assert live.step(fetch) == (bars[-1][0], batch_newest(bound, bars[-size:]))
    assert fetch.asked == [RECENT, size]
    bars[-50] = (*bars[-50][:4], bars[-50][4] - 2.0, bars[-50][5])  # deeper: the owner says so
    live.resync()
    fetch = Fetch(bars)
    assert live.step(fetch) == (bars[-1][0], batch_newest(bound, bars[-size:]))
    assert fetch.asked == [size]


def test_too_little_history_or_a_forming_bar_that_is_not_finite_is_computed_the_batch_way(
    indicators: Indicators,
) -> None:
    bound = bound_of(indicators, "talib.overlap.EMA", {"timeperiod": 20})
    live = LiveComputation(bound)  # type: ignore[arg-type]
    bars = make_bars(10)
    assert live.step(Fetch(bars)) == (bars[-1][0], [None])  # warm-up: null, not an error
    bars = make_bars(300)
    assert live.step(Fetch(bars)) == (bars[-1][0], batch_newest(bound, bars[-bound.tail_size() :]))  # type: ignore[attr-defined]
    bars[-1] = (*bars[-1][:4], float("nan"), bars[-1][5])
    assert live.step(Fetch(bars)) == (bars[-1][0], [None])
    bars[-1] = (*bars[-1][:4], 101.0, bars[-1][5])
    assert live.step(Fetch(bars)) == (bars[-1][0], batch_newest(bound, bars[-bound.tail_size() :]))  # type: ignore[attr-defined]


def test_running_totals_and_indicators_without_a_handle_keep_the_tail_computation(
    indicators: Indicators,
) -> None:
    obv = bound_of(indicators, "talib.volume.OBV", {})
    user = bound_of(indicators, "candlewire.performance.PercentChange", {})
    assert obv.indicator.memory is Memory.ADDITIVE  # type: ignore[attr-defined]
    assert LiveComputation(obv).running is None  # type: ignore[arg-type]
    assert LiveComputation(user).running is None  # type: ignore[arg-type]


RUNNING_CASES = CASES[:5]  # every one with a bounded tail and a handle; SAR opens on all bars


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["tick", "tick", "tick", "bar", "closed", "nan", "since"]),
            st.floats(-3.0, 3.0, allow_nan=False),
        ),
        min_size=1,
        max_size=25,
    )
)
# two closed bars that are not finite in BBANDS(20)'s 22-bar tail: it must still open
@example(steps=[("nan", 0.0), ("bar", 0.0), ("nan", 0.0), ("bar", 0.0)])
def test_the_usual_update_in_one_loop_gives_the_rows_of_each_computation_its_own_way(
    steps: list[tuple[str, float]],
) -> None:
    """``peek_all`` (the steady state of every running computation over a series at once)
    and its fallbacks give, update after update, the rows each computation gives alone
    (the general path: ``Incremental.advance``), through ticks, bars that close within a
    batch, corrected closed bars and forming bars that are not finite."""
    indicators = build_indicators()
    fast, alone = LiveIndicators(), LiveIndicators()
    for live in (fast, alone):
        for i, (indicator_id, inputs) in enumerate(RUNNING_CASES):
            live.subscribe("a", f"c{i}", bound_of(indicators, indicator_id, inputs))  # type: ignore[arg-type]
    bars = make_bars(400)
    taken = []

    def counted(*args: object) -> object:
        rows = peek_all(*args)  # type: ignore[arg-type]
        taken.append(rows is not None)
        return rows

    for n, (what, change) in enumerate([*steps, ("tick", 0.5), ("tick", -0.5)]):
        t, o, h, low, c, v = bars[-1]
        c = c if np.isfinite(c) else o
        since = None
        if what == "bar":
            bars.append((t + 3600, c, c + 1, c - 1, c + change, 1.0))
        elif what == "since":  # the forming bar's last update and the next bar, one batch
            bars[-1] = (t, o, h, low, c + change, v)
            bars.append((t + 3600, c, c + 1, c - 1, c - change, 1.0))
            since = t
        elif what == "closed":
            bars[-2] = (*bars[-2][:4], bars[-2][4] + change, bars[-2][5])
            for live in (fast, alone):
                live.resync_series(BTC)
        elif what == "nan":
            bars[-1] = (t, o, h, low, float("nan") if change > 0 else float("inf"), v)
        else:
            bars[-1] = (t, o, h + 0.5, low - 0.1, c + change, v + 1)
        fetch = Fetch(bars)
        with mock.patch("backend.indicators.live.peek_all", counted):
            got = fast.on_bar(BTC, fetch, since)
        with mock.patch("backend.indicators.live.peek_all", lambda *args: None):
            want = alone.on_bar(BTC, fetch, since)
        assert got == want, (n, what)
    assert taken[-1]  # the usual update after a plain one: in one loop


def test_a_bar_that_closes_without_volume_is_left_out_as_the_batch_leaves_it_out(
    indicators: Indicators,
) -> None:
    """A forming bar without volume (``None``) that closes so: its row is null, and the
    running computation opens again without it, the values those of the batch way."""
    bound = bound_of(indicators, "talib.momentum.MFI", {})
    live = LiveComputation(bound)  # type: ignore[arg-type]
    bars = make_bars(2000)
    rows: list[tuple[int, list[float | None]]] = []
    for step in range(8):
        t, o, h, low, c, v = bars[-1]
        if step == 1:  # the forming bar's volume is missing...
            bars[-1] = (t, o, h, low, c + 0.5, None)
        elif step in (3, 6):  # ...and it closes so; a bar with volume opens, and later one more
            bars.append((t + 3600, c, c + 1, c - 1, c + 0.2, 5.0))
        else:
            bars[-1] = (t, o, h + 0.5, low, c - 0.25, None if v is None else v + 1)
        since = bars[-1][0] if step not in (3, 6) else bars[-2][0]
        rows = live.advance(bars[-RECENT:], Fetch(bars), since)
        expected = batch_newest(bound, bars)
        assert rows[-1][1] == (pytest.approx(expected, rel=1e-9) if expected[0] else [None])
        assert expected[0] is not None or step in (1, 2)  # only the bar without volume
        if step == 3:  # the bar without volume closed: its final row is null
            assert [row[0] for row in rows] == [bars[-2][0], bars[-1][0]]
            assert rows[0][1] == [None]
    assert live.running == BTC
