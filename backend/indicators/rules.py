"""Scanner and alert rules (spec sections 3.2, 3.4, 4.1): parsed into typed objects and
evaluated without ``eval``.

A rule compares two operands: ``data`` (a field of a series), ``indicator`` (an output of an
indicator from the request's ``indicators`` map) or ``value`` (a number), with ``<``, ``>``,
``near`` (``|v2 - v1| / |v1| * 100 < near``) or a cross (``crosses_above``,
``crosses_below``, ``crosses``: the previous bar was on the other side, or level). Rules are
combined with the literal operators ``and`` / ``or``, ``and`` binding first (Python's
precedence, as Tradiny), and nothing else: any other operator, comparator, type or shape is a
:class:`~backend.errors.RuleError`. Values are looked up by the caller, so the same rules
serve the scanner (bars from the store) and alerts (live bars).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backend.errors import IndicatorError, RuleError
from backend.indicators.config import IndicatorConfig, parse_indicator_config
from backend.model import intervals
from backend.model.bars import FIELDS, SeriesId

MAX_RULES = 50
MAX_INDICATORS = 20
MAX_TEXT = 200
OPERATORS = ("and", "or")
COMPARATORS = {
    "<": "<",
    ">": ">",
    "near": "near",
    "crosses": "crosses",
    "crosses_above": "crosses_above",
    "crosses above": "crosses_above",
    "crosses_below": "crosses_below",
    "crosses below": "crosses_below",
}


@dataclass(frozen=True)
class DataOperand:
    series: SeriesId
    field: str

    @property
    def label(self) -> str:
        return self.field


@dataclass(frozen=True)
class IndicatorOperand:
    config: IndicatorConfig
    output: str
    label: str


@dataclass(frozen=True)
class ValueOperand:
    value: float


Operand = DataOperand | IndicatorOperand | ValueOperand
Pair = tuple[float | None, float | None]
"""(previous bar's value, newest bar's value); None when unknown."""


@dataclass(frozen=True)
class Rule:
    left: Operand
    comparator: str
    right: Operand
    near: float = 0.0


@dataclass(frozen=True)
class RuleSet:
    """Rules and the operators between them; ``and`` binds before ``or``."""

    rules: tuple[Rule, ...]
    operators: tuple[str, ...]

    def operands(self) -> list[Operand]:
        return [operand for rule in self.rules for operand in (rule.left, rule.right)]

    def series(self) -> tuple[SeriesId, ...]:
        """The series the rules read (indicators: their ``dataMap``), in order, once each."""
        keys: list[SeriesId] = []
        for operand in self.operands():
            if isinstance(operand, DataOperand):
                keys.append(operand.series)
            elif isinstance(operand, IndicatorOperand):
                keys.extend(binding.series for binding in operand.config.bindings)
        return tuple(dict.fromkeys(keys))

    def symbols(self) -> list[tuple[str, str]]:
        """The (source, name) of every series the rules read, each once, in order."""
        return list(dict.fromkeys((key.source, key.name) for key in self.series()))

    def rebound(self, old: tuple[str, str], new: tuple[str, str]) -> RuleSet:
        """The same rules over ``new`` (source, name) wherever they read ``old``."""
        return replace(self, rules=tuple(_rebound_rule(rule, old, new) for rule in self.rules))


@dataclass(frozen=True)
class Verdict:
    matched: bool
    values: dict[str, float]  # data_values: label -> newest value
    missing: bool  # some operand had no value


def parse_rule_set(rules: object, operators: object, indicators: object) -> RuleSet:
    """Read ``rules``, ``operators`` and ``indicators`` of an ``alert`` or ``scan``."""
    if not isinstance(rules, list) or not 1 <= len(rules) <= MAX_RULES:
        raise RuleError("bad_rule", f"'rules' must be a list of 1 to {MAX_RULES} rules")
    ops = [] if operators is None else operators
    if not isinstance(ops, list) or len(ops) != len(rules) - 1:
        raise RuleError("bad_rule", "'operators' must hold one 'and'/'or' between each rule")
    if indicators is None:
        indicators = {}
    if not isinstance(indicators, dict) or len(indicators) > MAX_INDICATORS:
        raise RuleError("bad_rule", "'indicators' must be an object of indicator configs")
    parsed = tuple(_rule(index, rule, indicators) for index, rule in enumerate(rules))
    return RuleSet(parsed, tuple(_operator(op) for op in ops))


def evaluate(rule_set: RuleSet, lookup: Callable[[Operand], Pair]) -> Verdict:
    """Evaluate every rule with the values ``lookup`` gives; an unknown value is false."""
    values: dict[str, float] = {}
    results: list[bool] = []
    missing = False
    for rule in rule_set.rules:
        left, right = lookup(rule.left), lookup(rule.right)
        for operand, pair in ((rule.left, left), (rule.right, right)):
            if not isinstance(operand, ValueOperand) and pair[1] is not None:
                values[operand.label] = pair[1]
        outcome = _compare(rule, left, right)
        missing = missing or outcome is None
        results.append(bool(outcome))
    return Verdict(_combine(results, rule_set.operators), values, missing)


def value_pair(operand: ValueOperand) -> Pair:
    return (operand.value, operand.value)


def _combine(results: Sequence[bool], operators: Sequence[str]) -> bool:
    groups: list[bool] = [results[0]]
    for operator, result in zip(operators, results[1:], strict=True):
        if operator == "and":
            groups[-1] = groups[-1] and result
        else:
            groups.append(result)
    return any(groups)


def _compare(rule: Rule, left: Pair, right: Pair) -> bool | None:
    (l0, l1), (r0, r1) = left, right
    if l1 is None or r1 is None:
        return None
    match rule.comparator:
        case "<":
            return l1 < r1
        case ">":
            return l1 > r1
        case "near":
            percent = 0.0 if l1 in (r1, 0.0) else abs(r1 - l1) / abs(l1) * 100.0
            return percent < rule.near
    if l0 is None or r0 is None:
        return None
    above = l0 <= r0 and l1 > r1
    below = l0 >= r0 and l1 < r1
    return {"crosses_above": above, "crosses_below": below}.get(rule.comparator, above or below)


def _operator(op: object) -> str:
    if isinstance(op, str) and op.strip().lower() in OPERATORS:
        return op.strip().lower()
    raise RuleError("bad_rule", f"unknown operator {str(op)[:MAX_TEXT]!r}; known: and, or")


def _rule(index: int, rule: object, indicators: Mapping[Any, Any]) -> Rule:
    if not isinstance(rule, dict):
        raise RuleError("bad_rule", f"rule {index + 1} must be an object")
    raw = rule.get("comparator")
    comparator = COMPARATORS.get(raw) if isinstance(raw, str) else None
    if comparator is None:
        raise RuleError(
            "bad_rule",
            f"rule {index + 1}: unknown comparator {str(rule.get('comparator'))[:MAX_TEXT]!r}; "
            f"known: {', '.join(sorted(set(COMPARATORS.values())))}",
        )
    near = _number(rule.get("near"), f"rule {index + 1} 'near'") if comparator == "near" else 0.0
    left = _operand(index, rule, 1, indicators)
    right = _operand(index, rule, 2, indicators)
    return Rule(left, comparator, right, abs(near))


def _operand(index: int, rule: Mapping[str, Any], n: int, indicators: Mapping[Any, Any]) -> Operand:
    kind = rule.get(f"type{n}")
    where = f"rule {index + 1} operand {n}"
    if kind == "value":
        return ValueOperand(_number(rule.get(f"value{n}"), f"{where} 'value{n}'"))
    if kind == "data":
        return _data_operand(rule, n, where)
    if kind == "indicator":
        return _indicator_operand(rule, n, where, indicators)
    raise RuleError("bad_rule", f"{where}: 'type{n}' must be data, indicator or value")


def _data_operand(rule: Mapping[str, Any], n: int, where: str) -> DataOperand:
    source, name, interval, key = (
        _text(rule.get(f"{field}{n}"), f"{where} '{field}{n}'")
        for field in ("source", "name", "interval", "key")
    )
    if not intervals.is_interval(interval):
        raise RuleError("bad_rule", f"{where}: unknown interval {interval!r}")
    if key not in FIELDS:
        raise RuleError("bad_rule", f"{where}: key {key!r} is not one of {', '.join(FIELDS)}")
    return DataOperand(SeriesId(source, name, interval), key)


def _indicator_operand(
    rule: Mapping[str, Any], n: int, where: str, indicators: Mapping[Any, Any]
) -> IndicatorOperand:
    label = _text(rule.get(f"indicator{n}"), f"{where} 'indicator{n}'")
    output = _text(rule.get(f"output{n}"), f"{where} 'output{n}'")
    entry = indicators.get(label)
    if not isinstance(entry, dict) or not isinstance(entry.get("indicator"), dict):
        raise RuleError("bad_rule", f"{where}: no indicator {label!r} in 'indicators'")
    try:
        config = parse_indicator_config(entry["indicator"])
    except IndicatorError as exc:
        raise RuleError("bad_rule", f"{where}: {exc.message}") from exc
    name = entry["indicator"]["indicator"].get("name")
    inputs = ", ".join(f"{k}={v}" for k, v in config.inputs.items())
    shown = f"{name if isinstance(name, str) else config.indicator_id} {output} {inputs}"
    return IndicatorOperand(config, output, shown.strip()[:MAX_TEXT])


def _rebound_rule(rule: Rule, old: tuple[str, str], new: tuple[str, str]) -> Rule:
    return replace(rule, left=_rebound(rule.left, old, new), right=_rebound(rule.right, old, new))


def _rebound(operand: Operand, old: tuple[str, str], new: tuple[str, str]) -> Operand:
    if isinstance(operand, DataOperand) and operand.series[:2] == old:
        return replace(operand, series=SeriesId(*new, operand.series.interval))
    if isinstance(operand, IndicatorOperand):
        return replace(operand, config=operand.config.rebound(old, new))
    return operand


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise RuleError("bad_rule", f"{what} must be a non-empty string")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = math.nan
        if math.isfinite(number):
            return number
    raise RuleError("bad_rule", f"{what} must be a number, not {str(value)[:MAX_TEXT]!r}")
