"""``LiveBars`` merging a REST seed with streamed seconds, without threads or sockets.

REST is a table of true per-second bars that it knows up to a movable horizon (a REST that
trails the feed, or one that is ahead of it); worker jobs run when the test says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backend.data_providers.polygon.bars import fold_bars
from backend.data_providers.polygon.live import MAX_RECHECKS, RECHECK_SECONDS, LiveBars
from backend.data_providers.polygon.wire import LiveAgg
from backend.errors import AuthFailed, ProviderUnavailable
from backend.model.bars import Bar

MINUTE = 1_773_158_280  # a minute's open time (2026-03-10 15:58 UTC)


def second(t: int) -> Bar:
    """The true aggregate of second ``t``: prices wander, volume varies."""
    base = 100 + (t * 7919 % 13) / 10
    return (t, base, base + 0.3, base - 0.2, base + 0.1, float(1 + t % 5))


def truth(first: int, last: int) -> Bar | None:
    """The true 1m bar of ``first``'s minute from its seconds up to ``last``."""
    start = first - first % 60
    return fold_bars(start, [second(t) for t in range(start, last + 1)])


class Rest:
    """REST aggregates of the true seconds before ``horizon``."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon

    def __call__(
        self, ticker: str, multiplier: int, timespan: str, start: int, end: int
    ) -> list[Bar]:
        assert multiplier == 1 and timespan in ("second", "minute"), (multiplier, timespan)
        known = [second(t) for t in range(start, min(end + 1, self.horizon))]
        if timespan == "second":
            return known
        minutes = sorted({bar[0] - bar[0] % 60 for bar in known})
        return [b for m in minutes if (b := fold_bars(m, [x for x in known if m <= x[0] < m + 60]))]


class Jobs:
    """An executor that queues jobs until ``run`` (jobs are submitted under the lock)."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.queued.append((fn, args))

    def run(self) -> int:
        jobs, self.queued = self.queued, []
        for fn, args in jobs:
            fn(*args)
        return len(jobs)


class Recorder:
    def __init__(self) -> None:
        self.bars: dict[int, tuple[Bar, bool]] = {}  # open time -> last (bar, final)

    def publish_bar(self, ticker: str, interval: str, bar: Bar, final: bool) -> None:
        self.bars[bar[0]] = (bar, final)

    def notify(self, symbol: str, interval: str, code: str, message: str) -> None:
        raise AssertionError(f"unexpected notice {code}: {message}")

    def watch(self, ticker: str) -> None:
        pass

    def unwatch(self, ticker: str) -> None:
        pass


class Setup:
    def __init__(self, horizon: int) -> None:
        self.rest, self.jobs, self.sink = Rest(horizon), Jobs(), Recorder()
        self.now = 0.0
        self.live = LiveBars(
            self.rest,
            self.sink,
            self.sink,
            self.jobs,  # type: ignore[arg-type]
            wall=lambda: MINUTE + 60.0,
            clock=lambda: self.now,
        )
        self.live.add("AAPL", "1m")

    def stream(self, first: int, last: int) -> None:
        self.live.on_aggregates(LiveAgg("AAPL", second(t)) for t in range(first, last + 1))

    def bar(self, t: int) -> Bar:
        return self.sink.bars[t][0]


def test_seconds_streamed_after_rest_already_had_them_are_not_counted_twice() -> None:
    setup = Setup(horizon=MINUTE + 15)  # REST is ahead of the stream
    setup.stream(MINUTE + 10, MINUTE + 10)
    assert setup.jobs.run() == 1
    assert setup.bar(MINUTE) == truth(MINUTE, MINUTE + 13)  # REST's last second (14) is
    setup.stream(MINUTE + 11, MINUTE + 59)  # the stream's: 11..13 arrive again, 14.. anew
    setup.stream(MINUTE + 60, MINUTE + 60)
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)
    assert setup.jobs.run() == 0  # nothing to recheck


def test_while_rest_trails_the_stream_the_bar_is_provisional_then_rest_s_own() -> None:
    setup = Setup(horizon=MINUTE + 5)  # REST knows nothing after second 4 yet
    setup.stream(MINUTE + 10, MINUTE + 12)
    setup.jobs.run()
    provisional = fold_bars(
        MINUTE, [second(t) for t in (*range(MINUTE, MINUTE + 5), *range(MINUTE + 10, MINUTE + 13))]
    )
    assert setup.bar(MINUTE) == provisional  # seconds 5..9 are in neither yet
    setup.stream(MINUTE + 13, MINUTE + 13)
    assert setup.jobs.run() == 0  # not before RECHECK_SECONDS
    setup.rest.horizon = MINUTE + 30  # REST catches up
    setup.now += RECHECK_SECONDS
    setup.stream(MINUTE + 14, MINUTE + 14)
    setup.stream(MINUTE + 15, MINUTE + 20)  # streamed while the seed is in flight
    assert setup.jobs.run() == 1
    assert setup.bar(MINUTE) == truth(MINUTE, MINUTE + 28)  # REST's, but its last second
    setup.stream(MINUTE + 21, MINUTE + 60)
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)
    setup.stream(MINUTE + 61, MINUTE + 62)
    assert setup.jobs.run() == 0  # live: no more seeds


