"""A scan over many symbols: results per match, progress, a completion message even with no
match, one symbol's failure never aborts the scan, bounded concurrency, stop at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from backend.errors import IndicatorError, UnknownSymbol
from backend.indicators.registry import Indicators, build_indicators
from backend.indicators.rules import RuleSet, parse_rule_set
from backend.indicators.scanner import ScanLimits, Symbol, bind_rules, run_scan
from backend.model.bars import Bar, SeriesId
from tests.harness import eventually
from tests.test_indicators_engine import make_bars

RSI_LABEL = "RSI timeperiod=14"


@pytest.fixture(scope="module")
def indicators() -> Indicators:
    return build_indicators()


def close_above(level: float) -> RuleSet:
    rule = {"type1": "data", "source1": "csv", "name1": "T", "interval1": "1h", "key1": "close",
            "comparator": ">", "type2": "value", "value2": str(level)}  # fmt: skip
    return parse_rule_set([rule], [], {})


def rsi_rule() -> RuleSet:
    config = {"indicator": {"id": "rsi", "indicator": {"id": "talib.momentum.RSI", "name": "RSI"},
              "inputs": {"timeperiod": 14},
              "dataMap": {"close": {"source": "csv", "name": "T", "interval": "1h",
                                    "value": "csv-T-1h-close"}}}}  # fmt: skip
    rule = {"type1": "indicator", "indicator1": RSI_LABEL, "output1": "RSI",
            "comparator": ">", "type2": "value", "value2": "0"}  # fmt: skip
    return parse_rule_set([rule], [], {RSI_LABEL: config})


def universe(n: int) -> list[Symbol]:
    return [Symbol("csv", f"S{i}", {"id": f"csv-S{i}", "name": f"S{i}"}) for i in range(n)]


class Store:
    """Symbol S<i> closes at i; S13 is unknown upstream."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.running = 0
        self.most = 0
        self.asked: list[tuple[SeriesId, int]] = []

    async def fetch(self, series: SeriesId, n: int) -> Sequence[Bar]:
        self.asked.append((series, n))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            if series.name == "S13":
                raise UnknownSymbol("no such symbol")
            level = float(series.name[1:])
            return [(t, level, level, level, level, 1.0) for t, *_ in make_bars(n)]
        finally:
            self.running -= 1


