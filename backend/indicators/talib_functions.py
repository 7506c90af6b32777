"""The built-in indicators: one :class:`TalibIndicator` per TA-Lib function, generated from
TA-Lib's own metadata (``talib.talib.abstract.Function(name).info``), never written by hand.

Owns the mapping from TA-Lib's metadata to our declaration: group -> category, input names
-> columns, parameters -> inputs with ranges (``matype`` -> the ``mamode`` select), output
names -> outputs (overlaps on the ``price`` axis, the rest on an axis of their own), flags
-> :class:`~.base.Memory`. TA-Lib's C code checks exact parameter ranges itself; its failures
become :class:`~backend.errors.IndicatorError`. The live path uses TA-Lib's streaming handles
(``talib.stream``, ta-lib >= 0.8: opened on history, fed one closed bar at a time, peeked for
the forming bar, bit for bit the batch values) where the installed version has them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from backend.errors import IndicatorError
from backend.indicators.base import (
    Calc,
    FloatArray,
    Indicator,
    Input,
    Memory,
    Open,
    Output,
    Running,
)
from backend.indicators.talib_loader import _ta_lib, talib

CATEGORIES = {
    "Overlap Studies": "overlap",
    "Momentum Indicators": "momentum",
    "Volume Indicators": "volume",
    "Volatility Indicators": "volatility",
    "Cycle Indicators": "cycle",
    "Pattern Recognition": "pattern",
    "Statistic Functions": "statistics",
    "Price Transform": "price transform",
    "Math Transform": "math transform",
    "Math Operators": "math operators",
}
# Their values are positions in the array passed in, which depend on how many bars happen to
# be cached: meaningless on a chart, and different for every tail.
EXCLUDED = {"MAXINDEX", "MININDEX", "MINMAXINDEX"}
PRICE_GROUPS = {"Overlap Studies", "Price Transform"}
SAME_SCALE = "Output scale same as input"
NOT_ON_PRICE = {"AVGDEV"}  # same unit as the price, but a distance, not a level
# Running totals: a tail computation differs from the full one by a constant.
ADDITIVE = {"AD", "OBV", "CUMSUM", "PVT", "WAD"}
# Path-dependent, but a tail converges: ADOSC is a difference of EMAs of AD (the offset cancels).
CONVERGENT_PATHS = {"ADOSC"}
# Made only of windows and of moving averages of a type given by inputs (``*matype``): with
# window averages (SMA, WMA, TRIMA) for all of them, a value depends on a window of bars only.
WINDOW_WITH_WINDOW_AVERAGES = {"APO", "BBANDS", "MA", "MACDEXT", "PPO", "STOCH", "STOCHF"}
WINDOW_MA_TYPES = {0, 2, 5}  # talib.MA_Type.SMA, WMA, TRIMA
# Adaptive: how fast they forget is set by the bars, not by the lookback. KAMA's slowest
# constant is (2/31)**2 whatever its period, MAMA's slow limit is its input, and the Hilbert
# transform's cycle estimate carries its own state: over a ranging market (a stablecoin at
# the tick, a bid/ask bounce) a tail of 30 lookbacks still differed from the whole series
# (MAMA by 2e-4 of the price). No bounded tail is exact for them: computed like SAR.
ADAPTIVE = {
    "KAMA", "MAMA", "HT_DCPERIOD", "HT_DCPHASE", "HT_PHASOR", "HT_SINE", "HT_TRENDLINE",
    "HT_TRENDMODE",
}  # fmt: skip
ADAPTIVE_MA_TYPES = {6, 7}  # talib.MA_Type.KAMA, MAMA
# TA-Lib's own MA_Type labels, in index order (the option value of the mamode select).
MA_TYPES: tuple[str, ...] = tuple(talib.MA_Type[index] for index in range(14))
MAMODE = "mamode"
INT_MAX = 100_000
REAL_LIMIT = 1e9
_INTEGER_TYPE = 2  # TA_OptInput_IntegerRange / IntegerList in TA-Lib's metadata
_SINGLE_OUTPUTS = {"real", "integer"}
# Raised by a streaming handle opened on fewer bars than its warm-up (ta-lib >= 0.8).
_INSUFFICIENT: type[Exception] = getattr(_ta_lib, "InsufficientHistory", IndicatorError)


class TalibIndicator(Indicator):
    """A TA-Lib function behind the :class:`~.base.Indicator` interface."""

    def __init__(self, function_name: str) -> None:
        info = talib.abstract.Function(function_name).info
        self.function_name = function_name
        self.name = f"{info['display_name']} ({function_name})"
        self.categories = (CATEGORIES.get(info["group"], info["group"].lower()),)
        self.columns = _columns(info["input_names"])
        self._talib_names = {
            _wire_name(name): name for name in info["parameters"]
        }  # wire input name -> TA-Lib parameter name
        self.inputs = tuple(
            _input(function_name, index, name) for index, name in enumerate(info["parameters"])
        )
        self.outputs = _outputs(function_name, info)
        self.memory = _memory(function_name, info["function_flags"] or [])
        self._function = cast(Callable[..., Any], getattr(talib, function_name))

    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        arrays = [data[column] for column in self.columns]
        params = {self._talib_names[name]: _typed(spec, inputs) for name, spec in self._specs()}
        try:
            result = self._function(*arrays, **params)
        except Exception as exc:  # TA-Lib raises bare Exception("... TA_BAD_PARAM")
            raise IndicatorError("bad_input", f"{self.name}: {exc}") from exc
        results = result if isinstance(result, tuple) else (result,)
        return [np.asarray(values, dtype=np.float64) for values in results]

    def prepare(self, inputs: Mapping[str, float]) -> Calc:
        """The C function itself (``__wrapped__``: without the python wrapper's pandas and
        polars checks) with the parameters typed once; what it returns, as it returns it."""
        function = getattr(self._function, "__wrapped__", self._function)
        params = {self._talib_names[name]: _typed(spec, inputs) for name, spec in self._specs()}
        columns, name = self.columns, self.name

        def calc(data: Mapping[str, FloatArray]) -> Sequence[FloatArray]:
            try:
                result = function(*[data[column] for column in columns], **params)
            except Exception as exc:  # TA-Lib raises bare Exception("... TA_BAD_PARAM")
                raise IndicatorError("bad_input", f"{name}: {exc}") from exc
            return result if isinstance(result, tuple) else (result,)

        return calc

    def incremental(self, inputs: Mapping[str, float]) -> Open | None:
        """TA-Lib's streaming handle of this function (``talib.stream.<NAME>``) with the
        parameters typed once; ``None`` when this version of TA-Lib has none."""
        handle = getattr(_ta_lib, f"{self.function_name}_Stream", None)
        if not isinstance(handle, type):
            return None
        params = {self._talib_names[name]: _typed(spec, inputs) for name, spec in self._specs()}
        name = self.name

        def open_running(columns: Sequence[FloatArray]) -> Running:
            try:
                return cast(Running, handle(*columns, **params))
            except _INSUFFICIENT as exc:
                raise IndicatorError("not_enough_history", f"{name}: {exc}") from exc
            except Exception as exc:  # TA-Lib raises bare Exception("... TA_BAD_PARAM")
                raise IndicatorError("bad_input", f"{name}: {exc}") from exc

        return open_running

    def memory_for(self, inputs: Mapping[str, float]) -> Memory:
        types = [
            int(inputs[spec.name])
            for spec in self.inputs
            if spec.name == MAMODE or spec.name.endswith("matype")
        ]
        if ADAPTIVE_MA_TYPES.intersection(types):
            return Memory.FULL
        if self.function_name in WINDOW_WITH_WINDOW_AVERAGES and all(
            kind in WINDOW_MA_TYPES for kind in types
        ):
            return Memory.WINDOW
        return self.memory

    def lookback(self, inputs: Mapping[str, float]) -> int:
        params = tuple((self._talib_names[n], _typed(s, inputs)) for n, s in self._specs())
        return _lookback(self.function_name, params)

    def _specs(self) -> list[tuple[str, Input]]:
        return [(spec.name, spec) for spec in self.inputs]


def talib_indicators() -> dict[str, TalibIndicator]:
    """Every TA-Lib function, keyed by its registry id ``talib.<category>.<NAME>``."""
    return dict(_talib_catalogue())


@functools.cache
def _talib_catalogue() -> dict[str, TalibIndicator]:
    """Built once per process (some 70 ms: a hub's start checks the registry, then builds
    the one it serves): TA-Lib's functions do not change, and an instance holds no state."""
    found: dict[str, TalibIndicator] = {}
    for function_name in talib.get_functions():
        if function_name in EXCLUDED:
            continue
        indicator = TalibIndicator(function_name)
        category = indicator.categories[0].replace(" ", "_")
        found[f"talib.{category}.{function_name}"] = indicator
    return found


