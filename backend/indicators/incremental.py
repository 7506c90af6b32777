"""The live value of an indicator over one series in constant time, from an exact running
computation (:meth:`~.base.Indicator.incremental`; TA-Lib's streaming handles).

:class:`Incremental` opens the running computation on the closed bars of a tail (the
indicator's bounded tail, or every cached bar when no bounded tail exists), peeks at the
forming bar on each update, and feeds each bar that closes, once. It reads only the newest
bars on an update: it checks that the closed bar it fed last is still the one before the
bar that formed then (the same object, or equal), and otherwise opens again from the tail,
as it does after :meth:`Incremental.reset` (the owner's call when older closed bars change).
The values are those of the batch computation over the same bars, bit for bit: the bars
since the opening tail, with the forming bar last. :func:`peek_all` does the usual update
(every computation over a series only peeks at the forming bar) of many in one loop;
:meth:`Incremental.peek_json` does it for one, its values encoded as they come.

Sans-I/O: the caller passes the newest bars in, and a callable for the tail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from backend.errors import IndicatorError
from backend.indicators.base import FloatArray, Open, Running
from backend.model.bars import Bar, SeriesId

isfinite = math.isfinite
dumps = orjson.dumps  # NaN and infinities as null, as the rows' None

RECENT = 3
"""Newest bars an update reads: the forming bar, the one that may have closed since, and the
one fed before it (to check it is still there)."""

Row = tuple[int, list[float | None]]
"""A bar time and the value of every output there (``None``: not a finite number)."""
Recent = Sequence[Bar] | FloatArray
Fetch = Callable[[SeriesId, int | None], Recent]
"""``fetch(series, n)``: the last ``n`` cached bars of ``series`` (all of them for None)."""


class Incremental:
    """One live computation kept by a running computation; see the module docstring."""

    __slots__ = (
        "_failed_at",
        "_fed",
        "_fields",
        "_floats",
        "_forming",
        "_handle",
        "_one_column",
        "_one_output",
        "_open",
        "_outputs",
        "_pick",
        "_size",
    )

    def __init__(self, open_running: Open, fields: Sequence[int], outputs: int, size: int | None):
        self._open = open_running
        self._fields = tuple(fields)  # the bar fields of the indicator's columns, in order
        self._pick = itemgetter(*self._fields)  # a bare value for one field, else a tuple
        self._one_column = len(self._fields) == 1
        self._one_output = outputs == 1
        self._outputs = outputs
        self._size = size  # bars to open on, the forming one included; None: all of them
        self._handle: Running | None = None
        self._fed: Bar | None = None  # the last closed bar the handle holds
        self._forming = 0  # the time of the bar after it
        self._failed_at: int | None = None  # forming bar time of the last failed opening
        # whether the handle's values are Python floats (a float, or a tuple of floats for
        # several outputs), which :meth:`peek_json` encodes as they come; None: not seen yet
        self._floats: bool | None = None

    def reset(self) -> None:
        """Open again at the next update (closed bars changed)."""
        self._handle = None

    @property
    def opened(self) -> bool:
        return self._handle is not None

    @property
    def size(self) -> int | None:
        """The bars it opens on, the forming one included (``None``: every cached bar)."""
        return self._size

    def advance(
        self,
        recent: Recent,
        fetch: Fetch,
        series: SeriesId,
        since: int | None = None,
        tail: Recent | None = None,
    ) -> list[Row] | None:
        """The row of the newest bar of ``recent`` (at least the :data:`RECENT` newest bars)
        and, first, that of the bar before it when it closed since the last update and
        ``since`` (the first bar time of the updates) is not after it. To open, it reads
        ``tail`` (at least :attr:`size` bars; all of them for None) when given, else
        ``fetch(series, size)``. ``None`` when no running computation can give the rows now
        (too little history, a bar that is not a finite number): the caller computes the
        batch way."""
        handle = self._handle
        if handle is not None and type(recent) is list and len(recent) > 1:
            newest = recent[-1]  # the usual update: the forming bar changed, nothing else
            fed = self._fed
            if (
                newest[0] == self._forming
                and recent[-2] is fed
                and (since is None or since > fed[0])
            ):
                picked = self._pick(newest)
                try:
                    out = handle.peek(picked) if self._one_column else handle.peek(*picked)
                except Exception:  # noqa: BLE001 - TA-Lib's bare Exception: the batch way
                    return None
                if self._one_output:
                    value = float(out)
                    return [(self._forming, [value if isfinite(value) else None])]
                return [(self._forming, [float(v) if isfinite(v) else None for v in out])]
        bars = _bars(recent)
        if not bars:
            return []
        newest = bars[-1]
        time = int(newest[0])
        if handle is not None:
            handle = self._catch_up(handle, bars, time)
        if handle is None:
            if tail is None:
                tail = fetch(series, self._size) if self._failed_at != time else ()
            handle = self._reopen(tail, bars, time, lambda n: fetch(series, n))
            if handle is None:
                return None
        return self._rows(handle, newest, since)

    def peek_json(self, newest: Bar, fed: Bar) -> bytes | None:
        """The usual update (:func:`peek_all`) alone, its values encoded: when it is open,
        ``newest`` is its forming bar and ``fed`` (the bar before it) the bar it fed last (the
        same object), the values at ``newest`` as JSON, a number or, for several outputs, an
        array (not finite: ``null``), the bytes that encoding the row's values gives; else
        ``None`` (so also for a handle whose values are not all Python floats, as TA-Lib's
        integer outputs): the caller computes the usual way."""
        handle = self._handle
        if handle is None or self._forming != newest[0] or self._fed is not fed:
            return None
        picked = self._pick(newest)
        try:
            out = handle.peek(picked) if self._one_column else handle.peek(*picked)
            floats = self._floats
            if floats is None:
                floats = self._floats = _all_floats(out, self._one_output)
            return dumps(out) if floats else None
        except Exception:  # noqa: BLE001 - TA-Lib's bare Exception for a bar that is not
            return None  # finite, or a value orjson does not take: the usual way says which

    def _rows(self, handle: Running, newest: Bar, since: int | None) -> list[Row] | None:
        picked = self._pick(newest)
        try:
            out = handle.peek(picked) if self._one_column else handle.peek(*picked)
        except Exception:  # noqa: BLE001 - TA-Lib's bare Exception for a bar that is not
            return None  # finite: the batch way gives its NaN
        row = (self._forming, self._values(out))
        fed = self._fed
        assert fed is not None  # open
        if since is None or since > fed[0]:
            return [row]
        if all(isinstance(value, float) and isfinite(value) for value in self._columns(fed)):
            return [(int(fed[0]), self._values(handle.value)), row]
        return [(int(fed[0]), [None] * self._outputs), row]  # left out: not fed (_reopen)

    def _catch_up(self, handle: Running, bars: list[Bar], time: int) -> Running | None:
        """Feed the bar that closed since the last update, if one did; ``None`` when what
        was fed is no longer there."""
        if time == self._forming:
            if len(bars) < 2 or not _same(bars[-2], self._fed):
                return None
            self._fed = bars[-2]  # an equal bar: this object is checked faster next time
            return handle
        if (
            len(bars) < RECENT
            or int(bars[-2][0]) != self._forming
            or not _same(bars[-3], self._fed)
        ):
            return None
        closing = bars[-2]
        try:
            handle.update(*self._columns(closing))
        except Exception:  # noqa: BLE001 - TA-Lib's bare Exception for a bar that is not
            return None  # finite: open again from the tail
        self._fed, self._forming = closing, time
        return handle

    def _reopen(
        self, tail: Recent, bars: list[Bar], time: int, longer: Callable[[int], Recent]
    ) -> Running | None:
        self._handle = None
        if self._failed_at == time:  # too little history for this bar already
            return None
        table, columns = self._opening(tail, longer)
        if len(table) < 2 or int(table[-1, 0]) != time:
            return None
        history = table[:-1]
        try:
            handle = self._open(columns)
        except IndicatorError:
            self._failed_at = time
            return None
        last = history[-1]
        fed = bars[-2] if len(bars) > 1 and int(bars[-2][0]) == int(last[0]) else None
        self._handle, self._failed_at, self._floats = handle, None, None
        self._fed = fed if fed is not None else tuple(last.tolist())
        self._forming = time
        return handle

    def _opening(
        self, tail: Recent, longer: Callable[[int], Recent]
    ) -> tuple[FloatArray, list[FloatArray]]:
        """The bars to open on (:attr:`size` of ``tail``, the forming one last) and the
        columns of those closed that have every field it reads: a bar without one is left
        out, as the batch way leaves it out, and one bar more is read in its place (from
        ``tail``, else ``longer(n)``: the last ``n`` bars), as long as there are more."""
        size = n = self._size
        while True:
            table = _table(tail if n is None else tail[-n:])
            history = table[:-1]
            columns = [history[:, i] for i in self._fields]
            complete = complete_rows(columns)
            if complete is None:
                return table, columns
            columns = [column[complete] for column in columns]
            if size is None or n is None or len(columns[0]) >= size - 1 or len(table) < n:
                return table, columns  # enough, or no bars before these
            n = size + len(history) - len(columns[0])  # a bar more for each left out
            if len(tail) < n:
                tail = longer(n)

    def _columns(self, bar: Bar) -> tuple[Any, ...]:
        picked = self._pick(bar)
        return (picked,) if self._one_column else picked

    def _values(self, out: Any) -> list[float | None]:
        if self._one_output:
            value = float(out)
            return [value if math.isfinite(value) else None]
        return [float(v) if math.isfinite(v) else None for v in out]


def peek_all(running: Sequence[Incremental], recent: Recent, since: int | None) -> list[Row] | None:
    """The usual update of every computation of ``running`` (all over the series whose
    newest bars are ``recent``) in one loop: the row of the forming bar of each, in order,
    when each is open, its forming bar is the newest of ``recent`` and the bar it fed last
    is the one before (the same object), and no bar closed since ``since``; ``None`` (no
    row given) when any of them needs more: then :meth:`Incremental.advance` each. The rows
    are those of :meth:`Incremental.advance`, value for value."""
    if type(recent) is not list or len(recent) < 2:
        return None
    newest = recent[-1]
    fed = recent[-2]
    time = newest[0]
    if since is not None and since <= fed[0]:
        return None
    rows: list[Row] = []
    append = rows.append
    try:
        for one in running:
            handle = one._handle
            if handle is None or one._forming != time or one._fed is not fed:
                return None
            picked = one._pick(newest)
            out = handle.peek(picked) if one._one_column else handle.peek(*picked)
            if one._one_output:
                value = float(out)
                append((one._forming, [value if isfinite(value) else None]))
            else:
                append((one._forming, [float(v) if isfinite(v) else None for v in out]))
    except Exception:  # noqa: BLE001 - TA-Lib's bare Exception for a bar that is not finite:
        return None  # each computation its own way (advance)
    return rows


def _all_floats(out: Any, one_output: bool) -> bool:
    """Whether ``out``, what a handle's ``peek`` gave, is a float (one output) or a tuple of
    floats: what :meth:`Incremental.peek_json` may encode as it comes (an ``int`` would be
    ``1`` there and ``1.0`` in a row)."""
    if one_output:
        return type(out) is float
    return type(out) is tuple and all(type(value) is float for value in out)


def complete_rows(columns: Iterable[FloatArray]) -> npt.NDArray[np.bool_] | None:
    """The rows where every column is a number (a bar's field it lacks is NaN in a column);
    ``None`` when every row is (the usual)."""
    keep: npt.NDArray[np.bool_] | None = None
    for column in columns:
        finite = np.isfinite(column)
        if not finite.all():
            keep = finite if keep is None else keep & finite
    return keep


def _same(bar: Bar, fed: Bar | None) -> bool:
    return bar is fed or bar == fed


def _bars(recent: Recent) -> list[Bar]:
    if isinstance(recent, np.ndarray):
        return [tuple(row) for row in recent[-RECENT:].tolist()]
    return recent if isinstance(recent, list) else list(recent)


def _table(bars: Recent) -> FloatArray:
    if isinstance(bars, np.ndarray):
        return bars
    if len(bars) == 0:
        return np.empty((0, 6), dtype=np.float64)
    return np.array(bars, dtype=np.float64)
