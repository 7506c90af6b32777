"""End to end: the real server.py, real provider processes, a real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from backend.model import intervals
from backend.settings import Settings
from tests import harness
from tests.harness import ServerProcess, WsClient, base_env, populate, populated_server, seconds

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
FIELDS = ("open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hub")
    with populated_server(
        tmp, PROVIDERS="counting,my_provider", HISTORY_TIMEOUT="3", STREAM_LINGER_SECONDS="0.5"
    ) as running:
        yield running


def data(name: str, interval: str = "1m", source: str = "counting", **extra: object) -> dict:
    return {"type": "data", "source": source, "name": name, "interval": interval, **extra}


def same_key(name: str, interval: str = "1m") -> Callable[[dict[str, Any]], bool]:
    return harness.same_key(name, interval)


def provider_log(server: ServerProcess) -> list[str]:
    path = Path(server.env["CANDLEWIRE_TEST_LOG"])
    return path.read_text().splitlines() if path.exists() else []


async def test_search_ranks_the_exact_symbol_first(client: WsClient) -> None:
    await client.send({"type": "search_data", "search": "aaa"})
    message = await client.wait_for("search_data_done")
    first = message["results"][0]
    assert first["name"] == "AAA"
    assert first["id"] == "counting-AAA"
    assert first["type"] == "data"
    assert first["details"]["type"] == "candlestick"


async def test_data_init_has_exactly_count_ascending_bars_with_protocol_keys(
    client: WsClient,
) -> None:
    await client.send(data("AAA", count=300))
    init = await client.wait_for("data_init", same_key("AAA"))
    bars = init["data"]
    assert len(bars) == 300
    assert init["metadata"]["name"] == "AAA"
    dates = [bar["date"] for bar in bars]
    assert all(DATE.match(d) for d in dates)
    assert dates == sorted(dates)
    assert len(set(dates)) == 300
    keys = {"date", *(f"counting-AAA-1m-{f}" for f in FIELDS)}
    assert all(set(bar) == keys for bar in bars)
    assert all(isinstance(bar["counting-AAA-1m-close"], float) for bar in bars)


async def test_live_updates_only_touch_the_forming_bar_or_newer(client: WsClient) -> None:
    await client.send(data("BBB", "1m", count=10))
    init = await client.wait_for("data_init", same_key("BBB"))
    last = init["data"][-1]["date"]
    start = len(client.messages)
    await client.wait_for("data_update", same_key("BBB"), timeout=2, after=start)

    def bbb_dates() -> list[str]:
        return [
            m["data"]["date"] for m in client.of_type("data_update", start) if m["name"] == "BBB"
        ]

    await harness.eventually(lambda: len(bbb_dates()) >= 5, what="5 updates of BBB")
    dates = bbb_dates()
    assert dates
    assert dates[0] >= last
    assert dates == sorted(dates)
    update = client.of_type("data_update", start)[0]
    assert set(update["data"]) == {"date", *(f"counting-BBB-1m-{f}" for f in FIELDS)}


async def test_history_pages_back_with_exact_counts_and_ends_empty(client: WsClient) -> None:
    await client.send(data("CCC", "1h", count=50, stream=False))
    init = await client.wait_for("data_init", same_key("CCC", "1h"))
    end = init["data"][0]["date"]
    await client.send(
        {
            "type": "data_history",
            "source": "counting",
            "name": "CCC",
            "interval": "1h",
            "end": end,
            "count": 120,
        }
    )
    page = await client.wait_for("data_history", same_key("CCC", "1h"))
    dates = [bar["date"] for bar in page["data"]]
    assert len(dates) == 120
    assert dates == sorted(dates)
    assert dates[-1] == end  # inclusive end: the client de-duplicates
    after = len(client.messages)
    await client.send(
        {
            "type": "data_history",
            "source": "counting",
            "name": "CCC",
            "interval": "1h",
            "end": "1990-01-01 00:00:00",
            "count": 100,
        }
    )
    empty = await client.wait_for("data_history", same_key("CCC", "1h"), timeout=30, after=after)
    assert empty["data"] == []


async def test_history_past_max_count_pages_back_the_newest_max_count_bars(
    server: ServerProcess,
) -> None:
    """Tradiny's front end asks ``data_history`` for as far past the chart's left edge as
    the view reaches (its oldest row's index + |domain[0]|): zoomed out on a 1m chart it
    asked 20,742 bars, then 43,681. Those got ``count_out_of_range`` and ``[]``, so the
    chart stopped paging back with history left. The newest ``MAX_COUNT`` bars up to
    ``end`` let it page on (an ``error`` ``count_out_of_range`` says the count was cut)."""
    limit = Settings.model_fields["MAX_COUNT"].default
    client = await WsClient.open(server.ws_url, max_size=None)  # 10,000 bars: 1.8 MB
    try:
        await client.send(data("CCC", "1m", count=300, stream=False))
        init = await client.wait_for("data_init", same_key("CCC"))
        end = init["data"][0]["date"]
        for count in (20_742, limit + 1):
            after = len(client.messages)
            request = {"type": "data_history", "source": "counting", "name": "CCC"}
            await client.send({**request, "interval": "1m", "end": end, "count": count})
            page = await client.wait_for("data_history", same_key("CCC"), timeout=30, after=after)
            errors = client.of_type("error", after)  # said, before the page
            assert [e["code"] for e in errors] == ["count_out_of_range"], errors
            assert f"at most {limit}" in errors[0]["message"]
            assert errors[0]["request"]["count"] == count
            dates = [bar["date"] for bar in page["data"]]
            assert len(dates) == limit
            assert dates[-1] == end  # inclusive end: the client de-duplicates
            times = [intervals.parse_date(d) for d in dates]
            assert all(b - a == 60 for a, b in itertools.pairwise(times))
    finally:
        await client.close()


async def test_data_past_max_count_gets_the_latest_max_count_bars_and_streams(
    server: ServerProcess,
) -> None:
    """A series added to a Tradiny chart asks for as many bars as the chart holds
    (``count: this.data.length``): 18,046 after scrolling a 1m chart back. That got
    ``count_out_of_range`` and an empty ``data_init``, on which the front end drops the
    new pane (and throws). The latest ``MAX_COUNT`` bars, streamed, add the series; the
    ``count_out_of_range`` error still says the count was cut."""
    limit = Settings.model_fields["MAX_COUNT"].default
    client = await WsClient.open(server.ws_url, max_size=None)  # 10,000 bars: 1.8 MB
    try:
        await client.send(data("BBB", "1m", count=18_046))  # as Tradiny's addData() sends it
        init = await client.wait_for("data_init", same_key("BBB"), timeout=30)
        errors = client.of_type("error")  # said, before the data_init (a stock client ignores it)
        assert [e["code"] for e in errors] == ["count_out_of_range"], errors
        dates = [bar["date"] for bar in init["data"]]
        assert len(dates) == limit
        times = [intervals.parse_date(d) for d in dates]
        assert all(b - a == 60 for a, b in itertools.pairwise(times))
        update = await client.wait_for("data_update", same_key("BBB"), timeout=10)
        assert update["data"]["date"] >= dates[-1]
    finally:
        await client.close()


async def test_unsubscribe_stops_updates(client: WsClient) -> None:
    await client.send(data("AAA", "3m", count=5))
    await client.wait_for("data_update", same_key("AAA", "3m"))
    await client.send(
        {"type": "unsubscribe", "source": "counting", "name": "AAA", "interval": "3m"}
    )
    await client.wait_for("unsubscribed", same_key("AAA", "3m"))
    mark = len(client.messages)
    await asyncio.sleep(0.6)
    assert not [m for m in client.of_type("data_update", mark) if same_key("AAA", "3m")(m)]


async def test_unknown_symbol_gets_an_empty_data_init_and_an_error(client: WsClient) -> None:
    await client.send(data("NOPE"))
    init = await client.wait_for("data_init", same_key("NOPE"))
    assert init["data"] == []
    error = await client.wait_for("error")
    assert error["code"] == "unknown_symbol"
    assert error["request"]["name"] == "NOPE"


async def test_an_unknown_source_is_named_with_the_enabled_ones(client: WsClient) -> None:
    await client.send(data("AAA", source="nope"))
    init = await client.wait_for("data_init", same_key("AAA"))
    assert init["data"] == []
    error = await client.wait_for("error")
    assert error["code"] == "unknown_source"
    assert "counting" in error["message"]


BAD_FRAMES = [
    ("not json at all", "bad_json"),
    ("42", "bad_request"),
    ('[{"type":"dance"}]', "unknown_type"),
    ('[{"type":"data","source":"counting","interval":"1m"}]', "missing_field"),
    ('[{"type":"data","source":"counting","name":7,"interval":"1m"}]', "invalid_field"),
    (
        '[{"type":"data","source":"counting","name":"AAA","interval":"1m","count":-1}]',
        "count_out_of_range",
    ),
    ('[{"type":"data","source":"counting","name":"AAA","interval":"7m"}]', "unknown_interval"),
    (json.dumps([{"type": "ping"}] * 1000), "limit_reached"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
async def test_bad_input_is_answered_with_an_error_and_the_socket_stays_usable(
    server: ServerProcess, client: WsClient, frame: str, code: str
) -> None:
    await client.send_raw(frame)
    error = await client.wait_for("error")
    assert error["code"] == code
    assert error["message"]
    await client.send({"type": "ping", "id": 1})
    await client.wait_for("pong")
    assert server.get("/health")["status"] == "ok"


async def test_a_frame_over_max_frame_bytes_closes_only_that_socket(
    server: ServerProcess, client: WsClient
) -> None:
    limit = Settings.model_fields["MAX_FRAME_BYTES"].default
    with contextlib.suppress(ConnectionClosed):
        await client.send_raw("[" + " " * (limit + 10) + "]")
    await asyncio.wait_for(client.connection.wait_closed(), seconds(10))
    assert client.connection.close_code == 1009
    other = await WsClient.open(server.ws_url)
    await other.send({"type": "ping"})
    await other.wait_for("pong")
    await other.close()


async def test_two_clients_on_one_key_share_one_upstream_start_and_stop(
    server: ServerProcess,
) -> None:
    first = await WsClient.open(server.ws_url)
    second = await WsClient.open(server.ws_url)
    for ws in (first, second):
        await ws.send(data("AAA", "15m", count=3))
        await ws.wait_for("data_init", same_key("AAA", "15m"))
    await first.close()
    await second.close()
    await harness.eventually(
        lambda: "last AAA 15m" in provider_log(server), what="the upstream stop after the linger"
    )
    log = provider_log(server)
    assert log.count("first AAA 15m") == 1
    assert log.count("last AAA 15m") == 1


async def test_a_provider_written_from_the_seed_streams_unchanged(client: WsClient) -> None:
    await client.send(data("BTCUSDT", "1m", source="my_provider", count=20))
    init = await client.wait_for("data_init", same_key("BTCUSDT"))
    assert len(init["data"]) == 20
    update = await client.wait_for("data_update", same_key("BTCUSDT"), timeout=3)
    assert update["data"]["date"] >= init["data"][-1]["date"]
    assert "my_provider-BTCUSDT-1m-close" in update["data"]


async def test_health_and_metrics_describe_the_running_server(server: ServerProcess) -> None:
    health = server.get("/health")
    assert health["providers"]["counting"]["state"] == "running"
    assert health["providers"]["counting"]["pid"] > 0
    assert "version" in health
    metrics = server.get("/metrics")
    assert "candlewire_clients" in metrics
    assert "candlewire_loop_stall_max_seconds" in metrics  # the stall probe runs


async def test_metrics_parse_as_prometheus_text_with_counters_named_total(
    server: ServerProcess,
) -> None:
    """Every family parses with Prometheus' own parser; a counter (a running total, such as
    the live indicator computations, was typed a gauge) is a counter named ``..._total``;
    the process's memory and open files are there."""
    ws = await WsClient.open(server.ws_url)
    try:
        await ws.send(data("AAA"))
        await ws.wait_for("data_init", same_key("AAA"))
        families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics"))}
    finally:
        await ws.close()
    counters = {name for name, f in families.items() if f.type == "counter"}
    assert {"candlewire_connections_total", "candlewire_indicator_computations_total"} <= {
        name + "_total" for name in counters
    }
    for family in families.values():
        for sample in family.samples:
            if family.type == "gauge":
                assert not sample.name.endswith("_total"), sample.name
            assert math.isfinite(sample.value), sample
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["candlewire_clients"].samples[0].value >= 1
    # each provider process's own memory and threads (its leaks and pools are not the hub's)
    memory = {
        m.labels["source"]: m.value for m in families["candlewire_provider_memory_bytes"].samples
    }
    threads = {m.labels["source"]: m.value for m in families["candlewire_provider_threads"].samples}
    assert memory["counting"] > 10_000_000 and threads["counting"] >= 2
    provider = server.get("/health")["providers"]["counting"]
    assert provider["memory_bytes"] > 10_000_000 and provider["threads"] >= 2


