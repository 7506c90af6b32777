"""The indicator engine: bind a request to an indicator, compute its values over bars, turn
them into wire rows, and compute the live value of the forming bar from a bounded tail.

* :func:`bind` checks the indicator id, the inputs and the columns once, at the edge, and
  returns a :class:`BoundIndicator` whose ``key`` identifies one shared computation
  (indicator, inputs, dataMap).
* :func:`compute` aligns the series of a dataMap on their bar times (inner join, as Tradiny
  does), calls ``calc`` and checks what it returns.
* :func:`rows` makes one row per bar, every output key in every row, ``null`` for NaN.
* :class:`LiveComputation` computes the newest row from the last ``tail_size`` bars
  (lookback + margin + the forming bar), never from the whole history; see :class:`Memory`.
  Over one series, an indicator with a running computation (TA-Lib's) is opened on that
  tail once and then costs a constant time per update (:mod:`.incremental`).

It owns no bars and no subscriptions: the caller passes bars in (the hub's cache), and
:mod:`.live` keeps who holds what.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from backend.errors import IndicatorError
from backend.indicators.base import Calc, FloatArray, Indicator, Memory
from backend.indicators.incremental import RECENT, Incremental, Row, complete_rows
from backend.indicators.registry import Indicators
from backend.model import intervals
from backend.model.bars import FIELDS, Bar, SeriesId

logger = logging.getLogger(__name__)

TimeArray = npt.NDArray[np.int64]
Bars = Sequence[Bar] | FloatArray
"""Bars oldest first: tuples, or a table with one row per bar (:mod:`.tails`)."""
Fetch = Callable[[SeriesId, int | None], Bars]
"""``fetch(series, n)``: the last ``n`` cached bars of ``series`` (all of them for None)."""

WINDOW_MARGIN = 2
# Exponential smoothing forgets at (1 - alpha) per bar: 30 lookbacks leave < 1e-10 of the
# start (EMA(20): 0.905**600; Wilder's RSI(14): (13/14)**450).
DECAYING_LOOKBACKS = 30
DECAYING_MIN_TAIL = 300
_FIELD_INDEX = {name: index + 1 for index, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Binding:
    """One ``dataMap`` entry: the column ``calc`` sees, read from ``field`` of ``series``."""

    column: str
    series: SeriesId
    field: str


@dataclass(frozen=True)
class BoundIndicator:
    """An indicator with checked inputs and columns bound to series."""

    indicator_id: str
    inputs: tuple[tuple[str, float], ...]
    bindings: tuple[Binding, ...]
    indicator: Indicator = field(compare=False, hash=False)
    lookback: int = field(compare=False, hash=False, default=0)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, float], ...], tuple[Binding, ...]]:
        """What makes two requests one computation: id, inputs and dataMap."""
        return (self.indicator_id, self.inputs, self.bindings)

    @functools.cached_property
    def series(self) -> tuple[SeriesId, ...]:
        return tuple(dict.fromkeys(binding.series for binding in self.bindings))

    @functools.cached_property
    def memory(self) -> Memory:
        """How far back its values depend on the bars, with these inputs."""
        return self.indicator.memory_for(dict(self.inputs))

    def tail_size(self) -> int | None:
        """Bars per series that the live value needs; ``None``: the whole history."""
        memory = self.memory
        if memory is Memory.FULL:
            return None
        if memory is Memory.DECAYING:
            margin = max(DECAYING_LOOKBACKS * (self.lookback + 1), DECAYING_MIN_TAIL)
            return self.lookback + margin + 1
        return self.lookback + WINDOW_MARGIN + 1

    def warmup_size(self) -> int | None:
        """Bars before a history reply's first row that give its rows their values over the
        whole series; ``None``: the whole history. A running total (``ADDITIVE``) has no
        bounded warm-up: summed from a page's own first bars, each page of a chart would
        start a new total, and the line would jump where two pages meet. (Live, a short
        tail shifted onto a known value suffices: :class:`LiveComputation`.)"""
        if self.memory is Memory.ADDITIVE:
            return None
        return self.tail_size()


@dataclass
class Computed:
    """Values of every output at every aligned bar time."""

    times: TimeArray
    values: list[FloatArray]


def bind(
    indicators: Indicators,
    indicator_id: str,
    raw_inputs: Mapping[str, object],
    bindings: Sequence[Binding],
) -> BoundIndicator:
    """Check everything a request names; raises :class:`IndicatorError` with its code."""
    indicator = indicators.get(indicator_id)
    inputs = indicator.read_inputs(raw_inputs)
    by_column = {binding.column: binding for binding in bindings}
    missing = [column for column in indicator.columns if column not in by_column]
    if missing:
        raise IndicatorError(
            "missing_columns",
            f"{indicator.name}: dataMap has no {', '.join(repr(c) for c in missing)}",
        )
    used = tuple(by_column[column] for column in indicator.columns)
    lookback = indicator.lookback(inputs)
    return BoundIndicator(indicator_id, tuple(inputs.items()), used, indicator, lookback)


def align(
    bound: BoundIndicator, bars: Mapping[SeriesId, Bars]
) -> tuple[TimeArray, dict[str, FloatArray]]:
    """The bar times common to every series, and each column's values at those times."""
    if len(bound.series) == 1 and not isinstance(one := bars.get(bound.series[0], ()), np.ndarray):
        return _columns(bound, one)
    tables = {series: _table(bars.get(series, ())) for series in bound.series}
    times = None
    for table in tables.values():
        column = table[:, 0].astype(np.int64)
        times = column if times is None else np.intersect1d(times, column)
    assert times is not None  # a bound indicator has at least one column
    data: dict[str, FloatArray] = {}
    for binding in bound.bindings:
        table = tables[binding.series]
        rows = np.searchsorted(table[:, 0], times) if len(tables) > 1 else slice(None)
        data[binding.column] = np.ascontiguousarray(table[rows, _FIELD_INDEX[binding.field]])
    return times, data


