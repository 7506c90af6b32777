"""The provider process's pipe to the hub (backend/runtime/pipe_out.py): events arrive in
order and whole from any number of threads, a publisher never blocks on a full pipe, single
events are batched by the writer thread, and a held burst is one write, made by its own
thread when nothing waits."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from backend.runtime.messages import BarUpdate, Heartbeat, decode_batch
from backend.runtime.pipe_out import BATCH_MAX, EventPipe
from backend.runtime.provider import Provider
from backend.settings import load_settings
from tests.harness import seconds

WRITERS: list[tuple[EventPipe, threading.Thread]] = []


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = multiprocessing.Pipe(duplex=False)
    yield reader, writer
    while WRITERS:  # a writer thread left running would write to a closed pipe and exit
        out, thread = WRITERS.pop()
        out.stop()
        while thread.is_alive() and reader.poll(0.1):
            reader.recv_bytes()  # let it finish what waits
        thread.join(seconds(10))
        assert not thread.is_alive()
    reader.close()
    writer.close()


def bar(symbol: str, n: int) -> BarUpdate:
    return BarUpdate(symbol, "1m", (60 * n, 1.0, 2.0, 0.5, 1.5, float(n)), True)


def read_all(reader: Connection, until: int, timeout: float = 20.0) -> list[list[object]]:
    """Pipe messages until ``until`` events arrived (heartbeats not counted)."""
    messages: list[list[object]] = []
    deadline = time.monotonic() + seconds(timeout)
    got = 0
    while got < until:
        assert reader.poll(max(0.0, deadline - time.monotonic())), f"only {got} of {until}"
        batch = [e for e in decode_batch(reader.recv_bytes()) if not isinstance(e, Heartbeat)]
        messages.append(batch)
        got += len(batch)
    return messages


@pytest.fixture
def running(pipe: tuple[Connection, Connection]) -> tuple[Connection, EventPipe]:
    """The hub's end of the pipe and an EventPipe whose writer thread runs."""
    reader, writer = pipe
    out = make(writer)
    start_writer(out)
    return reader, out


def make(writer: Connection) -> EventPipe:
    return EventPipe("test", writer, lambda: Heartbeat(0), os.getppid())


def start_writer(out: EventPipe) -> threading.Thread:
    thread = threading.Thread(target=out.write_loop, name="writer", daemon=True)
    thread.start()
    WRITERS.append((out, thread))
    return thread


