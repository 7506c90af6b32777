"""A scan: evaluate a rule set over every symbol of a universe (spec section 4).

:func:`run_scan` rebinds the rules from the template symbol to each symbol (structurally, by
(source, name), never by substring), fetches the bars each rule needs through the caller's
``fetch`` (the hub reads its cache and store and goes through the provider's normal budget
for the rest), computes the indicators, evaluates, and emits ``scan_progress`` before each
symbol, ``scan_result`` per match, a final ``scan_progress`` ("Done: 3 of 412 matched") and
``scan_done``. At most ``per_scan`` symbols run at once, and each holds the server-wide
``limit`` semaphore while it runs. A symbol that fails (no data, provider error, timeout) is
skipped, never the whole scan. A symbol whose bars were refused for the rate (the client's
fair share of the provider's history budget, or the upstream's own limit) is tried again
after the time the refusal names, outside the semaphore, for up to ``ScanLimits.rate_wait``
seconds: a universe larger than one budget window is scanned at the rate the budget allows,
not mostly skipped. Setting ``stop`` cancels the symbols in flight at once, waits included,
and sends the final messages without waiting for them to end (a wait may not end at its
cancel); nothing of the scan is sent after its ``scan_done``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backend.errors import CandlewireError, IndicatorError, RateLimited, RuleError
from backend.indicators import messages
from backend.indicators.engine import BoundIndicator, bind, compute
from backend.indicators.registry import Indicators
from backend.indicators.rules import (
    DataOperand,
    IndicatorOperand,
    Operand,
    Pair,
    RuleSet,
    ValueOperand,
    evaluate,
)
from backend.model.bars import FIELDS, Bar, SeriesId

logger = logging.getLogger(__name__)

AsyncFetch = Callable[[SeriesId, int], Awaitable[Sequence[Bar]]]
"""``fetch(series, n)``: the last ``n`` bars of ``series`` (fewer if there are not)."""
Emit = Callable[[dict[str, Any]], None]
FULL_HISTORY_BARS = 1000  # for indicators without a bounded warm-up (VWAP, SAR, OBV, ...)
MAX_RULE_BARS = 10_000  # bars a rule reads per series at most (the hub passes its MAX_COUNT)
_FIELD_INDEX = {name: index + 1 for index, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Symbol:
    """A symbol of the universe and its ``search_data_done`` row (sent in ``scan_result``)."""

    source: str
    name: str
    row: Mapping[str, Any]


@dataclass
class ScanOutcome:
    total: int
    scanned: int = 0
    matched: int = 0
    stopped: bool = False
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScanLimits:
    per_scan: int = 4
    symbol_timeout: float = 10.0
    max_symbols: int = 5000
    max_bars: int = MAX_RULE_BARS  # per series and symbol (:func:`bind_rules`)
    rate_wait: float = 60.0  # seconds one symbol may wait in all for rate-limited bars


async def run_scan(
    rules: RuleSet,
    template: tuple[str, str] | None,
    symbols: Sequence[Symbol],
    fetch: AsyncFetch,
    indicators: Indicators,
    emit: Emit,
    stop: asyncio.Event,
    limit: asyncio.Semaphore,
    limits: ScanLimits = ScanLimits(),
) -> ScanOutcome:
    """Scan ``symbols``; always ends with the final ``scan_progress`` and ``scan_done``."""
    universe = list(symbols[: limits.max_symbols])
    outcome = ScanOutcome(total=len(universe))
    queue = iter(enumerate(universe, start=1))
    width = len(str(len(universe)))
    ended = False  # the final messages went out: the workers' later ones are dropped

    def send(message: dict[str, Any]) -> None:
        if not ended:
            emit(message)

    async def worker() -> None:
        for index, symbol in queue:
            if stop.is_set():
                return
            send(messages.scan_progress(f"Scanning {index:0{width}d}/{len(universe)}"))
            waited = 0.0
            while True:
                async with limit:
                    wait = await _scan_symbol(
                        rules,
                        template,
                        symbol,
                        fetch,
                        indicators,
                        send,
                        outcome,
                        limits,
                        limits.rate_wait - waited,
                    )
                if wait is None:
                    break
                await asyncio.sleep(wait)  # holds no slot: other symbols and scans go on
                waited += wait

    workers = [
        asyncio.create_task(worker()) for _ in range(max(1, min(limits.per_scan, len(universe))))
    ]
    stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    everyone: asyncio.Future[Any] = asyncio.gather(*workers)
    try:
        await asyncio.wait([stopper, everyone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        outcome.stopped = stop.is_set()
        for task in (*workers, stopper):
            task.cancel()
        # Now, not once the workers ended: a wait that drops its cancel (Python 3.11's
        # wait_for did, in the provider's history call) held scan_done for HISTORY_TIMEOUT.
        # The workers are still waited for: a client's next scan starts after them.
        _finish(emit, outcome)
        ended = True
        reported = replace(outcome, skipped=list(outcome.skipped))
        await asyncio.gather(*workers, stopper, return_exceptions=True)
    failure = _failure(everyone)
    if failure is not None:
        raise failure  # a bug, not a symbol's failure: the task that owns the scan logs it
    return reported


def _failure(everyone: asyncio.Future[Any]) -> BaseException | None:
    if not everyone.done() or everyone.cancelled():
        return None
    error = everyone.exception()
    return None if isinstance(error, asyncio.CancelledError) else error


def _finish(emit: Emit, outcome: ScanOutcome) -> None:
    verb = "Stopped" if outcome.stopped else "Done"
    emit(messages.scan_progress(f"{verb}: {outcome.matched} of {outcome.total} matched"))
    emit(messages.scan_done(outcome.scanned, outcome.matched, outcome.total, outcome.stopped))


async def _scan_symbol(
    rules: RuleSet,
    template: tuple[str, str] | None,
    symbol: Symbol,
    fetch: AsyncFetch,
    indicators: Indicators,
    emit: Emit,
    outcome: ScanOutcome,
    limits: ScanLimits,
    may_wait: float = 0.0,
) -> float | None:
    """Evaluate ``symbol`` (or skip it); the seconds to wait before trying it again when its
    bars were refused for the rate and the refusal's wait fits in ``may_wait``, else None."""
    bound = rules.rebound(template, (symbol.source, symbol.name)) if template else rules
    try:
        async with asyncio.timeout(limits.symbol_timeout):
            values = await symbol_values(bound, fetch, indicators, limits.max_bars)
    except RateLimited as exc:
        if exc.retry_after is not None and 0 <= exc.retry_after <= may_wait:
            return max(exc.retry_after, 0.05)
        logger.debug("scan: skipped %s:%s: %s", symbol.source, symbol.name, exc)
        outcome.skipped.append(f"{symbol.source}:{symbol.name}")
        return None
    except (CandlewireError, TimeoutError) as exc:
        logger.debug("scan: skipped %s:%s: %s", symbol.source, symbol.name, exc)
        outcome.skipped.append(f"{symbol.source}:{symbol.name}")
        return None
    outcome.scanned += 1
    verdict = evaluate(bound, lambda operand: values.get(id(operand), (None, None)))
    if verdict.matched:
        outcome.matched += 1
        emit(messages.scan_result(symbol.row, verdict.values))
    return None