def _columns(bound: BoundIndicator, bars: Sequence[Bar]) -> tuple[TimeArray, dict[str, FloatArray]]:
    """:func:`align` over one series of bar tuples: only the fields it reads, each read
    straight into its array (a tenth of the cost of a table of every field)."""
    n = len(bars)
    times = np.fromiter(map(itemgetter(0), bars), np.int64, n)
    data = {
        binding.column: np.fromiter(
            map(itemgetter(_FIELD_INDEX[binding.field]), bars), np.float64, n
        )
        for binding in bound.bindings
    }
    return times, data


def compute(bound: BoundIndicator, bars: Mapping[SeriesId, Bars]) -> Computed:
    """Every output of ``bound`` over ``bars``; NaN during warm-up and at a bar that lacks a
    field it reads (:func:`over_complete_bars`)."""
    times, data = align(bound, bars)
    calc = Indicator.prepare(bound.indicator, dict(bound.inputs))
    return Computed(times, over_complete_bars(bound, calc, data, len(times)))


def over_complete_bars(
    bound: BoundIndicator, calc: Calc, data: Mapping[str, FloatArray], n: int
) -> list[FloatArray]:
    """``calc`` over the bars of ``data`` (``n`` of them) that have every column it reads,
    its outputs NaN at the others. A bar lacks a field when it has none (``None``, read as
    NaN: a volume a CSV row leaves empty, an index's volume): TA-Lib would carry the NaN
    into every later value (a running sum, a smoothing), so one such bar would end the
    line there, while a live value from a shorter tail without it went on."""
    keep = complete_rows(data.values())
    if keep is None:
        return _checked_outputs(bound, _run(bound, calc, data), n)
    kept = int(np.count_nonzero(keep))
    outputs = len(bound.indicator.outputs)
    values = [np.full(n, np.nan) for _ in range(outputs)]
    if kept:
        part = {
            column: np.ascontiguousarray(column_values[keep])
            for column, column_values in data.items()
        }
        for whole, computed in zip(
            values, _checked_outputs(bound, _run(bound, calc, part), kept), strict=True
        ):
            whole[keep] = computed
    return values


