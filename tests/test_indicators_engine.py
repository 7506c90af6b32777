"""The indicator engine: values equal TA-Lib's own batch computation, rows on the wire as
the spec says (2.3, 2.7), the live value of the forming bar from a bounded tail equals the
batch value, and typed errors for everything a client can get wrong."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import talib

from backend.errors import IndicatorError
from backend.indicators.base import Memory
from backend.indicators.engine import (
    Binding,
    BoundIndicator,
    LiveComputation,
    bind,
    compute,
    compute_history,
    last_dates,
    output_keys,
    rows,
)
from backend.indicators.incremental import RECENT
from backend.indicators.registry import Indicators, build_indicators
from backend.model.bars import FIELDS, Bar, SeriesId

BTC = SeriesId("csv", "BTCUSDT", "1h")
ETH = SeriesId("csv", "ETHUSDT", "1h")
T0 = 1_700_000_000 // 3600 * 3600


def make_bars(n: int, seed: int = 1, start: int = T0) -> list[Bar]:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    spread = rng.uniform(0.1, 2.0, n)
    volume = rng.uniform(1, 100, n)
    return [
        (start + 3600 * i, close[i] - 0.3, close[i] + spread[i], close[i] - spread[i], close[i],
         volume[i])
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


def on(series: SeriesId, *columns: str) -> list[Binding]:
    return [Binding(c, series, c if c in FIELDS else "close") for c in columns]


class Tail:
    """A fetch callable over fixed bars that records the sizes asked for."""

    def __init__(self, bars: dict[SeriesId, list[Bar]]) -> None:
        self.bars = bars
        self.asked: list[int | None] = []

    def __call__(self, series: SeriesId, n: int | None) -> Sequence[Bar]:
        self.asked.append(n)
        bars = self.bars[series]
        return bars if n is None else bars[-n:]


@pytest.mark.parametrize(
    ("indicator_id", "inputs", "expected"),
    [
        ("talib.overlap.EMA", {"timeperiod": 20}, lambda c: [talib.EMA(c, 20)]),
        ("talib.momentum.RSI", {"timeperiod": 14}, lambda c: [talib.RSI(c, 14)]),
        ("talib.momentum.MACD", {}, lambda c: list(talib.MACD(c))),
        ("talib.overlap.BBANDS", {"timeperiod": "20"}, lambda c: list(talib.BBANDS(c, 20))),
    ],
)
def test_values_equal_talibs_batch_computation_on_the_same_bars(
    indicators: Indicators, indicator_id: str, inputs: dict[str, object], expected: object
) -> None:
    bars = make_bars(5000)
    bound = bind(indicators, indicator_id, inputs, on(BTC, "close"))
    computed = compute_history(bound, {BTC: bars})
    close = np.array([bar[4] for bar in bars])
    for ours, theirs in zip(computed.values, expected(close), strict=True):  # type: ignore[operator]
        np.testing.assert_array_equal(ours, theirs)


def test_rows_carry_every_output_key_with_null_warm_up_and_bar_dates(
    indicators: Indicators,
) -> None:
    bars = make_bars(100)
    bound = bind(indicators, "talib.momentum.MACD", {}, on(BTC, "close"))
    keys = output_keys(bound, "chart-MACD")
    wire = rows(compute_history(bound, {BTC: bars}), keys)
    assert keys == ["chart-MACD-macd", "chart-MACD-macdsignal", "chart-MACD-macdhist"]
    assert len(wire) == 100
    assert wire[0] == {"date": "2023-11-14 22:00:00", **dict.fromkeys(keys)}
    assert all(set(row) == {"date", *keys} for row in wire)
    assert wire[33][keys[0]] is not None and wire[32][keys[1]] is None
    assert last_dates({BTC: bars}) == {"csv-BTCUSDT-1h": wire[-1]["date"]}


def test_rows_cover_range_start_to_the_latest_bar_or_the_last_count(
    indicators: Indicators,
) -> None:
    bars = make_bars(50)
    bound = bind(indicators, "talib.overlap.SMA", {"timeperiod": 3}, on(BTC, "close"))
    computed = compute_history(bound, {BTC: bars})
    keys = output_keys(bound, "x")
    assert [r["date"] for r in rows(computed, keys, since=bars[45][0])] == [
        rows(computed, keys)[i]["date"] for i in range(45, 50)
    ]
    assert len(rows(computed, keys, count=7)) == 7
    assert len(rows(computed, keys, since=bars[-1][0] + 1)) == 0


def test_non_finite_values_are_null_on_the_wire(indicators: Indicators) -> None:
    bars = [(T0 + 3600 * i, 0.0, 0.0, 0.0, 0.0, 1.0) for i in range(5)]
    bound = bind(indicators, "candlewire.performance.PercentChange", {}, on(BTC, "close"))
    wire = rows(compute_history(bound, {BTC: bars}), ["p"])
    assert [row["p"] for row in wire] == [None] * 5


def correl_of_btc_and_eth(indicators: Indicators) -> BoundIndicator:
    """CORREL(10) of BTC's and ETH's closes (two series, joined on their dates)."""
    bindings = [Binding("high", BTC, "close"), Binding("low", ETH, "close")]
    return bind(indicators, "talib.statistics.CORREL", {"timeperiod": 10}, bindings)


def test_an_indicator_over_two_symbols_aligns_them_on_common_dates(
    indicators: Indicators,
) -> None:
    btc, eth = make_bars(300, seed=1), make_bars(300, seed=2, start=T0 + 3600 * 100)
    bound = correl_of_btc_and_eth(indicators)
    computed = compute_history(bound, {BTC: btc, ETH: eth})
    assert list(computed.times) == [bar[0] for bar in btc[100:]]
    expected = talib.CORREL(
        np.array([b[4] for b in btc[100:]]), np.array([b[4] for b in eth[:200]]), 10
    )
    np.testing.assert_array_equal(computed.values[0], expected)


def test_two_series_without_a_common_date_say_so_not_that_nothing_is_cached(
    indicators: Indicators,
) -> None:
    btc, eth = make_bars(50, seed=1), make_bars(50, seed=2, start=T0 + 3600 * 100)
    bound = correl_of_btc_and_eth(indicators)
    with pytest.raises(IndicatorError, match="have no bar date in common") as caught:
        compute_history(bound, {BTC: btc, ETH: eth})
    assert caught.value.code == "no_data"
    with pytest.raises(IndicatorError, match="no bars cached"):
        compute_history(bound, {BTC: btc, ETH: []})


def _live_matches_batch(indicators: Indicators, indicator_id: str) -> None:
    indicator = indicators.get(indicator_id)
    bindings = [Binding(c, BTC, c if c in FIELDS else "close") for c in indicator.columns]
    bound = bind(indicators, indicator_id, {}, bindings)
    bars = make_bars(3000)
    seed = compute(bound, {BTC: bars[:-1]})  # what indicator_init computed a bar earlier
    live = LiveComputation(bound, seed)
    forming = list(bars[-1])
    for tick, close in enumerate((forming[4] + 0.5, forming[4] - 0.25)):  # two ticks
        forming[4] = close
        now = [*bars[:-1], tuple(forming)]
        tail = Tail({BTC: now})  # type: ignore[dict-item]
        time, values = live.step(tail) or (0, [])
        batch = compute(bound, {BTC: now})  # type: ignore[dict-item]
        assert time == now[-1][0]
        expected = [v[-1] if np.isfinite(v[-1]) else np.nan for v in batch.values]
        got = [np.nan if v is None else v for v in values]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9, nan_ok=True), indicator_id
        size = bound.tail_size()
        if live.running is not None and tick:  # opened on the first tick: the newest bars now
            assert tail.asked == [RECENT]
        elif bound.indicator.memory is not Memory.FULL:
            assert size is not None and all(n == size for n in tail.asked)


def test_the_live_value_of_every_built_in_equals_its_batch_value(indicators: Indicators) -> None:
    ids = [row["id"] for row in indicators.catalogue.search("", limit=1000)]
    failed = []
    for indicator_id in ids:
        try:
            _live_matches_batch(indicators, indicator_id)
        except AssertionError as exc:
            failed.append(f"{indicator_id}: {str(exc)[:200]}")
    assert failed == []


@pytest.mark.parametrize(
    ("indicator_id", "most"),
    [("talib.overlap.EMA", 1000), ("talib.momentum.RSI", 500), ("talib.overlap.BBANDS", 700),
     ("talib.momentum.MACD", 1100), ("talib.volume.OBV", 5)],
)  # fmt: skip
def test_the_live_tail_is_bounded_by_the_lookback_never_the_whole_history(
    indicators: Indicators, indicator_id: str, most: int
) -> None:
    bound = bind(indicators, indicator_id, {}, on(BTC, *indicators.get(indicator_id).columns))
    size = bound.tail_size()
    assert size is not None and bound.lookback < size <= most


def test_a_running_total_continues_from_its_anchor_across_new_bars(
    indicators: Indicators,
) -> None:
    bars = make_bars(2000)
    bound = bind(indicators, "talib.volume.OBV", {}, on(BTC, "close", "volume"))
    live = LiveComputation(bound, compute(bound, {BTC: bars[:1500]}))
    for end in range(1501, 1520):  # each step: a new bar opens
        tail = Tail({BTC: bars[:end]})
        _, values = live.step(tail) or (0, [])
        assert values == pytest.approx([compute(bound, {BTC: bars[:end]}).values[0][-1]])
        assert tail.asked == [bound.tail_size()]


def test_a_running_total_without_an_anchor_is_computed_in_full_once(
    indicators: Indicators,
) -> None:
    bars = make_bars(500)
    bound = bind(indicators, "talib.volume.OBV", {}, on(BTC, "close", "volume"))
    live = LiveComputation(bound)
    tail = Tail({BTC: bars})
    live.step(tail)
    live.step(tail)
    assert tail.asked == [None, bound.tail_size()]


@pytest.mark.parametrize(
    ("indicator_id", "inputs", "columns", "code"),
    [
        ("talib.momentum.NOPE", {}, ("close",), "unknown_indicator"),
        ("talib.momentum.RSI", {"timeperiod": "0"}, ("close",), "bad_input"),
        ("talib.momentum.RSI", {"timeperiod": "abc"}, ("close",), "bad_input"),
        ("talib.momentum.RSI", {"timeperiod": 14.5}, ("close",), "bad_input"),
        ("talib.momentum.RSI", {"timeperiod": [14]}, ("close",), "bad_input"),
        ("talib.momentum.RSI", {"length": 14}, ("close",), "bad_input"),
        ("talib.overlap.BBANDS", {"nbdevup": "nan"}, ("close",), "bad_input"),
        ("talib.momentum.RSI", {"timeperiod": 1}, ("close",), "bad_input"),  # TA-Lib: >= 2
        ("talib.volatility.ATR", {}, ("close",), "missing_columns"),
    ],
)
def test_bad_requests_raise_a_typed_error_with_its_code(
    indicators: Indicators,
    indicator_id: str,
    inputs: dict[str, object],
    columns: tuple[str, ...],
    code: str,
) -> None:
    with pytest.raises(IndicatorError) as caught:
        bind(indicators, indicator_id, inputs, on(BTC, *columns))
    assert caught.value.code == code


def test_too_little_history_or_none_is_a_typed_error(indicators: Indicators) -> None:
    bound = bind(indicators, "talib.overlap.SMA", {"timeperiod": 30}, on(BTC, "close"))
    with pytest.raises(IndicatorError) as short:
        compute_history(bound, {BTC: make_bars(20)})
    with pytest.raises(IndicatorError) as empty:
        compute_history(bound, {})
    assert (short.value.code, empty.value.code) == ("not_enough_history", "no_data")


def test_window_moving_average_types_make_a_short_tail_and_others_a_long_one(
    indicators: Indicators,
) -> None:
    sma = bind(indicators, "talib.overlap.BBANDS", {"timeperiod": 20}, on(BTC, "close"))
    ema = bind(
        indicators, "talib.overlap.BBANDS", {"timeperiod": 20, "mamode": 1}, on(BTC, "close")
    )
    assert sma.tail_size() == sma.lookback + 3
    size = ema.tail_size()
    assert size is not None and size > 10 * ema.lookback
    bars = make_bars(2000)
    for bound in (sma, ema):
        _, values = LiveComputation(bound).step(Tail({BTC: bars})) or (0, [])
        batch = compute(bound, {BTC: bars})
        assert values == pytest.approx([v[-1] for v in batch.values], rel=1e-9)


def test_live_values_from_the_incremental_tails_equal_the_batch_over_all_bars(
    indicators: Indicators,
) -> None:
    """The hub's path: column-major tail tables, the forming bar changing and bars opening."""
    from backend.indicators.tails import Tails

    tails = Tails()
    bounds = [
        bind(indicators, "talib.overlap.EMA", {"timeperiod": 20}, on(BTC, "close")),
        bind(indicators, "talib.momentum.RSI", {"timeperiod": 14}, on(BTC, "close")),
        bind(indicators, "talib.momentum.MACD", {}, on(BTC, "close")),
        bind(indicators, "talib.overlap.BBANDS", {"timeperiod": 20}, on(BTC, "close")),
        bind(indicators, "talib.volatility.ATR", {}, on(BTC, "high", "low", "close")),
    ]
    lives = [LiveComputation(bound) for bound in bounds]
    bars = make_bars(2500)
    for step in range(12):
        if step % 3 == 0:  # a bar opens
            t = bars[-1][0] + 3600
            bars.append((t, bars[-1][4], bars[-1][4] + 1, bars[-1][4] - 1, bars[-1][4], 1.0))
        else:  # the forming bar changes
            t, o, h, low, c, v = bars[-1]
            bars[-1] = (t, o, h + 0.5, low, c + 0.25 * step, v + 1)
        for bound, live in zip(bounds, lives, strict=True):
            time, values = live.step(lambda s, n: tails.get(s, bars, n or len(bars))) or (0, [])
            batch = compute(bound, {BTC: bars})
            assert time == bars[-1][0]
            assert values == pytest.approx([v[-1] for v in batch.values], rel=1e-9)


