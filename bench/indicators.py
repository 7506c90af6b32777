"""Benchmark: the cost of indicator values for EMA(20), RSI(14), MACD and BBANDS on a
5,000-bar series, beside TA-Lib's own batch call on the same arrays (the reference).

* init: bind + align the bars + compute + build the 5,000 wire rows (what ``indicator_init``
  costs from the cache), p50 over the runs;
* live: one forming-bar update from the bounded tail (:class:`LiveComputation.step`), p50;
* reference: ``talib.<FUNC>(close)`` on the full 5,000-element array, p50.

Run: ``python bench/indicators.py [--runs 200]`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import talib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.indicators.engine import (
    Binding,
    LiveComputation,
    bind,
    compute,
    output_keys,
    rows,
)
from backend.indicators.registry import build_indicators
from backend.model.bars import Bar, SeriesId

SERIES = SeriesId("bench", "SYN", "1m")
CASES: list[tuple[str, str, dict[str, object], Callable[[np.ndarray], object]]] = [
    ("EMA(20)", "talib.overlap.EMA", {"timeperiod": 20}, lambda c: talib.EMA(c, 20)),
    ("RSI(14)", "talib.momentum.RSI", {"timeperiod": 14}, lambda c: talib.RSI(c, 14)),
    ("MACD", "talib.momentum.MACD", {}, talib.MACD),
    ("BBANDS(20)", "talib.overlap.BBANDS", {"timeperiod": 20}, lambda c: talib.BBANDS(c, 20)),
]


def make_bars(n: int) -> list[Bar]:
    rng = np.random.default_rng(7)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    return [(60 * i, close[i], close[i] + 1, close[i] - 1, close[i], 1.0) for i in range(n)]


def p50_us(action: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--bars", type=int, default=5000)
    args = parser.parse_args()
    indicators = build_indicators()
    bars = make_bars(args.bars)
    close = np.array([bar[4] for bar in bars])
    binding = [Binding("close", SERIES, "close")]

    def fetch(series: SeriesId, n: int | None) -> Sequence[Bar]:
        return bars if n is None else bars[-n:]

    print(f"{args.bars} bars, p50 of {args.runs} runs, microseconds")
    print(f"{'indicator':<12}{'init (rows)':>14}{'live update':>14}{'tail bars':>11}"
          f"{'TA-Lib batch':>14}")  # fmt: skip
    figures: dict[str, dict[str, float]] = {}
    for label, indicator_id, inputs, reference in CASES:
        bound = bind(indicators, indicator_id, inputs, binding)
        keys = output_keys(bound, "bench")

        def init(
            indicator_id: str = indicator_id,
            inputs: dict[str, object] = inputs,
            keys: list[str] = keys,
        ) -> object:
            fresh = bind(indicators, indicator_id, inputs, binding)
            return rows(compute(fresh, {SERIES: bars}), keys)

        live = LiveComputation(bound, compute(bound, {SERIES: bars}))
        init_us = p50_us(init, args.runs)
        live_us = p50_us(partial(live.step, fetch), args.runs)
        ref_us = p50_us(partial(reference, close), args.runs)
        print(f"{label:<12}{init_us:>14.0f}{live_us:>14.1f}{bound.tail_size():>11}{ref_us:>14.1f}")
        figures[label] = {"init_us": init_us, "live_us": live_us, "talib_batch_us": ref_us}
    print(json.dumps({"bench": "indicators", "bars": args.bars, "p50": figures}))


if __name__ == "__main__":
    main()