def _run(bound: BoundIndicator, calc: Calc, data: Mapping[str, FloatArray]) -> Sequence[FloatArray]:
    try:
        return calc(data)
    except IndicatorError:
        raise
    except Exception as exc:  # a user's calc: report it to the client, keep serving
        logger.exception("indicator %s failed", bound.indicator_id)
        raise IndicatorError("indicator_failed", f"{bound.indicator.name}: {exc}") from exc


def compute_history(bound: BoundIndicator, bars: Mapping[SeriesId, Sequence[Bar]]) -> Computed:
    """:func:`compute` for ``indicator_init``: no bars or too few is an error."""
    computed = compute(bound, bars)
    if len(computed.times) == 0:
        names = ", ".join(str(series) for series in bound.series)
        if len(bound.series) > 1 and all(bars.get(series) for series in bound.series):
            raise IndicatorError(
                "no_data", f"{bound.indicator.name}: {names} have no bar date in common"
            )
        raise IndicatorError("no_data", f"{bound.indicator.name}: no bars cached for {names}")
    if len(computed.times) <= bound.lookback:
        raise IndicatorError(
            "not_enough_history",
            f"{bound.indicator.name} needs more than {bound.lookback} bars; "
            f"{len(computed.times)} available",
        )
    return computed


def output_keys(bound: BoundIndicator, chart_id: str) -> list[str]:
    """``<chart id>-<output name>`` per output (spec section 2.3)."""
    return [f"{chart_id}-{output.name}" for output in bound.indicator.outputs]


def rows(
    computed: Computed,
    keys: Sequence[str],
    since: int | None = None,
    count: int | None = None,
    until: int | None = None,
) -> list[dict[str, object]]:
    """Wire rows from ``since`` (a bar time) to ``until`` (inclusive; None: the end), else
    the last ``count`` rows up to ``until``; with both, the last ``count`` rows of those
    from ``since``."""
    n = len(computed.times)
    stop = n if until is None else int(np.searchsorted(computed.times, until, side="right"))
    start = max(0, stop - count) if count is not None else 0
    if since is not None:
        start = max(start, int(np.searchsorted(computed.times, since)))
    start = min(start, stop)
    out: list[dict[str, object]] = [
        {"date": intervals.format_date(t)} for t in computed.times[start:stop].tolist()
    ]
    for key, values in zip(keys, computed.values, strict=True):  # a column at a time
        for row, value in zip(out, _nullable(values[start:stop]), strict=True):
            row[key] = value
    return out


def last_dates(bars: Mapping[SeriesId, Sequence[Bar]]) -> dict[str, str]:
    """``{"<source>-<name>-<interval>": last bar date}`` (spec section 2.3)."""
    return {
        f"{s.source}-{s.name}-{s.interval}": intervals.format_date(series_bars[-1][0])
        for s, series_bars in bars.items()
        if series_bars
    }