def test_a_minute_that_closes_while_rest_trails_is_republished_from_rest() -> None:
    setup = Setup(horizon=MINUTE + 50)
    setup.stream(MINUTE + 55, MINUTE + 59)
    setup.jobs.run()
    setup.stream(MINUTE + 60, MINUTE + 61)  # the provisional minute closes
    assert setup.sink.bars[MINUTE] != (truth(MINUTE, MINUTE + 59), True)
    setup.rest.horizon = MINUTE + 62
    setup.now += RECHECK_SECONDS
    setup.stream(MINUTE + 62, MINUTE + 62)
    setup.jobs.run()
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)
    assert setup.bar(MINUTE + 60) == truth(MINUTE + 60, MINUTE + 62)


def test_a_rest_that_never_catches_up_is_given_up_on_after_the_last_recheck() -> None:
    setup = Setup(horizon=MINUTE + 5)
    setup.stream(MINUTE + 10, MINUTE + 10)
    runs = setup.jobs.run()
    for t in range(MINUTE + 11, MINUTE + 11 + 2 * MAX_RECHECKS):
        setup.now += RECHECK_SECONDS
        setup.stream(t, t)
        runs += setup.jobs.run()
    assert runs == MAX_RECHECKS + 1


class NoSeconds(Rest):
    """A REST server that refuses the ``second`` timespan (an emulator or relay)."""

    def __call__(
        self, ticker: str, multiplier: int, timespan: str, start: int, end: int
    ) -> list[Bar]:
        if timespan == "second":
            raise ProviderUnavailable("polygon: 1 second aggregates of AAPL: invalid timespan")
        return super().__call__(ticker, multiplier, timespan, start, end)


def test_a_rest_without_second_aggregates_still_gives_live_bars() -> None:
    """The seed is the minutes REST has; the stream's seconds fold on top from the first
    one; the key trails, then goes live after its rechecks: live bars, never a seed that
    fails forever."""
    setup = Setup(horizon=MINUTE + 60 + 40)
    setup.rest = setup.live._fetch = NoSeconds(setup.rest.horizon)  # type: ignore[assignment]
    setup.stream(MINUTE + 70, MINUTE + 72)
    assert setup.jobs.run() == 1
    minute = MINUTE + 60
    assert setup.bar(minute) == fold_bars(
        minute, [second(t) for t in range(minute + 10, minute + 13)]
    )
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)  # a closed minute
    runs = 0
    for t in range(minute + 13, minute + 13 + 2 * MAX_RECHECKS):
        setup.now += RECHECK_SECONDS
        setup.stream(t, t)
        runs += setup.jobs.run()
    assert runs == MAX_RECHECKS
    last = minute + 12 + 2 * MAX_RECHECKS
    assert setup.bar(last - last % 60)[4] == second(last)[4]  # live: the newest second shows


def test_a_frame_with_seconds_out_of_order_or_repeated_folds_each_second_once_in_order() -> None:
    """One frame (a JSON array) may carry a ticker's seconds out of order, or a second twice
    (Polygon batches several seconds per frame): the bar is still the true one, with the
    close of its last second and every second's volume counted once."""
    setup = Setup(horizon=MINUTE + 15)
    setup.stream(MINUTE + 10, MINUTE + 10)
    setup.jobs.run()
    setup.stream(MINUTE + 11, MINUTE + 27)
    frame = [second(t) for t in (MINUTE + 30, MINUTE + 29, MINUTE + 30, MINUTE + 28)]
    setup.live.on_aggregates(LiveAgg("AAPL", bar) for bar in frame)
    setup.stream(MINUTE + 31, MINUTE + 58)
    frame = [second(t) for t in (MINUTE + 60, MINUTE + 59, MINUTE + 59)]
    setup.live.on_aggregates(LiveAgg("AAPL", bar) for bar in frame)
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)
    assert setup.bar(MINUTE + 60) == truth(MINUTE + 60, MINUTE + 60)


