"""The incremental tail tables the live indicators read (backend/indicators/tails.py)."""

from __future__ import annotations

import random

import numpy as np

from backend.indicators.tails import Tails
from backend.model.bars import Bar, SeriesId

SERIES = SeriesId("test", "AAA", "1m")


def random_bar(t: int, rng: random.Random) -> Bar:
    return (t, rng.random(), rng.random(), rng.random(), rng.random(), rng.random())


def test_a_tail_always_equals_the_newest_bars_whatever_the_updates() -> None:
    rng = random.Random(12)
    tails = Tails()
    bars = [random_bar(60 * i, rng) for i in range(40)]
    for _ in range(5000):
        roll = rng.random()
        if roll < 0.6:  # the forming bar changes
            bars[-1] = random_bar(bars[-1][0], rng)
        elif roll < 0.95:  # a bar opens
            bars.append(random_bar(bars[-1][0] + 60, rng))
        else:  # history merged over the newest bars
            for i in (-3, -2, -1):
                bars[i] = random_bar(bars[i][0], rng)
        count = rng.choice([5, 30, 90])
        assert np.array_equal(tails.get(SERIES, bars, count), np.array(bars[-count:]))


def test_an_unchanged_series_is_not_copied_again() -> None:
    rng = random.Random(3)
    tails = Tails()
    bars = [random_bar(60 * i, rng) for i in range(100)]
    first = tails.get(SERIES, bars, 50)
    bars[-1] = random_bar(bars[-1][0], rng)
    second = tails.get(SERIES, bars, 50)
    assert np.shares_memory(first, second)
    assert second[-1].tolist() == list(bars[-1])


def test_an_empty_series_gives_an_empty_table_and_forgotten_series_are_dropped() -> None:
    tails = Tails()
    assert tails.get(SERIES, [], 10).shape == (0, 6)
    tails.get(SERIES, [(0, 1.0, 1.0, 1.0, 1.0, 1.0)], 10)
    assert len(tails) == 1
    tails.keep_only(lambda series: False)
    assert len(tails) == 0


def test_each_field_of_a_tail_is_contiguous_and_read_only() -> None:
    rng = random.Random(5)
    bars = [random_bar(60 * i, rng) for i in range(200)]
    table = Tails().get(SERIES, bars, 120)
    closes = table[:, 4]
    assert closes.flags.c_contiguous and np.shares_memory(np.ascontiguousarray(closes), table)
    assert closes.tolist() == [bar[4] for bar in bars[-120:]]
    assert not table.flags.writeable