class LiveComputation:
    """The newest row of one shared computation, recomputed from a bounded tail.

    ``WINDOW`` and ``DECAYING`` indicators are computed over :meth:`BoundIndicator.tail_size`
    bars. An ``ADDITIVE`` one (OBV, AD, ...) is computed over a short tail and shifted so that
    its value at an already closed bar equals the one known from before (the anchor).
    ``FULL`` indicators (VWAP, SAR, ...) have no bounded tail and are recomputed in full.
    Over one series, an indicator that has a running computation (every TA-Lib function
    but the running totals) is opened on that tail (all the bars for ``FULL``) instead and
    then peeked and fed a bar at a time (:meth:`advance`): its values are those of the batch
    computation over the bars since it opened, bit for bit.
    """

    def __init__(self, bound: BoundIndicator, seed: Computed | None = None) -> None:
        self.bound = bound
        self._anchor: tuple[int, FloatArray] | None = None
        self._size = bound.tail_size()
        # One series and no anchor to keep: the newest row straight from the tail's columns.
        self._direct: SeriesId | None = None
        if len(bound.series) == 1 and bound.indicator.memory is not Memory.ADDITIVE:
            self._direct = bound.series[0]
        self._columns = tuple((b.column, _FIELD_INDEX[b.field]) for b in bound.bindings)
        self._calc = bound.indicator.prepare(dict(bound.inputs))
        self._incremental: Incremental | None = None
        if self._direct is not None:
            opener = bound.indicator.incremental(dict(bound.inputs))
            if opener is not None:
                fields = [_FIELD_INDEX[binding.field] for binding in bound.bindings]
                outputs = len(bound.indicator.outputs)
                self._incremental = Incremental(opener, fields, outputs, self._size)
        if seed is not None:
            self._remember(seed, offset=None)

    def reset(self) -> None:
        """Forget the anchor (the series was reloaded): the next step computes in full."""
        self._anchor = None
        self.resync()

    def resync(self) -> None:
        """Closed bars changed (not only a bar appended): a running computation opens again
        from the tail at the next update."""
        if self._incremental is not None:
            self._incremental.reset()

    @property
    def running(self) -> SeriesId | None:
        """The series, when the newest rows come from a running computation over it
        (:meth:`advance`)."""
        return self._direct if self._incremental is not None else None

    @property
    def opening(self) -> tuple[bool, int | None]:
        """Whether the next :meth:`advance` opens its running computation, and on how many
        bars (``None``: all of them)."""
        incremental = self._incremental
        if incremental is None or incremental.opened:
            return False, 0
        return True, incremental.size

    def advance(
        self, recent: Bars, fetch: Fetch, since: int | None = None, tail: Bars | None = None
    ) -> list[Row]:
        """The newest rows of :attr:`running` from its running computation, given its newest
        bars (at least :data:`~.incremental.RECENT`; to open it, a ``tail`` as long as
        :attr:`opening` says, or it fetches one): the newest bar's, and first the row of
        the bar before it if that closed since the last update and ``since`` (the first bar
        time of the updates) is not after it. The batch way over the tail when the running
        computation cannot give them (see :meth:`.Incremental.advance`)."""
        if self._incremental is None or self._direct is None:
            raise IndicatorError("indicator_failed", "no running computation")
        rows = self._incremental.advance(recent, fetch, self._direct, since, tail)
        return self.batch_rows(fetch) if rows is None else rows

    @property
    def incremental(self) -> Incremental | None:
        """The running computation, if there is one (:meth:`advance` calls it; the hub's
        updates call it directly, then :meth:`batch_rows` when it returns ``None``)."""
        return self._incremental

    def batch_rows(self, fetch: Fetch) -> list[Row]:
        """The newest row over one series the batch way, from the tail."""
        assert self._direct is not None
        newest = self._step_direct(fetch, self._direct)
        return [] if newest is None else [newest]

    @property
    def tail(self) -> tuple[SeriesId, int] | None:
        """``(series, bars)`` when the newest row needs only the last ``bars`` of one series
        (no anchor, no alignment): then :meth:`newest` computes it from a shared tail."""
        if self._direct is None or self._size is None or self._incremental is not None:
            return None
        return self._direct, self._size

    def newest(self, columns: Columns) -> list[float | None]:
        """The output values at the last bar of ``columns`` (a tail of this computation's
        series, at least as long as its own): the values of :func:`compute`, bit for bit."""
        n = len(columns) if self._size is None else min(self._size, len(columns))
        data = {column: columns.field(index)[-n:] for column, index in self._columns}
        values = over_complete_bars(self.bound, self._calc, data, n)
        newest: list[float | None] = []
        for output in values:
            value = float(output[-1])
            newest.append(value if math.isfinite(value) else None)
        return newest

    def step(self, fetch: Fetch) -> tuple[int, list[float | None]] | None:
        """The time and output values of the newest aligned bar; ``None`` without bars."""
        if self._direct is not None:
            if self._incremental is not None:
                opens, size = self.opening
                recent = fetch(self._direct, size if opens else RECENT)
                rows = self.advance(recent, fetch, tail=recent if opens else None)
                return rows[-1] if rows else None
            return self._step_direct(fetch, self._direct)
        additive = self.bound.indicator.memory is Memory.ADDITIVE
        size = self.bound.tail_size() if not additive or self._anchor else None
        computed = compute(self.bound, {s: fetch(s, size) for s in self.bound.series})
        if len(computed.times) == 0:
            return None
        if additive:
            computed = self._shifted(computed, fetch)
        last = [float(values[-1]) for values in computed.values]
        return int(computed.times[-1]), [v if np.isfinite(v) else None for v in last]

    def _step_direct(self, fetch: Fetch, series: SeriesId) -> tuple[int, list[float | None]] | None:
        """:meth:`step` over one series: the calc prepared once, no alignment, and only the
        newest value of each output read."""
        columns = Columns(fetch(series, self._size))
        if len(columns) == 0:
            return None
        return columns.time, self.newest(columns)

    def _shifted(self, computed: Computed, fetch: Fetch) -> Computed:
        offset = self._offset(computed)
        if offset is None and self._anchor is not None:  # the anchor left the tail: go full
            self._anchor = None
            computed = compute(self.bound, {s: fetch(s, None) for s in self.bound.series})
        self._remember(computed, offset)
        if offset is not None:
            computed.values = [v + o for v, o in zip(computed.values, offset, strict=True)]
        return computed

    def _offset(self, computed: Computed) -> FloatArray | None:
        if self._anchor is None:
            return None
        anchor_time, anchor_values = self._anchor
        index = int(np.searchsorted(computed.times, anchor_time))
        if index >= len(computed.times) - 1 or computed.times[index] != anchor_time:
            return None
        here = np.array([values[index] for values in computed.values])
        return np.asarray(anchor_values - here, dtype=np.float64)

    def _remember(self, computed: Computed, offset: FloatArray | None) -> None:
        """Anchor at the newest closed bar (the one before the forming bar)."""
        if len(computed.times) < 2:
            return
        values = np.array([values[-2] for values in computed.values], dtype=np.float64)
        if offset is not None:
            values = values + offset
        if np.all(np.isfinite(values)):
            self._anchor = (int(computed.times[-2]), values)