def test_a_second_arriving_a_frame_after_a_newer_one_is_folded_in_at_its_place() -> None:
    """Seconds that come a frame late (after a newer second of their ticker) belong to the
    bar still forming, or to the one that just closed: each bar is the true one, with the
    open of its first second, the close of its last and every second's volume once; a late
    second sent again, or one before the REST seed, is not counted."""
    setup = Setup(horizon=MINUTE + 15)
    setup.stream(MINUTE + 10, MINUTE + 10)
    setup.jobs.run()
    setup.stream(MINUTE + 11, MINUTE + 20)
    for late, newer in ((MINUTE + 22, MINUTE + 23), (MINUTE + 21, MINUTE + 24)):
        setup.live.on_aggregates([LiveAgg("AAPL", second(newer))])
        setup.live.on_aggregates([LiveAgg("AAPL", second(late))])  # a frame late
    assert setup.bar(MINUTE) == truth(MINUTE, MINUTE + 24)
    setup.live.on_aggregates([LiveAgg("AAPL", second(MINUTE + 22))])  # sent again
    setup.live.on_aggregates([LiveAgg("AAPL", second(MINUTE + 12))])  # REST had it (seed)
    setup.live.on_aggregates([LiveAgg("AAPL", second(MINUTE + 5))])
    assert setup.bar(MINUTE) == truth(MINUTE, MINUTE + 24)
    setup.stream(MINUTE + 25, MINUTE + 58)
    setup.stream(MINUTE + 60, MINUTE + 61)  # the minute closes without its last second
    setup.live.on_aggregates([LiveAgg("AAPL", second(MINUTE + 59))])  # which comes late
    assert setup.sink.bars[MINUTE] == (truth(MINUTE, MINUTE + 59), True)
    setup.stream(MINUTE + 63, MINUTE + 64)
    setup.live.on_aggregates([LiveAgg("AAPL", second(MINUTE + 62))])
    assert setup.bar(MINUTE + 60) == truth(MINUTE + 60, MINUTE + 64)
    first = MINUTE + 120  # a bar whose first streamed second comes late: its open
    setup.stream(first + 1, first + 1)
    setup.live.on_aggregates([LiveAgg("AAPL", second(first))])
    setup.stream(first + 2, first + 2)
    assert setup.bar(first) == truth(first, first + 2)


class Refusing(Rest):
    """REST that refuses (``error``) until ``error`` is None."""

    def __init__(self, horizon: int) -> None:
        super().__init__(horizon)
        self.error: Exception | None = AuthFailed(
            "polygon: 1 second aggregates of AAPL: You are not entitled to this data"
        )

    def __call__(
        self, ticker: str, multiplier: int, timespan: str, start: int, end: int
    ) -> list[Bar]:
        if self.error is not None:
            raise self.error
        return super().__call__(ticker, multiplier, timespan, start, end)


class Noting(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.notices: list[str] = []

    def notify(self, symbol: str, interval: str, code: str, message: str) -> None:
        self.notices.append(code)


def test_seeds_refused_again_and_again_tell_clients_once_a_run_not_at_every_retry() -> None:
    """A plan without the market's aggregates refuses every seed (403 NOT_AUTHORIZED): the
    key retries (2 s doubling to 60 s) but its clients hear the refusal once, not once a
    minute for as long as they watch; a different error, or one after a recovery, is told."""
    rest, jobs, sink, now = Refusing(MINUTE + 15), Jobs(), Noting(), [0.0]
    live = LiveBars(
        rest,
        sink,
        sink,
        jobs,  # type: ignore[arg-type]
        wall=lambda: MINUTE + 60.0,
        clock=lambda: now[0],
    )
    live.add("AAPL", "1m")
    t = MINUTE + 10
    for _ in range(6):
        live.on_aggregates([LiveAgg("AAPL", second(t))])
        assert jobs.run() == 1
        now[0], t = now[0] + 61, t + 1
    assert sink.notices == ["auth_failed"]
    rest.error = ProviderUnavailable("polygon: 1 second aggregates of AAPL: upstream unreachable")
    live.on_aggregates([LiveAgg("AAPL", second(t))])
    jobs.run()
    assert sink.notices == ["auth_failed", "provider_unavailable"]
    rest.error = None
    now[0], t = now[0] + 61, t + 1
    live.on_aggregates([LiveAgg("AAPL", second(t))])
    jobs.run()
    assert sink.bars  # seeded: the run of failures is over
    rest.error = AuthFailed("polygon: refused again")
    live.on_reconnected("stocks")
    jobs.run()
    now[0], t = now[0] + 61, t + 1
    live.on_aggregates([LiveAgg("AAPL", second(t))])
    jobs.run()
    assert sink.notices == ["auth_failed", "provider_unavailable", "auth_failed"]
