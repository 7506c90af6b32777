"""Unit tests of the provider runtime: the runner (in-process) and the supervisor (real
spawned provider processes), without the hub or any socket."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from backend.errors import ProviderError, ProviderUnavailable, UnknownSymbol
from backend.model.intervals import format_date
from backend.runtime import supervisor as supervisor_module
from backend.runtime.messages import (
    Command,
    GetHistory,
    HistoryReply,
    Notice,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartStreaming,
    Status,
    StopStreaming,
    StreamUntil,
    WireEvent,
    decode_batch,
    encode_batch,
)
from backend.runtime.runner import (
    FENCE_LEAD,
    FENCE_SETTLE,
    FENCED_EXIT,
    ProviderRunner,
    run_provider,
)
from backend.runtime.supervisor import ProviderProcess, ProviderState, unserved
from backend.settings import Settings, load_settings
from tests.harness import eventually, seconds, until
from tests.providers_for_runtime import T0, ScriptedProvider

PATH = "tests.providers_for_runtime:ScriptedProvider"


def settings(**extra: Any) -> Settings:
    return load_settings(PROVIDERS="csv", HISTORY_THREADS=2, **extra)


# --------------------------------------------------------------------------- the runner


@dataclass
class RunnerHarness:
    """A ``ProviderRunner`` on a thread of this process, fed through a plain queue."""

    commands: queue.Queue[Command] = field(default_factory=queue.Queue)
    events: list[WireEvent] = field(default_factory=list)
    runner: ProviderRunner | None = None
    thread: threading.Thread | None = None
    code: list[int] = field(default_factory=list)
    _reader: Connection | None = None

    def start(self) -> None:
        self._reader, writer = multiprocessing.Pipe(duplex=False)
        # A runner exits its process when the hub's end of the pipe closes; here the
        # "process" is pytest, so the hub's end stays open until the session ends.
        _HUB_ENDS.append(self._reader)
        self.runner = ProviderRunner(
            "scripted",
            PATH,
            settings(),
            self.commands,  # type: ignore[arg-type]
            writer,
        )
        self.thread = threading.Thread(target=lambda: self.code.append(self.runner.run()))
        self.thread.start()

    def collect(self) -> list[WireEvent]:
        assert self._reader is not None
        while self._reader.poll():
            self.events.extend(decode_batch(self._reader.recv_bytes()))
        return self.events

    def wait_for(self, predicate: Any, what: str) -> Any:
        found: list[Any] = []

        def seen() -> bool:
            found[:] = [e for e in self.collect() if predicate(e)]
            return bool(found)

        until(seen, what=what)
        return found[0]

    @property
    def provider(self) -> ScriptedProvider:
        # The runner keeps the instance local to run(); find it through the hook thread.
        return _instance(self.runner)

    def stop(self) -> None:
        self.commands.put(Shutdown())
        assert self.thread is not None
        self.thread.join(seconds(10))


_INSTANCES: dict[int, ScriptedProvider] = {}
_HUB_ENDS: list[Connection] = []


def _instance(runner: ProviderRunner | None) -> ScriptedProvider:
    assert runner is not None
    return _INSTANCES[id(runner)]


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunnerHarness]:
    h = RunnerHarness()
    original = ScriptedProvider._attach

    def attach(self: ScriptedProvider, *args: Any) -> None:
        original(self, *args)
        _INSTANCES[id(h.runner)] = self

    monkeypatch.setattr(ScriptedProvider, "_attach", attach)
    h.start()
    h.wait_for(lambda e: isinstance(e, Ready), "Ready")
    yield h
    if h.thread is not None and h.thread.is_alive():
        h.stop()


def test_the_runner_reports_ready_with_its_pid(harness: RunnerHarness) -> None:
    ready = next(e for e in harness.collect() if isinstance(e, Ready))
    assert ready.pid == os.getpid()
    assert ready.persist is True


def test_what_exists_after_init_is_frozen_out_of_garbage_collection() -> None:
    gc.unfreeze()
    h = RunnerHarness()
    h.start()
    try:
        h.wait_for(lambda e: isinstance(e, Ready), "Ready")
        # the runner froze the objects of the imports and of init(): a full collection of
        # the provider process no longer scans them (tens of ms for an exchange client)
        assert gc.get_freeze_count() > 1000
    finally:
        h.stop()


def test_a_provider_process_stops_on_a_storm_of_sigterms() -> None:
    """A SIGTERM handler runs between two bytecodes of the main thread, maybe inside a lock
    (a second SIGTERM inside the first's handler): the runner's only takes none twice. A
    provider process whose hub was killed got SIGTERM twice and hung in ``Event.set``."""
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    commands = context.Queue()
    process = context.Process(
        target=run_provider, args=("scripted", PATH, settings(), commands, writer), daemon=True
    )
    process.start()
    writer.close()
    try:
        until(
            lambda: (
                reader.poll(0.1)
                and any(isinstance(e, Ready) for e in decode_batch(reader.recv_bytes()))
            ),
            what="Ready",
        )
        assert process.pid is not None
        for _ in range(300):
            os.kill(process.pid, signal.SIGTERM)
        process.join(seconds(20))
        assert not process.is_alive()
        # 0, or killed by a SIGTERM that came after the interpreter, exiting, gave the
        # signal back its default action: either way it ended
        assert process.exitcode in (0, -signal.SIGTERM)
    finally:
        if process.is_alive():
            process.kill()
        reader.close()


def test_a_ping_is_answered_with_a_pong(harness: RunnerHarness) -> None:
    harness.commands.put(Ping(42))
    assert harness.wait_for(lambda e: isinstance(e, Pong), "Pong").seq == 42


def test_streaming_hooks_run_in_the_order_sent_with_first_and_last_once(
    harness: RunnerHarness,
) -> None:
    for command in (
        StartStreaming(1, "AAA", "1h"),
        StartStreaming(2, "AAA", "1h"),
        StartStreaming(2, "AAA", "1h"),  # a duplicate changes nothing
        StopStreaming(1, "AAA", "1h"),
        StopStreaming(2, "AAA", "1h"),
    ):
        harness.commands.put(command)
    expected = [
        "first AAA 1h",
        "start 1 AAA 1h",
        "start 2 AAA 1h",
        "close 1 AAA 1h",
        "close 2 AAA 1h",
        "last AAA 1h",
    ]
    until(lambda: harness.provider.calls == expected, what="the hook calls in order")
    assert harness.provider.streaming_keys() == []


def test_a_failing_hook_is_logged_and_the_runner_carries_on(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.commands.put(StartStreaming(1, "BOOM", "1h"))
    harness.commands.put(StartStreaming(1, "AAA", "1h"))
    until(lambda: "start 1 AAA 1h" in harness.provider.calls, what="the next hook")
    assert "hook failed" in caplog.text
    harness.commands.put(Ping(7))
    harness.wait_for(lambda e: isinstance(e, Pong) and e.seq == 7, "a Pong after the failure")


def test_a_hook_that_does_not_return_is_reported_and_cleared_when_it_does(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A start_streaming that blocked held up every later subscription while pings went
    on: nothing said so. Past HEARTBEAT_TIMEOUT it is logged, /health's status says
    ``stuck`` and the key's clients get an error; when it returns the status is ok."""
    assert harness.runner is not None
    harness.runner.settings = settings(HEARTBEAT_TIMEOUT=1)
    harness.commands.put(StartStreaming(1, "STUCK", "1h"))
    seq = iter(range(100, 1000))

    def reported() -> bool:
        harness.commands.put(Ping(next(seq)))
        events = harness.collect()
        return any(isinstance(e, Status) and e.state == "stuck" for e in events)

    until(reported, what="the stuck hook reported")
    notice = harness.wait_for(lambda e: isinstance(e, Notice), "the clients told")
    assert (notice.symbol, notice.code) == ("STUCK", "provider_unavailable")
    assert "has not returned" in caplog.text
    harness.provider.hang.set()
    harness.wait_for(lambda e: isinstance(e, Status) and e.state == "ok", "the status cleared")


def test_a_stuck_hook_that_returns_gives_back_the_provider_s_own_last_status(
    harness: RunnerHarness,
) -> None:
    """The runner reported ``ok`` when a stuck hook returned, over the provider's own
    status: a provider banned upstream showed ``ok`` until it reported again. A status the
    provider reports while stuck does not hide ``stuck`` either; it is named in its detail
    and is the one shown once the hook returns."""
    assert harness.runner is not None
    harness.runner.settings = settings(HEARTBEAT_TIMEOUT=1)
    harness.provider.report_status("banned", "418 for 3 days")
    harness.wait_for(lambda e: isinstance(e, Status) and e.state == "banned", "banned")
    harness.commands.put(StartStreaming(1, "STUCK", "1h"))
    seq = iter(range(100, 1000))

    def reported() -> bool:
        harness.commands.put(Ping(next(seq)))
        return any(isinstance(e, Status) and e.state == "stuck" for e in harness.collect())

    until(reported, what="the stuck hook reported")
    mark = len(harness.collect())
    harness.provider.report_status("reconnecting", "stream down")
    status = harness.wait_for(
        lambda e: isinstance(e, Status) and harness.events.index(e) >= mark, "a new status"
    )
    assert status.state == "stuck"
    assert "its own status: reconnecting: stream down" in status.detail
    harness.provider.hang.set()
    cleared = harness.wait_for(
        lambda e: isinstance(e, Status) and e.state != "stuck" and harness.events.index(e) > mark,
        "the status cleared",
    )
    assert (cleared.state, cleared.detail) == ("reconnecting", "stream down")


def test_a_failing_hook_s_log_line_names_the_hook_not_the_command(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """It named the runner's command (``StartStreaming(client=1, ...)``, ``StopStreaming``
    for ``on_close``), not the hook the provider's author wrote."""
    harness.commands.put(StartStreaming(1, "BOOM", "1h"))
    harness.wait_for(lambda e: isinstance(e, Notice), "the clients told")
    assert "provider scripted: hook failed: start_streaming('BOOM', '1h')" in caplog.text


def test_a_start_streaming_that_raises_tells_the_key_s_clients(harness: RunnerHarness) -> None:
    """The failure was only logged: the chart waited for live updates in silence."""
    harness.commands.put(StartStreaming(1, "BOOM", "1h"))
    notice = harness.wait_for(lambda e: isinstance(e, Notice), "the clients told")
    assert (notice.symbol, notice.interval, notice.code) == ("BOOM", "1h", "provider_error")
    assert "start_streaming('BOOM', '1h') failed (RuntimeError)" in notice.message


def test_a_history_call_past_its_timeout_is_reported_and_cleared_when_it_returns(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A get_history that never returned held one of the HISTORY_THREADS for good; with all
    of them held every later history call of the provider timed out, while the log and
    /health said nothing (the pings went on)."""
    assert harness.runner is not None
    harness.runner.settings = settings(HISTORY_TIMEOUT=0.5)
    harness.commands.put(GetHistory(11, "HANG", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    seq = iter(range(100, 1000))

    def reported() -> bool:
        harness.commands.put(Ping(next(seq)))
        return any(isinstance(e, Status) and e.state == "stuck" for e in harness.collect())

    until(reported, what="the stuck history call reported")
    status = next(e for e in harness.events if isinstance(e, Status) and e.state == "stuck")
    assert "1 get_history call(s) past HISTORY_TIMEOUT (HANG 1h)" in status.detail
    assert "get_history('HANG', '1h') has not returned" in caplog.text
    harness.provider.hang.set()
    harness.wait_for(lambda e: isinstance(e, HistoryReply), "the late reply")
    harness.wait_for(lambda e: isinstance(e, Status) and e.state == "ok", "the status cleared")
    assert "get_history('HANG', '1h') returned after" in caplog.text


def test_a_history_call_that_calls_sys_exit_is_answered_with_an_error(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit on a pool thread ended the call and nothing else: no reply, no log, and
    the client waited out HISTORY_TIMEOUT."""
    harness.commands.put(GetHistory(12, "EXIT", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.bars == [] and isinstance(reply.error, ProviderUnavailable)
    assert "history failed (SystemExit)" in str(reply.error)
    assert "get_history failed" in caplog.text


def test_history_is_sorted_deduplicated_and_converted(harness: RunnerHarness) -> None:
    harness.commands.put(GetHistory(5, "AAA", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.request_id == 5 and reply.error is None
    # The dict for T0 came last: it replaced the tuple of the same time.
    assert reply.bars == [(T0, 9.0, 9.0, 9.0, 9.0, None), (T0 + 3600, 2.0, 3.0, 1.0, 2.5, 10.0)]


def test_items_of_a_history_that_are_no_bars_are_skipped_and_logged(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.commands.put(GetHistory(6, "MIXED", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.error is None and reply.bars == [(T0 + 3600, 1.0, 2.0, 0.5, 1.5, 3.0)]
    assert "returned 3 item(s) that are not bars, skipped; the first: cannot read" in caplog.text


def test_a_history_reply_none_of_whose_items_is_a_bar_is_an_error(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """It was an empty answer: the hub took the window for one without bars and walked
    back through six more, each four times larger (a provider that builds its bars made
    1.2 million datapoints), and the chart got an empty data_init and no word why."""
    harness.commands.put(GetHistory(14, "NOBARS", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.bars == [] and isinstance(reply.error, ProviderError)
    assert "none of the 2 items get_history returned is a bar" in str(reply.error)
    assert "returned 2 item(s) that are not bars, skipped; the first: datapoint key" in caplog.text


def test_a_history_reply_far_larger_than_asked_is_cut_to_its_window(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that returns its whole data set on every call sent it all to the hub (a
    million bars stalled the hub for seconds and filled its store with bars nobody asked
    for); the hub gets the window asked, newest first kept."""
    start, end = T0 + 3600 * 40_000, T0 + 3600 * 40_299
    harness.commands.put(
        GetHistory(12, "EVERYTHING", "1h", format_date(start), format_date(end), 300)
    )
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.error is None
    assert [bar[0] for bar in reply.bars] == list(range(start, end + 1, 3600))
    assert "returned 50000 bars: kept the 300 of the window asked" in caplog.text
    harness.commands.put(GetHistory(13, "EVERYTHING", "1h", format_date(start), "now UTC", 20))
    reply = harness.wait_for(
        lambda e: isinstance(e, HistoryReply) and e.request_id == 13, "the second reply"
    )
    assert len(reply.bars) == 10_000 and reply.bars[0][0] == start  # from the window's start


def test_a_history_bar_with_its_high_below_its_low_is_skipped_and_logged(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.commands.put(GetHistory(8, "SWAPPED", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.error is None and reply.bars == [(T0 + 3600, 1.0, 2.0, 0.5, 1.5, 3.0)]
    assert "returned 1 item(s) that are not bars" in caplog.text
    assert "with high 0.5 below low 2.0" in caplog.text


@pytest.mark.parametrize(
    ("symbol", "error_type"), [("GONE", UnknownSymbol), ("BOOM", ProviderUnavailable)]
)
def test_a_history_failure_is_a_reply_with_a_typed_error(
    harness: RunnerHarness, symbol: str, error_type: type[Exception]
) -> None:
    harness.commands.put(GetHistory(9, symbol, "1h", "2023-01-01 00:00:00", "now UTC", 10))
    reply = harness.wait_for(lambda e: isinstance(e, HistoryReply), "a history reply")
    assert reply.bars == [] and isinstance(reply.error, error_type)


def test_a_hanging_history_call_does_not_hold_up_pings(harness: RunnerHarness) -> None:
    harness.commands.put(GetHistory(1, "HANG", "1h", "2023-01-01 00:00:00", "now UTC", 10))
    harness.commands.put(Ping(3))
    harness.wait_for(lambda e: isinstance(e, Pong) and e.seq == 3, "a Pong while history hangs")


def test_past_its_stream_deadline_a_streaming_runner_stops_with_the_fenced_code(
    harness: RunnerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A bus node sends ``StreamUntil`` with every lease renewal; a frozen node sends no
    more, and its provider process must not stream on beside the standby."""
    harness.commands.put(StartStreaming(1, "AAA", "1h"))
    until(lambda: "start 1 AAA 1h" in harness.provider.calls, what="the stream")
    harness.commands.put(StreamUntil(time.monotonic() + 0.3))
    assert harness.thread is not None
    harness.thread.join(seconds(10))
    assert harness.code == [FENCED_EXIT]
    assert harness.provider.calls[-1] == "shutdown"
    assert "renewed no lease" in caplog.text


def test_a_node_that_still_pings_is_not_fenced_past_the_deadline(
    harness: RunnerHarness,
) -> None:
    """A node that runs but lost Redis stops its streams itself at the deadline (it keeps
    pinging); its process must not race it by exiting (the hooks ``on_close`` and
    ``on_last_subscriber`` would not run). Only when the pings stop too does it fence."""
    harness.commands.put(StartStreaming(1, "AAA", "1h"))
    until(lambda: "start 1 AAA 1h" in harness.provider.calls, what="the stream")
    harness.commands.put(StreamUntil(time.monotonic() - 1))
    assert harness.thread is not None
    for seq in range(8):  # 2.4 s of pings, more than PARENT_SILENCE
        harness.commands.put(Ping(seq))
        harness.wait_for(lambda e, seq=seq: isinstance(e, Pong) and e.seq == seq, "a Pong")
        harness.thread.join(0.3)  # time must pass between pings, as the supervisor's do
        assert harness.thread.is_alive()
    harness.thread.join(seconds(10))  # the pings stopped: fenced
    assert harness.code == [FENCED_EXIT]


class _Streaming:
    def streaming_keys(self) -> list[tuple[str, str]]:
        return [("AAA", "1h")]


def test_a_frozen_nodes_process_fences_before_the_deadline_not_after_it() -> None:
    """The deadline is the earliest moment the standby may take the lease; a process that
    only began to fence then (and settled a quarter second) streamed on beside the standby
    for about 0.25 s (seen with a node under SIGSTOP). It begins ``FENCE_LEAD`` before, and
    its settling fits in that lead (when it finishes depends on the machine's load: on a
    loaded one the settling wait itself wakes late, so that is not timed here)."""
    assert FENCE_SETTLE < FENCE_LEAD
    _reader, writer = multiprocessing.Pipe(duplex=False)
    commands: queue.Queue[Any] = queue.Queue()
    runner = ProviderRunner("scripted", PATH, settings(), commands, writer)  # type: ignore[arg-type]
    try:
        runner.last_word = time.monotonic() - 10  # the node has been silent
        runner.stream_until = time.monotonic() + 0.45  # its lease has not run out yet
        assert runner._fenced(_Streaming())  # type: ignore[arg-type]
        assert runner.code == FENCED_EXIT
        runner.stream_until = time.monotonic() + 5  # a lease renewed long before its end
        assert not runner._past_deadline(_Streaming())  # type: ignore[arg-type]
    finally:
        runner.pipe.stop()


def test_a_process_that_was_paused_reads_what_waits_before_it_fences() -> None:
    """A provider process paused for longer than a lease (SIGSTOP, swapped out) woke with
    an old deadline and an old last word while the node's renewals and pings waited unread
    in the pipe, and fenced a healthy node (the lease moved to the standby). The runner's
    two threads race on waking; here the command thread has not read yet."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    commands: queue.Queue[Any] = queue.Queue()
    runner = ProviderRunner("scripted", PATH, settings(), commands, writer)  # type: ignore[arg-type]
    try:
        long_ago = time.monotonic() - 10
        runner.stream_until, runner.last_word = long_ago, long_ago
        commands.put(StreamUntil(time.monotonic() + 30))  # sent while it was paused, unread
        assert not runner._fenced(_Streaming())  # type: ignore[arg-type]
        commands.get()  # read now: nothing waits, and the node is silent
        assert runner._fenced(_Streaming())  # type: ignore[arg-type]
        assert runner.code == FENCED_EXIT
    finally:
        runner.pipe.stop()
        runner.pool.shutdown()
        reader.close()
        writer.close()


def test_a_stream_deadline_binds_only_while_streaming_and_none_lifts_it(
    harness: RunnerHarness,
) -> None:
    harness.commands.put(StreamUntil(time.monotonic() - 1))  # streams nothing: no matter
    harness.commands.put(Ping(1))
    harness.wait_for(lambda e: isinstance(e, Pong) and e.seq == 1, "a Pong")
    harness.commands.put(StreamUntil(None))  # the node gave the lease up: no limit
    harness.commands.put(StartStreaming(1, "AAA", "1h"))
    until(lambda: "start 1 AAA 1h" in harness.provider.calls, what="the stream")
    harness.commands.put(Ping(2))
    harness.wait_for(lambda e: isinstance(e, Pong) and e.seq == 2, "a Pong")
    assert harness.thread is not None and harness.thread.is_alive()
    harness.stop()
    assert harness.code == [0]


def test_shutdown_calls_the_hook_and_ends_with_code_zero(harness: RunnerHarness) -> None:
    provider = harness.provider
    harness.stop()
    assert harness.code == [0]
    assert provider.calls[-1] == "shutdown"


# --------------------------------------------------------------------------- the supervisor


@dataclass
class Sinks:
    events: list[tuple[str, list[WireEvent]]] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)


@pytest.fixture
async def process(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[ProviderProcess, Sinks]]:
    monkeypatch.setattr(supervisor_module, "BACKOFF_INITIAL", 0.2)
    sinks = Sinks()
    proc = ProviderProcess(
        "scripted",
        PATH,
        settings(),
        lambda key, events: sinks.events.append((key, events)),
        sinks.ready.append,
    )
    proc._backoff = 0.2
    await proc.start()
    assert await proc.wait_ready(seconds(30))
    yield proc, sinks
    await proc.stop()


async def test_a_started_process_is_running_and_healthy(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    proc, sinks = process
    assert proc.state is ProviderState.RUNNING
    assert sinks.ready == ["scripted"]
    health = proc.health()
    assert health["state"] == "running" and health["pid"] == proc.pid
    assert psutil.pid_exists(proc.pid or -1)


async def test_history_crosses_the_process_boundary(process: tuple[ProviderProcess, Sinks]) -> None:
    proc, _ = process
    bars = await proc.get_history("AAA", "1h", "2023-01-01 00:00:00", "now UTC", 10, seconds(10))
    assert [b[0] for b in bars] == [T0, T0 + 3600]
    with pytest.raises(UnknownSymbol):
        await proc.get_history("GONE", "1h", "2023-01-01 00:00:00", "now UTC", 10, seconds(10))


async def test_a_history_call_that_never_answers_times_out(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    proc, _ = process
    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await proc.get_history("HANG", "1h", "2023-01-01 00:00:00", "now UTC", 10, 0.3)


async def test_a_history_timeout_is_logged_by_the_hub(
    process: tuple[ProviderProcess, Sinks], caplog: pytest.LogCaptureFixture
) -> None:
    proc, _ = process
    with pytest.raises(ProviderUnavailable):
        await proc.get_history("HANG", "1h", "2023-01-01 00:00:00", "now UTC", 10, 0.3)
    assert "provider scripted did not answer history of HANG 1h within 0.3 s" in caplog.text


@pytest.mark.parametrize(
    ("variable", "why"),
    [
        ("CANDLEWIRE_TEST_INIT_FAILS", "init() failed: RuntimeError: init failed on purpose"),
        ("CANDLEWIRE_TEST_INIT_EXITS", "init() called sys.exit(7)"),
    ],
)
async def test_health_says_why_a_provider_could_not_start_until_it_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, why: str
) -> None:
    """/health said only "process exited with code 1" (the reason was in the log alone),
    and for sys.exit in init() not even the log said what happened."""
    monkeypatch.setattr(supervisor_module, "BACKOFF_INITIAL", 0.2)
    monkeypatch.setenv(variable, "1")
    sinks = Sinks()
    proc = ProviderProcess(
        "scripted",
        PATH,
        settings(),
        lambda key, events: sinks.events.append((key, events)),
        sinks.ready.append,
    )
    proc._backoff = 0.2
    await proc.start()
    try:
        await eventually(lambda: proc.last_error is not None, timeout=30, what="the failure")
        health = proc.health()
        assert health["last_error"].startswith(why) and "(exit code" in health["last_error"]
        assert (health["status"], health["status_detail"]) == ("failed", why)
        assert unserved({"scripted": health}) == [f"provider scripted failed: {why}"]
        monkeypatch.delenv(variable)  # fixed: the next restart comes up
        assert await proc.wait_ready(seconds(60))
        health = proc.health()
        assert (health["last_error"], health["status"]) == (None, "unknown")
        assert unserved({"scripted": health}) == []
    finally:
        await proc.stop()


def test_unserved_names_each_provider_that_serves_nothing_and_why() -> None:
    """What makes /health degraded: a process waiting to restart or stopped, or a status
    of failed or stuck; a provider's own other statuses (banned, reconnecting) do not."""

    def provider(
        state: str, status: str, detail: str = "", error: str | None = None
    ) -> dict[str, Any]:
        return {"state": state, "status": status, "status_detail": detail, "last_error": error}

    providers = {
        "b": provider("backoff", "unknown", error="process exited with code -9"),
        "a": provider("running", "stuck", "get_history running for 31 s"),
        "c": provider("running", "ok"),
        "d": provider("starting", "unknown"),
        "e": provider("running", "banned", "HTTP 418 until 12:00"),
        "f": provider("stopped", "unknown"),
    }
    assert unserved(providers) == [
        "provider a stuck: get_history running for 31 s",
        "provider b backoff: process exited with code -9",
        "provider f stopped",
    ]
    assert unserved({"c": providers["c"], "d": providers["d"]}) == []


async def test_a_killed_process_is_restarted_and_reports_ready_again(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    proc, sinks = process
    old_pid = proc.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await eventually(lambda: proc.state is ProviderState.BACKOFF, what="the backoff state")
    # The status of the kill, not "exit code None" (the sentinel closes before the status
    # can be collected).
    assert proc.last_error == f"process exited with code {-signal.SIGKILL}"
    await eventually(lambda: len(sinks.ready) == 2, timeout=30, what="the restarted process")
    assert proc.state is ProviderState.RUNNING
    assert proc.pid != old_pid and proc.restarts == 1


async def test_a_process_that_exits_by_itself_is_logged_as_an_error_naming_it(
    process: tuple[ProviderProcess, Sinks], caplog: pytest.LogCaptureFixture
) -> None:
    """It was an INFO line of the state change only ("running -> backoff (exit code 7 ...)"):
    a provider that crashed mid-stream left nothing above INFO in the log."""
    proc, sinks = process
    old_pid = proc.pid
    proc.send(StartStreaming(1, "DIE", "1h"))
    await eventually(lambda: proc.state is ProviderState.BACKOFF, what="the backoff state")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "provider scripted" in m and f"pid {old_pid}" in m and "exited" in m and "code" in m
        for m in errors
    ), errors
    await eventually(lambda: len(sinks.ready) == 2, timeout=30, what="the restarted process")


async def test_history_in_hand_when_the_process_exits_is_asked_of_the_restarted_one(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    """It used to fail at once with ``provider_unavailable``, and a request made while the
    process was restarting went into the dead process's queue and waited out its timeout."""
    proc, sinks = process
    pending = asyncio.ensure_future(
        proc.get_history("SLOW", "1h", "2023-01-01 00:00:00", "now UTC", 10, seconds(30))
    )
    await eventually(lambda: proc._pending, what="the request on its way to the process")
    proc.send(StartStreaming(1, "DIE", "1h"))
    await eventually(lambda: proc.state is ProviderState.BACKOFF, what="the backoff state")
    during = asyncio.ensure_future(
        proc.get_history("AAA", "1h", "2023-01-01 00:00:00", "now UTC", 10, seconds(30))
    )
    assert [b[0] for b in await pending] == [T0, T0 + 3600]
    assert [b[0] for b in await during] == [T0, T0 + 3600]
    assert len(sinks.ready) == 2


async def test_a_history_request_that_kills_its_process_is_asked_again_only_once(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    proc, sinks = process
    with pytest.raises(ProviderUnavailable, match="exited"):
        await proc.get_history("KILLER", "1h", "2023-01-01 00:00:00", "now UTC", 10, seconds(30))
    assert proc.restarts >= 1
    await eventually(lambda: len(sinks.ready) == 3, timeout=30, what="the second restart")


async def test_a_silent_process_is_killed_by_the_heartbeat_check(
    process: tuple[ProviderProcess, Sinks],
) -> None:
    proc, sinks = process
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGSTOP)  # alive, but silent
    proc.last_seen -= 100
    proc.check(heartbeat_timeout=15)
    await eventually(lambda: len(sinks.ready) == 2, timeout=30, what="the replacement process")
    assert proc.last_error is None and proc.restarts == 1


async def _ends_cancelled(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` ends cancelled (it was cancelled) rather than going on."""
    try:
        await asyncio.wait({task}, timeout=seconds(5))
        return task.cancelled()
    finally:
        task.cancel()


async def test_a_cancel_as_the_process_gets_ready_is_not_lost() -> None:
    """A scan stopped while its history call waited for its provider to be ready: on Python
    3.11 ``asyncio.wait_for`` returned (True) when the cancel came in the turns between
    ``Ready`` and its return, and the cancelled caller went on to its history call, which
    waited out HISTORY_TIMEOUT (``test_e2e_scan.py::test_scan_stop_ends_the_scan_at_once``,
    under load)."""
    for turns in range(4):
        proc = ProviderProcess("p", PATH, settings(), lambda key, events: None, lambda k: None)
        proc.send = lambda command: None  # type: ignore[method-assign]

        async def ready_then_wait(proc: ProviderProcess = proc) -> None:
            await proc.wait_ready(30)
            await asyncio.sleep(30)  # the history call after it

        async def history_of_a_process_not_ready(proc: ProviderProcess = proc) -> None:
            await proc.get_history("HANG", "1h", "2023-01-01 00:00:00", "now UTC", 10, 30)

        for caller in (ready_then_wait, history_of_a_process_not_ready):
            proc._ready.clear()
            task = asyncio.create_task(caller())
            await asyncio.sleep(0)  # waiting for Ready
            proc._ready.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            assert await _ends_cancelled(task), (caller.__name__, turns)


async def test_a_cancel_as_the_history_answer_comes_is_not_lost() -> None:
    """On 3.11 ``wait_for`` returned the bars of an answer that came with the cancel, and
    the cancelled caller (the history planner of a stopped scan) asked for the next window."""
    proc = ProviderProcess("p", PATH, settings(), lambda key, events: None, lambda k: None)
    asked: list[GetHistory] = []
    proc.send = asked.append  # type: ignore[method-assign,assignment]
    proc._ready.set()

    async def two_calls() -> None:
        await proc.get_history("AAA", "1h", "2023-01-01 00:00:00", "now UTC", 10, 30)
        await proc.get_history("AAA", "1h", "2022-01-01 00:00:00", "now UTC", 10, 30)

    task = asyncio.create_task(two_calls())
    await eventually(lambda: asked, what="the first call")
    proc._resolve(asked[0].request_id, [(T0, 1.0, 1.0, 1.0, 1.0, 1.0)], None)
    task.cancel()
    assert await _ends_cancelled(task)
    assert len(asked) == 1


# --------------------------------------------------------------------------- the pipe reader


def _bar_update(t: int) -> tuple[str, str, tuple[int, float, float, float, float, float], bool]:
    return ("S", "1m", (t, 1.0, 1.0, 1.0, 1.0, float(t)), False)


async def test_updates_written_one_per_message_while_the_hub_was_busy_are_dispatched_together() -> (
    None
):
    """A provider that writes each update as it arrives upstream: once several messages are
    waiting, the hub hands them on in one slice (one socket write per client for all of
    them), in order; a wakeup with one message waiting dispatches just that one."""
    calls: list[list[WireEvent]] = []
    proc = ProviderProcess(
        "p", PATH, settings(), lambda key, events: calls.append(events), lambda key: None
    )
    reader, writer = multiprocessing.Pipe(duplex=False)
    proc._events = reader
    try:
        writer.send_bytes(encode_batch([_bar_update(0)]))  # type: ignore[list-item]
        proc._drain()
        assert [[e[2][0] for e in c] for c in calls] == [[0]]  # type: ignore[index]
        calls.clear()
        for t in range(1, 121):  # 120 messages of one update each, waiting at once
            writer.send_bytes(encode_batch([_bar_update(t)]))  # type: ignore[list-item]
        proc._drain()
        await eventually(lambda: sum(map(len, calls)) == 120, what="every update dispatched")
    finally:
        reader.close()
        writer.close()
    sizes = [len(c) for c in calls]
    assert sizes == [supervisor_module.DISPATCH_SLICE] * 2 + [120 - 2 * sizes[0]]
    assert [e[2][0] for c in calls for e in c] == list(range(1, 121))  # type: ignore[index]


def three_messages_of_100_updates(writer: Connection) -> None:
    for t in range(0, 300, 100):
        writer.send_bytes(encode_batch([_bar_update(t + i) for i in range(100)]))  # type: ignore[misc]


async def test_a_wakeup_takes_at_most_its_limit_of_events_from_the_pipe() -> None:
    calls: list[list[WireEvent]] = []
    proc = ProviderProcess(
        "p", PATH, settings(), lambda key, events: calls.append(events), lambda key: None
    )
    reader, writer = multiprocessing.Pipe(duplex=False)
    proc._events = reader
    try:
        three_messages_of_100_updates(writer)
        proc._drain(limit=150, budget=float("inf"))
        # whole messages are read, a slice's worth at a time: 100, then (still under the
        # limit) 100 more; the third waits for the next wakeup
        assert sum(map(len, calls)) == 200
        await eventually(lambda: sum(map(len, calls)) == 300, what="the rest, next wakeup")
    finally:
        reader.close()
        writer.close()


async def test_each_wakeup_of_the_pipe_reader_is_bracketed_by_the_hooks() -> None:
    """The hub defers each key's indicators to the end of a wakeup (``Fanout.begin_wakeup``
    / ``end_wakeup``): the end comes after the wakeup's last slice, also when a wakeup stops
    at its limit with more waiting (then the next wakeup has its own pair), and when a
    slice's dispatch raised."""
    log: list[object] = []
    proc = ProviderProcess(
        "p", PATH, settings(), lambda key, events: log.append(len(events)), lambda key: None
    )
    proc.wakeup = (lambda: log.append("begin"), lambda: log.append("end"))
    reader, writer = multiprocessing.Pipe(duplex=False)
    proc._events = reader
    try:
        three_messages_of_100_updates(writer)
        proc._drain(limit=150, budget=float("inf"))
        assert log == ["begin", 50, 50, 50, 50, "end"]
        await eventually(
            lambda: log[-1] == "end" and sum(n for n in log if isinstance(n, int)) == 300,
            what="the next wakeup",
        )
        assert log[6:] == ["begin", 50, 50, "end"]
        log.clear()

        def fail(key: str, events: list[WireEvent]) -> None:
            raise RuntimeError("a bug in a slice")

        proc.on_events = fail
        writer.send_bytes(encode_batch([_bar_update(1)]))  # type: ignore[list-item]
        with pytest.raises(RuntimeError):
            proc._drain()
        assert log == ["begin", "end"]
    finally:
        reader.close()
        writer.close()


SLOW_START = """
import os, sys, time
if "--multiprocessing-fork" in sys.argv:  # a spawned child: Python starts slowly (load)
    time.sleep(float(os.environ.get("CANDLEWIRE_TEST_SLOW_START", "0")))
"""


async def test_a_process_slow_to_start_python_is_not_killed_before_its_first_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine (load average 20) starting the interpreter and its imports took
    longer than HEARTBEAT_TIMEOUT: every provider was killed before its first heartbeat,
    started again and killed again, and nothing came up."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_START)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("CANDLEWIRE_TEST_SLOW_START", "3")
    proc = ProviderProcess("scripted", PATH, settings(), lambda key, events: None, lambda k: None)
    await proc.start()
    try:
        started = proc.pid
        await asyncio.sleep(1.5)  # time must pass: longer than the heartbeat timeout below
        proc.check(1.0)  # the supervisor's check, with a 1 s HEARTBEAT_TIMEOUT
        assert proc.last_error is None and proc.pid == started
        assert await proc.wait_ready(seconds(60))
        assert proc.pid == started
    finally:
        await proc.stop()