@functools.lru_cache(maxsize=4096)
def _lookback(function_name: str, params: tuple[tuple[str, float | int], ...]) -> int:
    function = talib.abstract.Function(function_name)
    try:
        function.parameters = dict(params)
        lookback = int(function.lookback)
    except Exception as exc:  # TA-Lib reports a bad parameter as a bare Exception
        raise IndicatorError("bad_input", f"{function_name}: {exc}") from exc
    if lookback < 0:  # TA-Lib's answer for parameters outside its own ranges
        raise IndicatorError("bad_input", f"{function_name}: inputs {dict(params)} out of range")
    return lookback


def _typed(spec: Input, inputs: Mapping[str, float]) -> float | int:
    value = inputs[spec.name]
    return int(value) if spec.integer else float(value)


def _wire_name(talib_name: str) -> str:
    return MAMODE if talib_name == "matype" else talib_name


def _columns(input_names: Mapping[str, str | list[str]]) -> tuple[str, ...]:
    columns: list[str] = []
    for value in input_names.values():
        for column in [value] if isinstance(value, str) else value:
            name = column
            while name in columns:  # the same field twice: a second series' role
                name = f"{name}2"
            columns.append(name)
    return tuple(columns)


def _input(function_name: str, index: int, talib_name: str) -> Input:
    info = talib._ta_lib._ta_getOptInputParameterInfo(function_name.encode(), index)
    default = float(info["default_value"])
    if talib_name.endswith("matype"):
        choices = MA_TYPES if talib_name == "matype" else ()
        return Input(_wire_name(talib_name), default, 0, len(MA_TYPES) - 1, True, choices)
    if info["type"] == _INTEGER_TYPE:
        low = _smallest_period(function_name, talib_name, int(default)) if default >= 1 else None
        return Input(talib_name, default, -INT_MAX if low is None else low, INT_MAX, True)
    return Input(talib_name, default, *_real_range(function_name, talib_name, default), False)