def ranging_at_the_tick(n: int, seed: int = 3) -> list[Bar]:
    """A stablecoin's bars (USDC against USDT): a slow drift to 1.0, then a ranging market
    whose closes move a tick at a time between 0.9999 and 1.0001."""
    rng = np.random.default_rng(seed)
    half = n // 2
    close = np.r_[np.linspace(0.97, 1.0, half), 1.0 + 0.0001 * rng.integers(-1, 2, n - half)]
    return [
        (T0 + 3600 * i, close[i], close[i] + 0.0001, close[i] - 0.0001, close[i], 1e9)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("indicator_id", "inputs"),
    [("talib.overlap.KAMA", {}), ("talib.overlap.MAMA", {}), ("talib.cycle.HT_SINE", {}),
     ("talib.cycle.HT_DCPERIOD", {}), ("talib.overlap.MA", {"mamode": 6}),
     ("talib.overlap.BBANDS", {"mamode": 7}), ("talib.momentum.APO", {"mamode": 6})],
)  # fmt: skip
def test_adaptive_averages_live_equal_their_batch_value_over_a_ranging_market(
    indicators: Indicators, indicator_id: str, inputs: dict[str, object]
) -> None:
    """KAMA, MAMA and the Hilbert transform forget at a pace the bars set, not their
    lookback: a live value from a tail of 30 lookbacks differed from TA-Lib's batch value
    over the cached bars (over these bars, APO of KAMA averages by a third of its value)."""
    bars = ranging_at_the_tick(4000)
    bound = bind(indicators, indicator_id, inputs, on(BTC, "close"))
    live = LiveComputation(bound, compute(bound, {BTC: bars[:-1]}))
    for end in range(len(bars) - 40, len(bars) + 1, 8):  # bars close, the forming one moves
        _, values = live.step(Tail({BTC: bars[:end]})) or (0, [])
        batch = compute(bound, {BTC: bars[:end]})
        expected = [v[-1] if np.isfinite(v[-1]) else np.nan for v in batch.values]
        got = [np.nan if v is None else v for v in values]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)
    assert bound.warmup_size() is None  # pages meet without a jump: warmed up like SAR