async def scan(
    rules: RuleSet,
    symbols: list[Symbol],
    store: Store,
    indicators: Indicators,
    stop: asyncio.Event | None = None,
    **limits: Any,
) -> tuple[Any, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    stop = stop or asyncio.Event()
    limit = asyncio.Semaphore(8)
    outcome = await run_scan(
        rules, ("csv", "T"), symbols, store.fetch, indicators, sent.append, stop, limit,
        ScanLimits(**limits),
    )  # fmt: skip
    return outcome, sent


async def test_a_scan_sends_a_result_per_match_then_completes(indicators: Indicators) -> None:
    outcome, sent = await scan(close_above(16.5), universe(20), Store(), indicators)
    results = [m for m in sent if m["type"] == "scan_result"]
    assert sorted(m["data"]["name"] for m in results) == ["S17", "S18", "S19"]
    assert results[0]["data_values"] == {"close": float(results[0]["data"]["name"][1:])}
    assert [m["message"] for m in sent if m["type"] == "scan_progress"][-1] == (
        "Done: 3 of 20 matched"
    )
    assert sent[-1] == {"type": "scan_done", "scanned": 19, "matched": 3, "total": 20,
                        "stopped": False}  # fmt: skip
    assert outcome.skipped == ["csv:S13"]


async def test_a_scan_without_matches_still_says_it_is_done(indicators: Indicators) -> None:
    _, sent = await scan(close_above(1e9), universe(5), Store(), indicators)
    assert [m["type"] for m in sent].count("scan_result") == 0
    assert sent[-1]["type"] == "scan_done" and sent[-1]["matched"] == 0
    progress = [m["message"] for m in sent if m["type"] == "scan_progress"]
    assert progress[:5] == [f"Scanning {i}/5" for i in range(1, 6)]


async def test_an_indicator_rule_fetches_only_the_bounded_tail_it_needs(
    indicators: Indicators,
) -> None:
    store = Store()
    _, sent = await scan(rsi_rule(), universe(3), store, indicators)
    assert {n for _, n in store.asked} == {466}  # RSI(14) tail 465 + the previous bar
    assert sent[-1]["scanned"] == 3


async def test_a_running_total_rule_reads_as_much_history_as_a_path_dependent_one(
    indicators: Indicators,
) -> None:
    # OBV's level is summed over the bars read: over its 4-bar live tail, a rule "OBV > x"
    # compared a level of its own with x, not the one the chart shows.
    label = "OBV"
    series = {"source": "csv", "name": "T", "interval": "1h"}
    data_map = {"close": series | {"value": "csv-T-1h-close"},
                "volume": series | {"value": "csv-T-1h-volume"}}  # fmt: skip
    obv = {"id": "talib.volume.OBV", "name": "OBV"}
    config = {"indicator": {"id": "obv", "indicator": obv, "inputs": {}, "dataMap": data_map}}
    rule = {"type1": "indicator", "indicator1": label, "output1": "OBV",
            "comparator": ">", "type2": "value", "value2": "0"}  # fmt: skip
    store = Store()
    rules = parse_rule_set([rule], [], {label: config})
    _, sent = await scan(rules, universe(2), store, indicators)
    assert {n for _, n in store.asked} == {1001}  # FULL_HISTORY_BARS + the previous bar
    assert sent[-1]["scanned"] == 2


async def test_a_rule_reads_at_most_max_bars_and_refuses_an_indicator_that_needs_more(
    indicators: Indicators,
) -> None:
    store = Store()
    _, sent = await scan(rsi_rule(), universe(3), store, indicators, max_bars=100)
    assert {n for _, n in store.asked} == {100}  # the tail of 466 cut to max_bars
    assert sent[-1]["scanned"] == 3
    assert bind_rules(rsi_rule(), indicators, 16)  # 14 bars of warm-up, the newest, one before
    with pytest.raises(IndicatorError) as refused:
        bind_rules(rsi_rule(), indicators, 15)
    assert refused.value.code == "not_enough_history"
    assert "needs more than 15 bars; a rule reads at most 15" in refused.value.message


async def test_a_scan_runs_a_bounded_number_of_symbols_at_once(indicators: Indicators) -> None:
    store = Store(delay=0.01)
    await scan(close_above(0), universe(30), store, indicators, per_scan=3)
    assert store.most == 3


async def test_scan_stop_ends_the_scan_at_once(indicators: Indicators) -> None:
    store, stop = Store(delay=30.0), asyncio.Event()
    task = asyncio.create_task(scan(close_above(0), universe(100), store, indicators, stop))
    await eventually(lambda: store.running == 4, what="four symbols in flight")
    stop.set()
    outcome, sent = await asyncio.wait_for(task, timeout=5)
    assert outcome.stopped and sent[-1]["stopped"] is True and store.running == 0
    assert sent[-2]["message"] == "Stopped: 0 of 100 matched"


async def test_scan_stop_ends_the_scan_at_once_whatever_its_symbols_wait_for(
    indicators: Indicators,
) -> None:
    """A symbol whose bars do not stop coming at its cancel (a wait that drops the cancel,
    as Python 3.11's ``asyncio.wait_for`` did in the provider's history call) held the
    scan's "Stopped: ..." and ``scan_done`` until its fetch ended (HISTORY_TIMEOUT); once
    they are out, nothing more of the scan is sent, not its match either."""
    release, asked = asyncio.Event(), asyncio.Event()

    async def fetch(series: SeriesId, n: int) -> Sequence[Bar]:
        asked.set()
        with contextlib.suppress(asyncio.CancelledError):  # dropped
            await asyncio.sleep(30)
        await release.wait()
        return [(t, 5.0, 5.0, 5.0, 5.0, 1.0) for t, *_ in make_bars(n)]

    sent: list[dict[str, Any]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_scan(close_above(0), ("csv", "T"), universe(1), fetch, indicators, sent.append,
                 stop, asyncio.Semaphore(8), ScanLimits())
    )  # fmt: skip
    await asked.wait()
    stop.set()
    await eventually(lambda: sent[-1]["type"] == "scan_done", 5, "scan_done while it waits")
    assert sent[-2:] == [
        {"type": "scan_progress", "message": "Stopped: 0 of 1 matched"},
        {"type": "scan_done", "scanned": 0, "matched": 0, "total": 1, "stopped": True},
    ]
    release.set()
    outcome = await asyncio.wait_for(task, timeout=5)
    assert outcome.stopped
    assert sent[-1]["type"] == "scan_done"  # the symbol matched meanwhile: not sent
    assert [m["type"] for m in sent].count("scan_result") == 0


@pytest.mark.parametrize(
    ("indicator_id", "output", "columns"),
    [("talib.overlap.KAMA", "KAMA", ("close",)),
     ("talib.overlap.SUPERTREND", "supertrend", ("high", "low", "close"))],
)  # fmt: skip
async def test_a_rule_on_an_indicator_without_a_bounded_tail_reads_past_its_lookback(
    indicators: Indicators, indicator_id: str, output: str, columns: tuple[str, ...]
) -> None:
    """KAMA and SUPERTREND depend on every bar (FULL) and may have a period longer than the
    1,000 bars such a rule reads: it then read 1,001 bars, had no value, and never matched,
    without a word."""
    label = f"{output} timeperiod=1500"
    series = {"source": "csv", "name": "T", "interval": "1h"}
    data_map = {column: series | {"value": f"csv-T-1h-{column}"} for column in columns}
    config = {"indicator": {"id": "it", "indicator": {"id": indicator_id, "name": output},
                            "inputs": {"timeperiod": 1500}, "dataMap": data_map}}  # fmt: skip
    rule = {"type1": "indicator", "indicator1": label, "output1": output,
            "comparator": ">", "type2": "value", "value2": "0.5"}  # fmt: skip
    store = Store()
    _, sent = await scan(
        parse_rule_set([rule], [], {label: config}), universe(3), store, indicators
    )
    assert {n for _, n in store.asked} == {1502}  # the lookback, the newest, the one before
    assert sent[-1]["matched"] == 2  # S1 and S2: over a flat close, the close