async def symbol_values(
    rules: RuleSet, fetch: AsyncFetch, indicators: Indicators, max_bars: int = MAX_RULE_BARS
) -> dict[int, Pair]:
    """(previous, newest) value of every operand of ``rules`` (by ``id(operand)``: operands
    hold client dicts and are not hashable), from one fetch per series of at most
    ``max_bars`` bars."""
    bound = bind_rules(rules, indicators, max_bars)
    needed = _bars_needed(rules.operands(), bound, max_bars)
    bars = {series: await fetch(series, count) for series, count in needed.items()}
    values: dict[int, Pair] = {}
    for operand in rules.operands():
        if isinstance(operand, ValueOperand):
            values[id(operand)] = (operand.value, operand.value)
        elif isinstance(operand, DataOperand):
            values[id(operand)] = _last_two(bars[operand.series], _FIELD_INDEX[operand.field])
        else:
            values[id(operand)] = _indicator_pair(operand, bound[id(operand)], bars)
    return values


def bind_rules(
    rules: RuleSet, indicators: Indicators, max_bars: int = MAX_RULE_BARS
) -> dict[int, BoundIndicator]:
    """Every indicator ``rules`` read, bound (by ``id(operand)``); ``IndicatorError`` for an
    unknown one, bad inputs, or one whose warm-up and previous value need more than
    ``max_bars`` bars (as ``indicator`` refuses one that needs more than it loads: a rule
    must not make every update, or every symbol of a scan, load and compute a long
    history). ``RuleError`` ``bad_rule`` for an output the indicator does not have: such a
    rule has no value for any symbol or update, so a scan of it would match nothing and an
    alert on it never fire, without a word."""
    bound: dict[int, BoundIndicator] = {}
    for operand in rules.operands():
        if not isinstance(operand, IndicatorOperand):
            continue
        config = operand.config
        one = bind(indicators, config.indicator_id, config.inputs, config.bindings)
        names = [output.name for output in one.indicator.outputs]
        if operand.output not in names:
            raise RuleError(
                "bad_rule",
                f"{one.indicator.name} has no output {operand.output[:100]!r}; "
                f"outputs: {', '.join(names)}",
            )
        if one.lookback + 2 > max_bars:  # the newest value and the one before (crosses)
            raise IndicatorError(
                "not_enough_history",
                f"{one.indicator.name} needs more than {one.lookback + 1} bars; "
                f"a rule reads at most {max_bars}",
            )
        bound[id(operand)] = one
    return bound


def _bars_needed(
    operands: Sequence[Operand], bound: Mapping[int, BoundIndicator], max_bars: int
) -> dict[SeriesId, int]:
    needed: dict[SeriesId, int] = {}
    for operand in operands:
        if isinstance(operand, DataOperand):
            needed[operand.series] = max(needed.get(operand.series, 0), 2)
        elif isinstance(operand, IndicatorOperand):
            indicator = bound[id(operand)]
            # a running total's level (OBV, AD) is summed over what is read: as much as a
            # path-dependent one's (its short live tail would give a level of its own); and
            # past the lookback (KAMA's period may be longer), or it never has a value
            full = max(FULL_HISTORY_BARS, indicator.lookback + 1)
            count = (indicator.warmup_size() or full) + 1  # + the previous bar
            count = min(count, max_bars)
            for series in indicator.series:
                needed[series] = max(needed.get(series, 0), count)
    return needed


def _last_two(bars: Sequence[Bar], index: int) -> Pair:
    newest = bars[-1][index] if bars else None
    previous = bars[-2][index] if len(bars) > 1 else None
    return previous, newest


def _indicator_pair(
    operand: IndicatorOperand, indicator: BoundIndicator, bars: Mapping[SeriesId, Sequence[Bar]]
) -> Pair:
    names = [output.name for output in indicator.indicator.outputs]
    if operand.output not in names:
        return (None, None)
    computed = compute(indicator, {series: bars[series] for series in indicator.series})
    column = computed.values[names.index(operand.output)]
    finite = [float(v) if math.isfinite(v) else None for v in column[-2:]]
    padded = [None, None, *finite][-2:]
    return padded[0], padded[1]
