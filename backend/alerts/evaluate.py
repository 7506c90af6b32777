"""Evaluation semantics of spec 3.4: edge trigger with re-arm, on every forming-bar update.

:class:`LatestBars` keeps the newest two bars of each series an alert reads (the previous
bar serves the ``crosses`` comparators). :func:`step` evaluates an alert's rules on them:
true while armed fires and disarms; false while disarmed re-arms. A rule whose values have
not arrived yet is false and never re-arms (nothing is known).
"""

from __future__ import annotations

import enum

from backend.alerts.model import Alert
from backend.indicators.rules import (
    DataOperand,
    Operand,
    Pair,
    ValueOperand,
    Verdict,
    evaluate,
)
from backend.model.bars import FIELDS, Bar, SeriesId


class Step(enum.Enum):
    NONE = "none"
    FIRED = "fired"
    REARMED = "rearmed"


class LatestBars:
    """The newest and the previous bar of each series, from the live updates."""

    def __init__(self) -> None:
        self._bars: dict[SeriesId, tuple[Bar | None, Bar]] = {}

    def update(self, key: SeriesId, bar: Bar) -> bool:
        """Take a bar; False when it is older than the newest (a correction, ignored)."""
        known = self._bars.get(key)
        if known is None:
            self._bars[key] = (None, bar)
        elif bar[0] > known[1][0]:
            self._bars[key] = (known[1], bar)
        elif bar[0] == known[1][0]:
            self._bars[key] = (known[0], bar)
        else:
            return False
        return True

    def forget(self, key: SeriesId) -> None:
        self._bars.pop(key, None)

    def newest(self, key: SeriesId) -> Bar | None:
        known = self._bars.get(key)
        return None if known is None else known[1]

    def lookup(self, operand: Operand) -> Pair:
        if isinstance(operand, ValueOperand):
            return (operand.value, operand.value)
        if not isinstance(operand, DataOperand):
            return (None, None)
        known = self._bars.get(operand.series)
        if known is None:
            return (None, None)
        column = FIELDS.index(operand.field) + 1
        previous, newest = known
        return (_number(previous, column), _number(newest, column))


def step(alert: Alert, bars: LatestBars) -> Step:
    """Evaluate ``alert`` on ``bars`` and move its armed state (spec 3.4 steps 4 to 6)."""
    return advance(alert, evaluate(alert.rule_set, bars.lookup))


def advance(alert: Alert, verdict: Verdict) -> Step:
    """Move ``alert``'s armed state by one evaluation's ``verdict``."""
    if verdict.matched and alert.armed:
        alert.armed = False
        alert.fired += 1
        return Step.FIRED
    if not verdict.matched and not alert.armed and not verdict.missing:
        alert.armed = True
        return Step.REARMED
    return Step.NONE


def _number(bar: Bar | None, column: int) -> float | None:
    if bar is None:
        return None
    value = bar[column]
    return None if value is None else float(value)
