"""The indicator base class: what an indicator declares (name, categories, columns, inputs,
outputs) and how it computes (``calc``), for the TA-Lib built-ins and user-written ones alike.

It owns input validation (type and range of every input) and the lookback that sizes the
live tail. It does not own the data: the engine (:mod:`.engine`) aligns the bars and calls
``calc``; the catalogue (:mod:`.catalogue`) turns the declaration into a search row.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from backend.errors import IndicatorError

FloatArray = npt.NDArray[np.float64]
Calc = Callable[[Mapping[str, FloatArray]], Sequence[FloatArray]]
"""``calc`` with its inputs bound: columns in, one array per output out."""


class Running(Protocol):
    """An exact running computation of one indicator over one series (see
    :meth:`Indicator.incremental`): the values of the newest bar it was fed, and what the
    values would be with one more bar. Each call takes the bar's columns in the order of
    :attr:`Indicator.columns` and gives one value per output (a bare number for one
    output, a tuple for several), bit for bit what ``calc`` gives at that bar."""

    @property
    def value(self) -> Any:
        """The values at the last bar fed (or opened on)."""

    def update(self, *columns: float) -> Any:
        """Feed one closed bar; returns its values."""

    def peek(self, *columns: float) -> Any:
        """The values a next bar with these columns would have; commits nothing."""


Open = Callable[[Sequence[FloatArray]], Running]
"""Opens a :class:`Running` computation on closed bars (one array per column, oldest first);
raises :class:`~backend.errors.IndicatorError` (``not_enough_history``) when too few."""


class Memory(enum.Enum):
    """How far back a value depends on the bars, which decides the live tail (see engine)."""

    WINDOW = "window"  # only the last `lookback` bars: a short tail is exact
    DECAYING = "decaying"  # exponential smoothing: a long tail agrees to ~1e-10
    ADDITIVE = "additive"  # a running total: a tail shifted onto a known value is exact
    FULL = "full"  # every bar since the first (VWAP, SAR, ...): no bounded tail exists


@dataclass(frozen=True)
class Input:
    """One numeric input: its default and the inclusive range a client may ask for.

    ``choices`` are option labels when the input is an index (the ``mamode`` select).
    """

    name: str
    default: float
    min: float
    max: float
    integer: bool = True
    choices: tuple[str, ...] = ()

    def read(self, raw: object) -> float:
        """The value of ``raw`` (a number or a numeric string from the form), checked."""
        value = _number(raw)
        if value is None:
            raise IndicatorError("bad_input", f"input {self.name!r}: {raw!r} is not a number")
        if self.integer:
            if value != int(value):
                raise IndicatorError("bad_input", f"input {self.name!r}: {raw!r} is not an integer")
            value = float(int(value))
        if not self.min <= value <= self.max:
            raise IndicatorError(
                "bad_input",
                f"input {self.name!r}: {raw!r} is out of range [{self.min:g}, {self.max:g}]",
            )
        return value


@dataclass(frozen=True)
class Output:
    """One output line; ``y_axis`` groups outputs onto axes (``"price"`` overlays the bars)."""

    name: str
    y_axis: str


class Indicator:
    """Subclass this to write your own indicator (see README, "Write your own indicator").

    Declare the class attributes and implement :meth:`calc`. ``columns`` are the bar fields
    (or, with a ``dataMap`` over several series, the roles) ``calc`` receives, in order;
    ``inputs`` are the numbers it takes; ``outputs`` the arrays it returns, in order.
    Override :meth:`lookback` when the default (the largest integer input, minus one) is not
    the number of bars consumed before the first value, and set ``memory`` to
    :attr:`Memory.DECAYING` for exponential smoothing.
    """

    name: str = ""
    categories: Sequence[str] = ()
    columns: Sequence[str] = ("close",)
    inputs: Sequence[Input] = ()
    outputs: Sequence[Output] = ()
    memory: Memory = Memory.WINDOW

    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        """One array per output, each as long as the inputs; NaN during warm-up."""
        raise NotImplementedError

    def prepare(self, inputs: Mapping[str, float]) -> Calc:
        """:meth:`calc` with ``inputs`` (already read by :meth:`read_inputs`) bound, for the
        live path, which computes the same inputs on every update; an override may do once
        here what ``calc`` would do on every call."""
        bound = dict(inputs)

        def calc(data: Mapping[str, FloatArray]) -> Sequence[FloatArray]:
            return self.calc(data, **bound)

        return calc

    def incremental(self, inputs: Mapping[str, float]) -> Open | None:
        """Optional: how to open an exact running computation with these ``inputs``, which
        the live path then feeds one closed bar at a time and asks for the forming bar's
        values in constant time (TA-Lib's functions have one). ``None`` (the default): the
        live path recomputes ``calc`` over a bounded tail on every update."""
        return None

    def memory_for(self, inputs: Mapping[str, float]) -> Memory:
        """:attr:`memory` with these inputs (an override may find a window where some
        inputs, e.g. an exponential moving average type, would smooth exponentially)."""
        return self.memory

    def lookback(self, inputs: Mapping[str, float]) -> int:
        """Bars consumed before the first value (TA-Lib's ``lookback``)."""
        periods = [int(inputs[spec.name]) for spec in self.inputs if spec.integer]
        return max(0, max(periods, default=1) - 1)

    def read_inputs(self, raw: Mapping[str, object]) -> dict[str, float]:
        """Every declared input, from ``raw`` or its default; unknown names are an error."""
        known = {spec.name for spec in self.inputs}
        unknown = sorted(str(name) for name in raw if name not in known)
        if unknown:
            raise IndicatorError(
                "bad_input",
                f"{self.name}: unknown input {unknown[0]!r}; known: {', '.join(sorted(known))}",
            )
        return {
            spec.name: spec.read(raw[spec.name]) if spec.name in raw else spec.default
            for spec in self.inputs
        }


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None
