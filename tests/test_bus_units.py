"""The bus's pure parts (no Redis, no processes): role checks, names, decoding of foreign
bytes, and the hub handle turning per-client commands into one demand entry per key."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Coroutine
from typing import Any

import pytest

from backend.app import check_role
from backend.bus import codec, hubside, link
from backend.bus import node as node_module
from backend.bus.hubside import BusProviderSet
from backend.bus.names import demand_member, parse_member
from backend.errors import ConfigError
from backend.runtime.messages import (
    Changed,
    Clock,
    Missed,
    Notice,
    NoUpdate,
    StartStreaming,
    Status,
    StopStreaming,
)
from backend.settings import load_settings
from tests.harness import eventually

BUS = "redis://127.0.0.1:6379/0"


def test_roles_other_than_all_need_bus_url() -> None:
    settings = load_settings(PROVIDERS="csv")
    check_role(settings, "all")
    for role in ("hub", "providers"):
        with pytest.raises(ConfigError, match="BUS_URL"):
            check_role(settings, role)
    with pytest.raises(ConfigError, match="--role"):
        check_role(settings, "everything")


def test_a_hub_needs_no_provider_credentials_but_a_node_does() -> None:
    settings = load_settings(PROVIDERS="polygon", BUS_URL=BUS, POLYGON_API_KEY="")
    check_role(settings, "hub")
    for role in ("providers", "all"):
        with pytest.raises(ConfigError, match="POLYGON_API_KEY"):
            check_role(settings, role)
    with pytest.raises(ConfigError, match="POLYGON_API_KEY"):
        load_settings(PROVIDERS="polygon", POLYGON_API_KEY="")


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "redis:/x"])
def test_a_bus_url_must_be_a_redis_url(url: str) -> None:
    with pytest.raises(ConfigError, match="BUS_URL"):
        load_settings(BUS_URL=url)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # a '#', '/' or '?' in a password cuts the URL: redis-py dialled host "2"
        ("redis://:hunter@2#x@127.0.0.1:6379/0", "%23"),
        ("redis://:hunter/2x@127.0.0.1:6379/0", "%2F"),
        ("redis://:hunter?2x@127.0.0.1:6379/0", "%3F"),
        ("redis://127.0.0.1:6379/zero", "database"),  # was database 0, silently
        ("redis://127.0.0.1:99999/0", "port"),
        ("redis://127.0.0.1:6379/0?sslcertreqs=none", "sslcertreqs"),  # a TypeError loop
        ("unix://", "socket"),
        # redis-py lets the URL override the bus's own: every 1 s BLPOP timed out at 0.5 s
        ("redis://127.0.0.1:6379/0?socket_timeout=0.5", "socket_timeout"),
        ("redis://127.0.0.1:6379/0?db=1&max_connections=1000", "max_connections"),
        ("unix:///run/redis.sock?retry_on_timeout=true", "retry_on_timeout"),
        ("redis://127.0.0.1:6379/0?decode_responses=true", "decode_responses"),
    ],
)
def test_a_bus_url_redis_would_misread_is_refused_without_its_password(url: str, said: str) -> None:
    """redis-py reads a password with an unencoded ``#``, ``/`` or ``?`` as part of the host
    (redis/redis-py#1171, #579): the bus retried "Name or service not known" for ever; an
    unknown query argument failed every connection with a ``TypeError`` (the loops died and
    started again every second); a database that is no number was database 0."""
    with pytest.raises(ConfigError, match="BUS_URL") as refused:
        load_settings(BUS_URL=url)
    assert said in str(refused.value)
    assert "hunter" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.0.0.5:6379/0",
        "redis://cw:p%23ss%2Fw%3Frd@10.0.0.5:6379/2",
        "redis://:a@b@10.0.0.5",  # an '@' in a password is read right
        "rediss://redis.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis/redis.sock?db=1",
        "redis://10.0.0.5:6379?db=3&socket_keepalive=true",
    ],
)
def test_bus_urls_redis_reads_are_taken(url: str) -> None:
    assert url == load_settings(BUS_URL=url).BUS_URL


def test_the_logged_bus_url_hides_the_password_also_in_the_query() -> None:
    """redis-py takes ``?password=`` too; the hub logged that URL as it was."""
    assert hubside._safe("redis://cw:hunter2@h:6379/0") == "redis://***@h:6379/0"
    assert hubside._safe("redis://h:6379/0?db=1&password=hunter2") == (
        "redis://h:6379/0?db=1&password=***"
    )


def test_bad_prefix_and_lease_are_refused() -> None:
    with pytest.raises(ConfigError, match="BUS_PREFIX"):
        load_settings(BUS_PREFIX="has space")
    with pytest.raises(ConfigError, match="BUS_LEASE_SECONDS"):
        load_settings(BUS_LEASE_SECONDS="0.1")


def test_demand_members_round_trip_and_garbage_is_none() -> None:
    assert parse_member(demand_member("hub-1", "AAA", "1m").encode()) == ("hub-1", "AAA", "1m")
    for garbage in (b"", b"no separators", "a\x1fb", b"\x1f\x1f", b"\xff\xfe\x1fx\x1fy\x1fz"):
        assert parse_member(garbage) is None


def test_a_demand_entry_with_an_interval_or_symbol_no_hub_writes_is_none() -> None:
    """``AAA zz`` reached the provider's stream thread and killed it (every key stopped)."""
    assert parse_member(demand_member("evil", "AAA", "zz")) is None
    assert parse_member(demand_member("evil", "A" * 201, "1m")) is None
    assert parse_member(demand_member("hub", "A" * 200, "1M")) == ("hub", "A" * 200, "1M")


def test_holder_announcements_and_history_answers_of_other_shapes_are_refused() -> None:
    """A holder announcement with a state of 5 failed the hub's bus writer; an answer of bars
    ``[("x", "y")]`` got the client an internal error instead of its data_history."""
    assert codec.active_ok(codec.Active("node-1", 42, True, [Status("ok", "")]))
    assert not codec.active_ok(codec.Active("evil", None, True, state=5))  # type: ignore[arg-type]
    assert not codec.active_ok(codec.Active(["n"], None, True))  # type: ignore[arg-type]
    assert codec.answer_ok(codec.HistoryAnswer(1, [(60, 1.0, 2.0, 0.5, 1.5, None)]))
    assert codec.answer_ok(codec.HistoryAnswer(1, [], ValueError("no")))
    assert not codec.answer_ok(codec.HistoryAnswer(1, [("x", "y")]))  # type: ignore[list-item]
    assert not codec.answer_ok(codec.HistoryAnswer(1, [], "text"))  # type: ignore[arg-type]


def test_foreign_bytes_decode_to_none() -> None:
    assert codec.decode(b"\x80\x05not a pickle", "test") is None
    assert codec.decode("text", "test") is None
    assert codec.decode(codec.encode(codec.DatasetEnd(3)), "test") == codec.DatasetEnd(3)


def test_a_key_is_one_demand_entry_whatever_its_clients() -> None:
    settings = load_settings(PROVIDERS="csv", BUS_URL=BUS)
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    handle = bus.providers["csv"]
    handle.send(StartStreaming(1, "AAA", "1m"))
    handle.send(StartStreaming(2, "AAA", "1m"))
    assert bus._added == {"csv": {("AAA", "1m")}}
    handle.send(StopStreaming(1, "AAA", "1m"))
    assert bus._removed == {}
    handle.send(StopStreaming(2, "AAA", "1m"))
    assert bus._removed == {"csv": {("AAA", "1m")}}
    assert bus._added == {"csv": set()}
    handle.send(StopStreaming(3, "BBB", "1m"))  # never started: nothing to withdraw
    assert bus._removed == {"csv": {("AAA", "1m")}}
    handle.send(NoUpdate("AAA", "1m"))
    assert bus._forwards == [("csv", NoUpdate("AAA", "1m"))]
    assert handle.health()["state"] == "unreachable"  # not started: no Redis yet
    assert handle.health()["node"] is None
    assert bus.bus_health()["state"] == "down"


def test_a_batch_keeps_only_events_of_the_shapes_a_provider_writes() -> None:
    """A clock of strings broke every later history request of the source; a short tuple
    killed the hub's bus reader; a price of text reached clients as it was."""
    good_bar = ("BTC", "1m", (60, 1.0, 2.0, 0.5, 1.5, None), False)
    good = [good_bar, Clock(None, 1.0, 2.0, 60.0), Status("ok", ""), Notice("B", "1m", "c", "m")]
    bad = [
        ("BTC", "1m"),
        ("BTC", "1m", ("x", 1.0, 2.0, 0.5, 1.5, None), False),
        ("BTC", "1m", (60, "evil", 2.0, 0.5, 1.5, None), False),
        ("BTC", "1m", (60, 1.0, 2.0, 0.5, 1.5), False),
        Clock(None, "x", "y", "z"),  # type: ignore[arg-type]
        Clock(None, 1.0, float("nan"), 1.0),
        Status(["x"], ""),  # type: ignore[arg-type]
        "text",
        None,
    ]
    assert codec.well_formed([*bad[:3], *good, *bad[3:]]) == good


def test_a_changed_symbol_crosses_the_bus_when_it_names_a_symbol() -> None:
    """``Changed`` (a provider's bars of a symbol changed: a rewritten CSV file) reaches
    the hubs of a scale-out like the other events; one of another shape is dropped."""
    assert codec.well_formed([Changed("B"), Changed(["x"])]) == [Changed("B")]  # type: ignore[arg-type]


def test_a_missed_span_crosses_the_bus_when_it_names_a_key_and_a_time() -> None:
    """``Missed`` (a provider's stream missed bars it could not fetch yet) reaches the hubs
    of a scale-out, or they would take the gap as known; one of another shape is dropped."""
    good = Missed("B", "1m", 60)
    bad = [Missed("B", "1m", "60"), Missed("B", None, 60)]  # type: ignore[arg-type]
    assert codec.well_formed([*bad, good]) == [good]


def test_a_provider_no_node_holds_says_so_in_health() -> None:
    settings = load_settings(PROVIDERS="csv", BUS_URL=BUS)
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    bus.up = True
    health = bus.providers["csv"].health()
    assert health["state"] == "no_node" and health["pid"] is None
    assert health["last_error"] == "no provider node holds it"


def test_a_node_takes_only_history_requests_of_the_shapes_a_hub_writes() -> None:
    """A request with the interval "7x" killed the node's history loop."""
    good = codec.HistoryRequest("hub", 1, "AAA", "1m", "2026-01-01 00:00:00", "now UTC", 5, 1.0)
    assert node_module._well_formed(good)
    for bad in (
        dataclasses.replace(good, interval="7x"),
        dataclasses.replace(good, symbol=["x"]),  # type: ignore[arg-type]
        dataclasses.replace(good, count="5"),  # type: ignore[arg-type]
        dataclasses.replace(good, request_id=None),  # type: ignore[arg-type]
    ):
        assert not node_module._well_formed(bad), bad


async def test_a_hub_stopped_while_a_renewal_was_in_flight_still_sees_its_lapse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The renewal was timed from when its answer came back: a hub stopped (SIGSTOP, a
    stall) with one in flight resumed as if it had just renewed, never counted its providers
    as restarted, and kept the hole its expired demand left (a flaky end-to-end test,
    ``test_bus.py::test_a_hub_stalled_past_its_lease_counts_its_providers_as_restarted``)."""
    settings = load_settings(PROVIDERS="csv", BUS_URL=BUS, BUS_LEASE_SECONDS=1.5)
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    writes: list[bool] = []

    async def write(renew: bool) -> None:
        writes.append(renew)
        if len(writes) == 2:  # in flight past a whole lease, as if the process stopped
            await asyncio.sleep(bus.lease * 1.5)

    bus._write = write  # type: ignore[method-assign]
    loop = asyncio.get_running_loop().create_task(bus._write_loop())
    try:
        await eventually(lambda: "counts as restarted" in caplog.text, 10, "the lapse seen")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert len(writes) >= 3


async def test_a_redis_outage_logs_the_lapse_of_the_demand_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every retry of the demand writer during an outage logged "no demand renewed for N s
    ... counts as restarted" again (every 5 s per hub process once the backoff reached its
    ceiling), where the README promises one warning per outage."""
    settings = load_settings(PROVIDERS="csv", BUS_URL=BUS, BUS_LEASE_SECONDS=1.5)
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    writes: list[bool] = []

    async def write(renew: bool) -> None:
        writes.append(renew)
        if len(writes) > 1:
            raise link.BusDown("ConnectionError: refused")

    bus._write = write  # type: ignore[method-assign]
    loop = asyncio.get_running_loop().create_task(bus._write_loop())
    try:  # retries at about 0.7, 1.1, 1.9 and 3.5 s: the last two past the lease
        await eventually(lambda: len(writes) >= 6, 15, "retries well past the lease")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert caplog.text.count("counts as restarted") == 1
    assert bus._resync


async def test_a_node_with_no_provider_running_says_redis_is_down_while_it_is() -> None:
    """A round of the lease loop with no provider process running sends Redis nothing, and
    counted as a round that reached it: a node started before Redis (or a standby whose
    processes are all down) showed ``bus.state: up`` while Redis was unreachable."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    node = node_module.ProviderNode(load_settings(PROVIDERS="csv", BUS_URL=url))
    node._redis = link.client(url, 0.2)
    node._scripts = link.Scripts(node._redis)
    assert not node._healthy("csv")  # its provider process never started
    loop = asyncio.create_task(node._lease_loop())
    try:
        await eventually(lambda: node.reason != "connecting", 10, "the first round")
        assert not node.up
        assert node.health()["bus"]["state"] == "down"
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await node._redis.aclose()


class _Pipeline:
    """A Redis pipeline that takes every command and answers at once."""

    def __getattr__(self, command: str) -> object:
        return lambda *args, **kwargs: None

    async def execute(self) -> list[object]:
        return []

    async def reset(self) -> None:
        pass


class _Redis:
    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline()


async def _ends_cancelled(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends cancelled (it was cancelled) rather than going on."""
    try:
        await asyncio.wait({task}, timeout=5)
        return task.cancelled()
    finally:
        task.cancel()


async def _cancelled_as_it_is_set(
    wait: Coroutine[Any, Any, None], event: asyncio.Event, turns: int
) -> bool:
    """Whether ``wait``, cancelled ``turns`` turns of the loop after ``event`` it waits for
    was set, ends cancelled."""
    task = asyncio.create_task(wait)
    await asyncio.sleep(0)  # waiting for the event
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    return await _ends_cancelled(task)


async def _ready_then_wait(bus: BusProviderSet) -> None:
    await bus.providers["csv"].wait_ready(30)
    await asyncio.sleep(30)  # the history call after it


async def _history(bus: BusProviderSet) -> None:
    await bus.history("csv", "AAA", "1m", "2026-01-01 00:00:00", "now UTC", 5, 30)


async def test_a_cancel_as_what_a_history_call_waits_for_comes_is_not_lost() -> None:
    """On Python 3.11 ``asyncio.wait_for`` dropped a cancel that came in the turns between
    what it waited for (the provider's node ready, this hub's reply channel subscribed, the
    answer) and its return: the cancelled caller (the history planner of a stopped scan)
    went on to its next wait, up to HISTORY_TIMEOUT (as ``ProviderProcess``'s, in
    test_runtime.py)."""
    settings = load_settings(PROVIDERS="csv", BUS_URL=BUS)
    for turns in range(4):
        bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
        bus._redis = _Redis()  # type: ignore[assignment]
        ready = bus.providers["csv"].ready
        assert await _cancelled_as_it_is_set(_ready_then_wait(bus), ready, turns), turns
        assert await _cancelled_as_it_is_set(_history(bus), bus._listening, turns), turns
        task = asyncio.create_task(_history(bus))
        await asyncio.sleep(0)  # asked: the reply channel is subscribed
        next(iter(bus._pending.values())).set_result([])  # the answer comes with the cancel
        task.cancel()
        assert await _ends_cancelled(task), turns