async def test_the_hubs_event_counters_are_exposed_described_before_the_first_event(
    server: ServerProcess,
) -> None:
    """DESIGN 2: a slow client's close "is logged and counted". Its counter (and the other
    event counters without labels) was missing from /metrics until the first event, so a
    scrape or an alert rule could not tell "none yet" from "not exported"; the connections
    counter had an empty HELP."""
    families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics"))}
    for name in (
        "candlewire_slow_client_disconnects",
        "candlewire_updates_conflated",
        "candlewire_connections",
        "candlewire_clients_rejected",
        "candlewire_internal_errors",
        "candlewire_alerts_fired",
        "candlewire_alert_deliveries_dropped",
    ):
        family = families.get(name)
        assert family is not None, f"{name}_total is not in /metrics"
        assert family.type == "counter" and family.samples, name
        assert family.samples[0].value >= 0
    for family in families.values():
        if family.name.startswith("candlewire_"):
            assert family.documentation, f"{family.name} has no HELP text"


# ---------------------------------------------------------------- faults: own servers


def test_an_unknown_path_or_method_gets_the_documented_json_error(server: ServerProcess) -> None:
    """Starlette's own 404 and 405 were ``{"detail": "Not Found"}``, not the README's shape."""
    for path, method, status, code in (
        ("/nonexistent", "GET", 404, "not_found"),
        ("/api/nope", "GET", 404, "not_found"),
        ("/health", "POST", 405, "method_not_allowed"),
    ):
        request = urllib.request.Request(server.url + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        body = json.loads(refused.value.read())
        assert refused.value.code == status
        assert body["error"] == code and body["message"], body


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = base_env(
        tmp_path,
        PROVIDERS="counting",
        HISTORY_TIMEOUT="2",
        OUTBOX_MAX_MESSAGES="50",
        SLOW_CLIENT_TIMEOUT="3",
        CANDLEWIRE_TEST_PERIOD="0.02",
    )
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp_path / "server.log") as running:
        yield running