def _smallest_period(function_name: str, talib_name: str, default: int) -> int:
    """The smallest value from 1 up that TA-Lib takes for ``talib_name`` (the other inputs
    at their defaults): 2 for most periods (RSI, SMA, ADX, ...), which TA-Lib refuses at 1.
    The catalogue's ``min`` is the range ``Input.read`` enforces, so it must not offer a
    value the function itself refuses (answered only by TA-Lib's bare "out of range")."""
    function = talib.abstract.Function(function_name)
    for value in range(1, default):
        if _takes(function, talib_name, value):
            return value
    return default


def _real_range(function_name: str, talib_name: str, default: float) -> tuple[float, float]:
    """The range TA-Lib takes for the real input ``talib_name`` (the other inputs at their
    defaults), within +-``REAL_LIMIT``: MAMA's limits 0.01 to 0.99, T3's volume factor 0 to
    1, SAR's acceleration from 0. As for periods (:func:`_smallest_period`), the catalogue
    must not offer a value TA-Lib refuses with its bare "out of range"."""
    function = talib.abstract.Function(function_name)
    return (
        _bound(function, talib_name, default, -REAL_LIMIT),
        _bound(function, talib_name, default, REAL_LIMIT),
    )


_ROUND_BOUNDS = (0.0, 0.01, 0.99, 1.0, 100.0)
_BISECTIONS = 200


def _bound(function: Any, talib_name: str, taken: float, limit: float) -> float:
    """The last value from ``taken`` (which TA-Lib takes) towards ``limit`` that it takes:
    ``limit`` itself, a round value that it takes and the next double past which it refuses
    (TA-Lib's checks compare with such constants), else the one bisection finds."""
    if _takes(function, talib_name, limit):
        return limit
    for value in _ROUND_BOUNDS:
        between = taken <= value < limit or limit < value <= taken
        past = float(np.nextafter(value, limit))
        if (
            between
            and _takes(function, talib_name, value)
            and not _takes(function, talib_name, past)
        ):
            return value
    refused = limit
    for _ in range(_BISECTIONS):  # to adjacent doubles; inside the range when cut short
        middle = (taken + refused) / 2
        if middle in (taken, refused):
            break
        if _takes(function, talib_name, middle):
            taken = middle
        else:
            refused = middle
    return taken


def _takes(function: Any, talib_name: str, value: float) -> bool:
    """Whether TA-Lib's ``function`` takes ``value`` for ``talib_name``."""
    try:
        function.parameters = {talib_name: value}
        return int(function.lookback) >= 0
    except Exception:  # noqa: BLE001 - TA-Lib raises a bare Exception for a value it refuses
        return False


def _outputs(function_name: str, info: Mapping[str, Any]) -> tuple[Output, ...]:
    flags = info["function_flags"] or []
    on_price = info["group"] in PRICE_GROUPS or (
        SAME_SCALE in flags and function_name not in NOT_ON_PRICE
    )
    axis = "price" if on_price else function_name.lower()
    names: list[str] = list(info["output_names"])
    if len(names) == 1 and names[0] in _SINGLE_OUTPUTS:
        names = [function_name]
    return tuple(Output(name, axis) for name in names)


def _memory(function_name: str, flags: Sequence[str]) -> Memory:
    # TA-Lib flags only the functions whose unstable period is configurable; MACD, TEMA,
    # TRIX, or any function with ``matype`` = EMA also smooth exponentially. So every
    # function that is not a running total or path-dependent gets the long, safe tail.
    if function_name in ADDITIVE:
        return Memory.ADDITIVE
    if function_name in ADAPTIVE:
        return Memory.FULL
    if "Output is path-dependent" in flags and function_name not in CONVERGENT_PATHS:
        return Memory.FULL
    return Memory.DECAYING