def test_an_idle_pipe_is_written_by_the_thread_that_hands_over_a_burst(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    out = make(writer)  # no writer thread at all: only a direct write can deliver
    out.put_many([bar("A", 1)])
    out.put_many([bar("A", 2), bar("A", 3)])
    messages = read_all(reader, 3)
    assert messages == [[tuple(bar("A", 1))], [tuple(bar("A", 2)), tuple(bar("A", 3))]]
    assert out.idle()
    out.put(bar("A", 4))  # a single event waits for the writer thread, which batches
    assert not reader.poll(0.2)
    start_writer(out)
    assert read_all(reader, 1) == [[tuple(bar("A", 4))]]


def test_events_put_one_by_one_reach_the_hub_in_batches(
    running: tuple[Connection, EventPipe],
) -> None:
    reader, out = running
    for n in range(2000):
        out.put(bar("B", n))
    messages = read_all(reader, 2000)
    assert [e[2][5] for m in messages for e in m] == [float(n) for n in range(2000)]
    assert len(messages) < 500  # gathered while the writer was busy, not one message each


def test_many_threads_against_a_full_pipe_lose_nothing_and_keep_their_order(
    running: tuple[Connection, EventPipe],
) -> None:
    reader, out = running
    threads, per_thread = 4, 3000
    publish_seconds: list[float] = []

    def publish(symbol: str) -> None:
        # final bars of distinct open times: nothing may be merged away
        started = time.monotonic()
        for n in range(per_thread):
            out.put(bar(symbol, n))
        publish_seconds.append(time.monotonic() - started)

    workers = [threading.Thread(target=publish, args=(f"S{i}",)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds(30))
    # nobody read the pipe yet: it filled up, and still no publisher blocked on it
    assert len(publish_seconds) == threads
    events = [event for batch in read_all(reader, threads * per_thread) for event in batch]
    assert len(events) == threads * per_thread
    for i in range(threads):
        mine = [e[2][5] for e in events if isinstance(e, tuple) and e[0] == f"S{i}"]
        assert mine == [float(n) for n in range(per_thread)]


def forming_states() -> list[BarUpdate]:
    """Five states of one forming bar, its close counting up."""
    return [BarUpdate("F", "1m", (60, 1.0, 2.0, 0.5, float(n), 1.0), False) for n in range(5)]


def test_a_backlog_keeps_only_the_newest_state_of_a_forming_bar(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    out = make(writer)
    forming = forming_states()
    out.put_many(forming * (BATCH_MAX // 5 + 1))  # more than a batch: queued, then merged
    start_writer(out)
    (batch,) = read_all(reader, 1)
    assert batch == [tuple(forming[-1])]


def test_a_merge_is_followed_by_a_heartbeat_that_counts_the_states_merged(
    pipe: tuple[Connection, Connection],
) -> None:
    """The hub counts what the provider's process merged ahead of it (``/metrics``)."""
    reader, writer = pipe
    out = make(writer)
    forming = forming_states()
    closed = [bar("C", n) for n in range(BATCH_MAX)]  # all kept: distinct final bars
    out.put_many(forming * 100 + closed)
    start_writer(out)
    sent = []
    while sum(isinstance(e, tuple) for e in sent) < 1 + BATCH_MAX:
        assert reader.poll(seconds(10))
        sent += decode_batch(reader.recv_bytes())
    assert sent[0] == tuple(forming[-1])
    merges = [e.merged for e in sent if isinstance(e, Heartbeat) and e.merged]
    assert merges == [5 * 100 - 1]


def test_an_idle_writer_sends_heartbeats(running: tuple[Connection, EventPipe]) -> None:
    reader, _ = running
    assert reader.poll(seconds(5))
    assert any(isinstance(e, Heartbeat) for e in decode_batch(reader.recv_bytes()))


def test_stop_ends_the_writer_after_what_waits(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    out = make(writer)
    out.put_many([bar("Z", n) for n in range(BATCH_MAX + 1)])  # waits for the writer
    thread = start_writer(out)
    out.stop()
    thread.join(seconds(10))
    assert not thread.is_alive()
    assert sum(len(b) for b in read_all(reader, BATCH_MAX + 1)) == BATCH_MAX + 1


class Recorder(Provider):
    pass


def test_a_held_burst_reaches_the_pipe_as_one_message_in_order(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    out = make(writer)
    provider = Recorder()
    provider._attach("rec", load_settings(PROVIDERS="csv"), out.put, out.put_many)
    start_writer(out)
    provider.hold_updates()
    for n in range(5):
        provider.publish("H", "1m", (60 * n, 1, 2, 0.5, 1.5, n), final=True)
    # another thread publishes meanwhile: not held
    other = threading.Thread(target=provider.publish, args=("O", "1m", (60, 1, 2, 0.5, 1.5, 9)))
    other.start()
    other.join()
    assert [e[0] for b in read_all(reader, 1) for e in b] == ["O"]
    provider.release_updates()
    (burst,) = read_all(reader, 5)
    assert [(e[0], e[2][5]) for e in burst] == [("H", float(n)) for n in range(5)]
    provider.release_updates()  # nothing held: nothing sent
    provider.publish("H", "1m", (600, 1, 2, 0.5, 1.5, 7))
    assert [e[0] for b in read_all(reader, 1) for e in b] == ["H"]


def test_an_event_that_cannot_be_pickled_is_dropped_and_the_writer_goes_on(
    running: tuple[Connection, EventPipe], caplog: pytest.LogCaptureFixture
) -> None:
    """A provider's unpicklable object on the pipe raised in the writer thread, which died:
    no event and no heartbeat left the process until the hub killed it."""
    reader, out = running
    out.put(bar("A", 1))
    out.put(Heartbeat(lambda: 0))  # type: ignore[arg-type]
    out.put(bar("A", 2))
    messages = read_all(reader, 2)
    assert [e for m in messages for e in m] == [tuple(bar("A", 1)), tuple(bar("A", 2))]
    out.put(bar("A", 3))
    assert read_all(reader, 1) == [[tuple(bar("A", 3))]]
    assert "could not be sent" in caplog.text