async def test_killing_a_provider_resumes_updates_without_resubscribing(
    fault_server: ServerProcess,
) -> None:
    ws = await WsClient.open(fault_server.ws_url)
    await ws.send(data("AAA", "1m", count=5))
    await ws.wait_for("data_update", same_key("AAA"))
    pid = fault_server.get("/health")["providers"]["counting"]["pid"]
    os.kill(pid, signal.SIGKILL)
    await harness.eventually(
        lambda: fault_server.get("/health")["providers"]["counting"]["pid"] != pid,
        what="a new provider process",
    )
    mark = len(ws.messages)
    await ws.wait_for("data_update", same_key("AAA"), timeout=5, after=mark)
    health = fault_server.get("/health")["providers"]["counting"]
    assert health["restarts"] == 1
    assert health["pid"] != pid
    # the hub's own status is back to ok once the provider runs again (degraded meanwhile)
    await harness.eventually(
        lambda: fault_server.get("/health")["status"] == "ok", what="health ok again"
    )
    assert "reason" not in fault_server.get("/health")
    await ws.close()


async def test_a_hanging_history_call_errors_in_time_and_others_keep_streaming(
    fault_server: ServerProcess,
) -> None:
    ws = await WsClient.open(fault_server.ws_url)
    try:
        await ws.send(data("AAA", "1m", count=5))
        await ws.wait_for("data_update", same_key("AAA"))
        started = time.monotonic()
        asked_minute = intervals.format_date(int(time.time()) // 60 * 60)
        await ws.send(data("HANG", "1m", count=5))
        mark = len(ws.messages)
        await asyncio.sleep(1.0)  # time passes: the other key must keep streaming meanwhile
        assert [m for m in ws.of_type("data_update", mark) if m["name"] == "AAA"]
        init = await ws.wait_for("data_init", same_key("HANG"), timeout=5)
        # No history, only the live bars that arrived meanwhile (two if a minute passed).
        assert all(bar["date"] >= asked_minute for bar in init["data"])
        error = await ws.wait_for("error", lambda m: m["code"] == "provider_unavailable")
        assert "did not answer" in error["message"]
        assert time.monotonic() - started < seconds(4)
    finally:
        await ws.close()


async def test_a_client_that_never_reads_does_not_delay_a_fast_one(
    fault_server: ServerProcess,
) -> None:
    host, port = fault_server.url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(
        b"GET /websocket/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    names = ["AAA", "BBB", "CCC"]
    frame = json.dumps([data(n, i, count=2000) for n in names for i in ("1m", "3m", "5m")])
    payload = frame.encode()
    mask = b"\x00\x00\x00\x00"
    header = (
        b"\x81\xfe" + len(payload).to_bytes(2, "big")
        if len(payload) < 65536
        else (b"\x81\xff" + len(payload).to_bytes(8, "big"))
    )
    slow.sendall(header + mask + payload)
    server_proc = psutil.Process(fault_server.proc.pid)  # type: ignore[union-attr]
    fast = await WsClient.open(fault_server.ws_url)
    await fast.send(data("AAA", "1m", count=5))
    await fast.wait_for("data_update", same_key("AAA"))
    rss_before = server_proc.memory_info().rss
    gaps = []
    last = time.monotonic()
    mark = len(fast.messages)
    deadline = time.monotonic() + seconds(6)
    while time.monotonic() < deadline:
        await fast.wait_for("data_update", same_key("AAA"), after=mark)
        mark = len(fast.messages)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert max(gaps) < 0.5
    assert server_proc.memory_info().rss - rss_before < 50 * 1024 * 1024
    metrics = fault_server.get("/metrics")
    outbox = float(re.search(r"^candlewire_outbox_frames (\S+)$", metrics, re.M).group(1))
    assert outbox <= 4 * 50 * 2
    slow.close()
    await fast.close()


async def test_a_stopping_server_drops_its_sockets_so_that_clients_reconnect(
    tmp_path: Path,
) -> None:
    """uvicorn closed every socket cleanly (1012) as it stopped, and Tradiny's front end
    reconnects only after an unclean close (``if (!event.wasClean)``): after a restart its
    pages stayed dead until reloaded. The sockets are now dropped without a close frame
    (1006 for the client), and the server still stops cleanly."""
    env = base_env(tmp_path, PROVIDERS="counting")
    assert populate(env).returncode == 0
    running = ServerProcess(env, tmp_path / "server.log").start()
    client = await WsClient.open(running.ws_url)
    await client.send(data("AAA"))
    await client.wait_for("data_init", same_key("AAA"))
    assert running.stop() in (0, -signal.SIGTERM)
    await asyncio.wait_for(client.connection.wait_closed(), seconds(10))
    assert client.connection.protocol.close_rcvd is None  # no close frame: not clean
    assert client.connection.close_code == 1006
    await client.close()
    log = (tmp_path / "server.log").read_text()
    assert "dropped 1 WebSocket connections" in log and "hub stopped" in log


async def test_sigterm_stops_the_server_and_every_provider_process(tmp_path: Path) -> None:
    env = base_env(tmp_path, PROVIDERS="counting,my_provider")
    assert populate(env).returncode == 0
    running = ServerProcess(env, tmp_path / "server.log").start()
    pids = [p["pid"] for p in running.get("/health")["providers"].values()]
    assert running.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "hub stopped" in (tmp_path / "server.log").read_text()

    def alive() -> list[int]:
        return [
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]

    await harness.eventually(lambda: not alive(), timeout=5, what="the providers to exit")
    assert not [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