def without_volume_at(bars: list[Bar], *indexes: int) -> list[Bar]:
    """``bars`` with the volume of the bars at ``indexes`` missing (``None``: a CSV row whose
    volume cell is empty, an aggregate without one)."""
    out = list(bars)
    for index in indexes:
        t, o, h, low, c, _ = out[index]
        out[index] = (t, o, h, low, c, None)
    return out


@pytest.mark.parametrize(
    "indicator_id",
    ["talib.momentum.MFI", "talib.overlap.VWMA", "talib.volume.PVO", "talib.volume.EFI",
     "talib.volume.OBV"],
)  # fmt: skip
def test_a_bar_without_volume_leaves_only_its_own_row_empty(
    indicators: Indicators, indicator_id: str
) -> None:
    """TA-Lib carries a NaN input into every later value: one bar without volume ended the
    line of every indicator that reads volume at that bar, while its live value, from a
    shorter tail, went on. Such a bar is left out of them: its row is null, the others are
    TA-Lib's values over the bars that have every field it reads, live ones too."""
    missing = 2500
    bars = without_volume_at(make_bars(3000), missing)
    indicator = indicators.get(indicator_id)
    bound = bind(indicators, indicator_id, {}, on(BTC, *indicator.columns))
    function = getattr(talib, indicator_id.rsplit(".", 1)[1])
    kept = bars[:missing] + bars[missing + 1 :]
    columns = [np.array([bar[FIELDS.index(c) + 1] for bar in kept]) for c in indicator.columns]
    reference = function(*columns)
    expected = np.insert(np.asarray(reference, dtype=np.float64), missing, np.nan)
    computed = compute(bound, {BTC: bars}).values[0]
    np.testing.assert_allclose(computed, expected, rtol=1e-12, equal_nan=True)
    live = LiveComputation(bound, compute(bound, {BTC: bars[:-1]}))
    _, values = live.step(Tail({BTC: bars})) or (0, [])
    assert values == pytest.approx([expected[-1]], rel=1e-9)