class Columns:
    """The fields of one series' tail as contiguous arrays, each made once however many
    computations read it (a view when the tail is a table of :mod:`.tails`)."""

    __slots__ = ("_made", "_table")

    def __init__(self, bars: Bars) -> None:
        self._table = _table(bars)
        self._made: dict[int, FloatArray] = {}

    def __len__(self) -> int:
        return len(self._table)

    @property
    def time(self) -> int:
        """The open time of the last bar."""
        return int(self._table[-1, 0])

    def before_last(self) -> Columns:
        """The same tail without its last bar."""
        return Columns(self._table[:-1])

    def field(self, index: int) -> FloatArray:
        """Column ``index`` of ``(t, o, h, l, c, v)``."""
        column = self._made.get(index)
        if column is None:
            column = self._made[index] = np.ascontiguousarray(self._table[:, index])
        return column


def _table(bars: Bars) -> FloatArray:
    if len(bars) == 0:
        return np.empty((0, 6), dtype=np.float64)
    if isinstance(bars, np.ndarray):
        return bars  # already a table (the hub's incremental tails)
    return np.array(bars, dtype=np.float64)


def _nullable(values: FloatArray) -> list[float | None]:
    column: list[float | None] = values.tolist()
    for index in np.flatnonzero(~np.isfinite(values)).tolist():
        column[index] = None
    return column


def _checked_outputs(bound: BoundIndicator, values: object, n: int) -> list[FloatArray]:
    """``values`` (what a ``calc`` returned) as one float array of ``n`` per output; else
    ``indicator_failed`` saying what came instead (a user's calc may return anything: a
    flat list, ``None``, strings)."""
    expected = len(bound.indicator.outputs)
    arrays: list[FloatArray] = []
    problem = ""
    if not isinstance(values, list | tuple | np.ndarray) or len(values) != expected:
        got = len(values) if isinstance(values, list | tuple | np.ndarray) else None
        problem = f"{type(values).__name__}" + ("" if got is None else f" of {got} items")
    else:
        for value in values:
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                problem = f"an output of {type(value).__name__} that is not numbers"
                break
            if array.ndim != 1 or len(array) != n:
                problem = f"an output of shape {array.shape}"
                break
            arrays.append(array)
    if problem:
        raise IndicatorError(
            "indicator_failed",
            f"{bound.indicator.name}: calc must return {expected} arrays of {n} numbers; "
            f"it returned {problem}",
        )
    return arrays
