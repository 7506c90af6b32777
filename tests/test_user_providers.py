"""Providers written as users write them (``tests/user_providers.py``, and the README's
example copied as it stands), run together by the real ``populate.py`` and ``server.py``
and used by real WebSocket clients: what the chart sees, what ``/health`` and the log say,
and that one provider's bugs leave the others and the clients' next steps alone."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.harness import ROOT, ServerProcess, WsClient, eventually, same_key

PROVIDERS = {
    "my_provider": "readme_provider:MyProvider",
    "seedport": "tests.user_providers:SeedPortProvider",
    "typed": "tests.user_providers:TypedProvider",
    "sloppy": "tests.user_providers:SloppyProvider",
    "buggy": "tests.user_providers:BuggyProvider",
    "blockstart": "tests.user_providers:BlockingStartProvider",
    "flood": "tests.user_providers:FloodProvider",
    "crashing": "tests.user_providers:CrashingProvider",
    "badinit": "tests.user_providers:BadInitProvider",
    "renamed": "tests.user_providers:RenamedSeedProvider",
    "owninit": "tests.user_providers:OwnInitProvider",
}


def readme_provider_source() -> str:
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        if block.startswith("# backend/data_providers/my_provider.py"):
            return str(block)
    raise AssertionError("no provider example in the README")


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "server.log"
        self.hooks = tmp / "hooks.log"
        self.populate_output = ""
        self.server: ServerProcess

    def hook_lines(self) -> list[str]:
        return self.hooks.read_text().splitlines() if self.hooks.exists() else []

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = self.server.get("/health")
        return health


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("users")
    (tmp / "readme_provider.py").write_text(readme_provider_source())
    state = Run(tmp)
    env = harness.base_env(
        tmp,
        PROVIDERS=",".join(PROVIDERS),
        EXTRA_PROVIDERS=",".join(f"{k}={v}" for k, v in PROVIDERS.items()),
        PYTHONPATH=f"{tmp}:{ROOT}",
        CANDLEWIRE_TEST_LOG=str(state.hooks),
        HISTORY_TIMEOUT="3",
        HEARTBEAT_TIMEOUT="4",
        STREAM_LINGER_SECONDS="0.3",
    )
    result = harness.populate(env)
    state.populate_output = result.stdout + result.stderr
    state.server = ServerProcess(env, state.log).start(healthy=False)
    try:
        yield state
    finally:
        state.server.stop()


@pytest.fixture
async def client(run: Run) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(run.server.ws_url)
    try:
        yield ws
    finally:
        await ws.close()


def data(source: str, name: str, interval: str = "1m", count: int = 50) -> dict[str, Any]:
    return {
        "type": "data",
        "source": source,
        "name": name,
        "interval": interval,
        "count": count,
    }


def about(name: str, interval: str = "1m") -> Any:
    return same_key(name, interval)


def of_source(source: str, name: str, interval: str = "1m") -> Any:
    return lambda m: (
        m.get("source") == source and m.get("name") == name and m.get("interval") == interval
    )


def dates_ok(bars: list[dict[str, Any]]) -> None:
    dates = [b["date"] for b in bars]
    assert dates == sorted(set(dates)), dates[:5]
    for d in dates:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", d), d


# ---------------------------------------------------------------------- populate and start


def test_populate_fills_the_good_providers_and_names_the_broken_one(run: Run) -> None:
    out = run.populate_output
    assert "badinit" in out and "vendor login failed" in out, out[-2000:]
    assert "skipped invalid row 'NOLABEL': name_label must be a string" in out, out[-2000:]


async def test_search_finds_sloppy_rows_once_including_unicode(client: WsClient) -> None:
    await client.send({"type": "search_data", "search": "AAA"})
    found = await client.wait_for("search_data_done")
    ids = [r["id"] for r in found["results"]]
    assert ids.count("sloppy-AAA") == 1, ids
    await client.send({"type": "search_data", "search": "Ü€"})
    found = await client.wait_for("search_data_done", lambda m: m["results"], after=1)
    assert any(r["name"] == "Ü€-株式" for r in found["results"]), found


def test_health_shows_the_broken_init_as_failed_and_the_others_running(run: Run) -> None:
    deadline = time.monotonic() + harness.seconds(20)
    while True:
        providers = run.health()["providers"]
        others = {k: p["state"] for k, p in providers.items() if k != "badinit"}
        if set(others.values()) == {"running"} and providers["badinit"]["status"] == "failed":
            break
        assert time.monotonic() < deadline, providers
        time.sleep(0.2)
    bad = providers["badinit"]
    assert "ConnectionRefusedError" in (bad["last_error"] or bad["status_detail"]), bad
    # the hub is up but does not serve all it should: so says the status a monitor reads
    health = run.health()
    assert health["status"] == "degraded", health
    assert health["reason"].startswith("provider badinit "), health["reason"]
    assert "ConnectionRefusedError" in health["reason"], health["reason"]
    text = run.log.read_text()
    assert "provider badinit: init() failed" in text


async def test_a_chart_of_the_provider_that_cannot_start_gets_an_error_at_once(
    client: WsClient,
) -> None:
    began = time.monotonic()
    await client.send(data("badinit", "AAA"))
    init = await client.wait_for("data_init", of_source("badinit", "AAA"), timeout=10)
    assert init["data"] == []
    error = await client.wait_for("error")
    assert "badinit" in error["message"], error
    assert time.monotonic() - began < harness.seconds(5)
    await client.send({"type": "ping"})
    await client.wait_for("pong")


# ---------------------------------------------------------------------- users' providers


async def test_the_readme_example_streams(client: WsClient) -> None:
    await client.send(data("my_provider", "BTCUSDT", "1m", 40))
    init = await client.wait_for("data_init", about("BTCUSDT"))
    assert len(init["data"]) == 40
    dates_ok(init["data"])
    await client.wait_for("data_update", about("BTCUSDT"))


async def test_the_seed_port_serves_history_streams_and_scrolls_back(
    run: Run, client: WsClient
) -> None:
    await client.send(data("seedport", "BTCUSDT", "1m", 100))
    init = await client.wait_for("data_init", of_source("seedport", "BTCUSDT"))
    assert len(init["data"]) == 100
    dates_ok(init["data"])
    assert "seedport-BTCUSDT-1m-close" in init["data"][-1]
    update = await client.wait_for("data_update", of_source("seedport", "BTCUSDT"))
    assert update["data"]["date"] >= init["data"][-1]["date"]
    first = init["data"][0]["date"]
    await client.send(
        {
            "type": "data_history",
            "source": "seedport",
            "name": "BTCUSDT",
            "interval": "1m",
            "end": first,
            "count": 30,
        }
    )
    history = await client.wait_for("data_history", of_source("seedport", "BTCUSDT"))
    assert len(history["data"]) == 30 and history["data"][-1]["date"] <= first
    assert client.of_type("error") == []
    assert any("now UTC" in line for line in run.hook_lines() if "seedport" in line)


async def test_publish_and_first_last_hooks(run: Run) -> None:
    a = await WsClient.open(run.server.ws_url)
    b = await WsClient.open(run.server.ws_url)
    for ws in (a, b):
        await ws.send(data("typed", "AAA", "5m", 20))
        await ws.wait_for("data_update", of_source("typed", "AAA", "5m"))
    await a.close()
    await asyncio.sleep(1)
    assert "typed last AAA 5m" not in run.hook_lines()
    await b.close()
    await eventually(lambda: "typed last AAA 5m" in run.hook_lines(), 5, "on_last_subscriber")
    assert run.hook_lines().count("typed first AAA 5m") == 1


async def test_an_own_init_without_super_streams(run: Run, client: WsClient) -> None:
    await client.send(data("owninit", "AAA"))
    await client.wait_for("data_init", of_source("owninit", "AAA"))
    await eventually(lambda: len(client.of_type("data_update")) >= 8, 10, "updates for 2 s")
    assert run.health()["providers"]["owninit"]["restarts"] == 0
    assert client.of_type("error") == []


async def test_sloppy_history_is_cleaned(client: WsClient) -> None:
    for name in ("AAA", "NUMS", "EPOCH", "BARE"):
        await client.send(data("sloppy", name, "5m", 60))
        init = await client.wait_for("data_init", of_source("sloppy", name, "5m"))
        assert 55 <= len(init["data"]) <= 60, (name, len(init["data"]))
        dates_ok(init["data"])
        for bar in init["data"]:
            for key, value in bar.items():
                if key != "date":
                    assert value is None or isinstance(value, float | int), (name, bar)
    assert client.of_type("error") == []


async def test_sloppy_history_beyond_the_window_asked_stays_out_of_a_page(
    client: WsClient,
) -> None:
    await client.send(data("sloppy", "EPOCH", "1h", 10))
    init = await client.wait_for("data_init", of_source("sloppy", "EPOCH", "1h"))
    end = init["data"][-5]["date"]
    await client.send(
        {
            "type": "data_history",
            "source": "sloppy",
            "name": "EPOCH",
            "interval": "1h",
            "end": end,
            "count": 30,
        }
    )
    history = await client.wait_for("data_history", of_source("sloppy", "EPOCH", "1h"))
    assert len(history["data"]) == 30
    dates_ok(history["data"])
    assert history["data"][-1]["date"] == end


async def test_a_renamed_seed_copy_gets_a_clear_error_at_once(run: Run, client: WsClient) -> None:
    began = time.monotonic()
    await client.send(data("renamed", "BTCUSDT"))
    init = await client.wait_for("data_init", of_source("renamed", "BTCUSDT"))
    assert init["data"] == []
    error = await client.wait_for("error")
    assert error["code"] == "provider_error" and "is a bar" in error["message"], error
    assert time.monotonic() - began < harness.seconds(3)
    text = run.log.read_text()
    assert "datapoint key 'seedport-BTCUSDT-1m-open' is not of renamed-BTCUSDT-1m" in text


# ---------------------------------------------------------------------- buggy providers


async def test_a_history_that_raises_gets_an_error_and_the_socket_goes_on(
    run: Run, client: WsClient
) -> None:
    await client.send(data("buggy", "RAISE"))
    init = await client.wait_for("data_init", of_source("buggy", "RAISE"))
    assert init["data"] == []
    error = await client.wait_for("error")
    assert "buggy" in error["message"], error
    await eventually(
        lambda: "provider buggy: get_history failed" in run.log.read_text(), 5, "the hook named"
    )
    await client.send(data("buggy", "OK"))
    await client.wait_for("data_update", of_source("buggy", "OK"))


async def test_a_blocking_history_times_out_and_other_keys_are_served(
    run: Run, client: WsClient
) -> None:
    began = time.monotonic()
    await client.send(data("buggy", "BLOCK"))
    other = await WsClient.open(run.server.ws_url)
    try:
        await other.send(data("buggy", "OK", "1h", 10))
        init = await other.wait_for("data_init", of_source("buggy", "OK", "1h"), timeout=3)
        assert len(init["data"]) == 10
    finally:
        await other.close()
    await client.wait_for("data_init", of_source("buggy", "BLOCK"), timeout=10)
    error = await client.wait_for("error", timeout=2)
    assert time.monotonic() - began < harness.seconds(8)
    assert "timeout" in error["code"] or "unavailable" in error["code"], error


async def test_a_blocking_start_streaming_is_reported_and_other_providers_go_on(
    run: Run, client: WsClient
) -> None:
    await client.send(data("blockstart", "STUCK"))
    await client.wait_for("data_init", of_source("blockstart", "STUCK"))
    error = await client.wait_for("error", timeout=10)
    assert "start_streaming" in error["message"], error
    health = run.health()["providers"]["blockstart"]
    assert health["status"] == "stuck", health
    other = await WsClient.open(run.server.ws_url)
    try:
        await other.send(data("typed", "BBB"))
        await other.wait_for("data_update", of_source("typed", "BBB"))
    finally:
        await other.close()
    assert "provider blockstart: start_streaming('STUCK', '1m') has not returned" in (
        run.log.read_text()
    )


async def test_on_close_that_raises_is_logged_and_resubscribing_works(run: Run) -> None:
    ws = await WsClient.open(run.server.ws_url)
    await ws.send(data("buggy", "CLOSERAISE"))
    await ws.wait_for("data_init", of_source("buggy", "CLOSERAISE"))
    await ws.close()
    await eventually(
        lambda: "provider buggy: hook failed: on_close('CLOSERAISE', '1m')" in run.log.read_text(),
        5,
        "on_close logged, naming the hook as its author wrote it",
    )
    assert "on_close broke" in run.log.read_text()
    ws = await WsClient.open(run.server.ws_url)
    try:
        await ws.send(data("buggy", "CLOSERAISE"))
        init = await ws.wait_for("data_init", of_source("buggy", "CLOSERAISE"))
        assert len(init["data"]) == 50
    finally:
        await ws.close()


async def test_ghost_publishing_reaches_only_subscribers(run: Run) -> None:
    ghost = await WsClient.open(run.server.ws_url)
    await ghost.send(data("buggy", "GHOST"))
    await ghost.wait_for("data_update", of_source("buggy", "GHOST"))
    await ghost.close()
    watcher = await WsClient.open(run.server.ws_url)
    try:
        await watcher.send(data("buggy", "OK", "5m", 5))
        await watcher.wait_for("data_update", of_source("buggy", "OK", "5m"))
        await asyncio.sleep(1)
        names = {(m.get("name"), m.get("interval")) for m in watcher.of_type("data_update")}
        assert names == {("OK", "5m")}, names
    finally:
        await watcher.close()
    health = run.health()
    assert health["providers"]["buggy"]["state"] == "running"


async def test_junk_through_send_from_leaves_the_provider_and_hub_working(
    run: Run, client: WsClient
) -> None:
    await client.send(data("buggy", "JUNK"))
    await client.wait_for("data_init", of_source("buggy", "JUNK"))
    # the junk takes 0.65 s, then good bars come every 0.2 s
    await eventually(lambda: len(client.of_type("data_update")) >= 3, 10, "bars after junk")
    n = len(client.of_type("data_update"))
    await eventually(lambda: len(client.of_type("data_update")) > n + 2, 5, "good bars after junk")
    for update in client.of_type("data_update"):
        assert update["name"] == "JUNK" and update["interval"] == "1m", update
    providers = run.health()["providers"]
    assert providers["buggy"]["restarts"] == 0, providers["buggy"]
    text = run.log.read_text()
    assert "Exception in callback" not in text and "Exception in thread" not in text
    assert "send_from() takes a message dict or an event, not tuple" in text
    assert [line for line in run.hook_lines() if line.startswith("junk raised")] == []


async def test_a_flood_is_bounded_and_other_clients_keep_up(run: Run) -> None:
    flood = await WsClient.open(run.server.ws_url)
    calm = await WsClient.open(run.server.ws_url)
    try:
        await flood.send(data("flood", "FAST"))
        await flood.wait_for("data_update", of_source("flood", "FAST"))
        await calm.send(data("typed", "AAA", "1h", 5))
        await calm.wait_for("data_update", of_source("typed", "AAA", "1h"))
        n = len(calm.of_type("data_update"))
        await eventually(
            lambda: len(calm.of_type("data_update")) >= n + 5, 6, "the calm client's updates"
        )
        await calm.send({"type": "ping"})
        await calm.wait_for("pong", timeout=2)
    finally:
        await flood.close()
        await calm.close()
    assert run.health()["providers"]["flood"]["state"] == "running"


async def test_a_provider_that_exits_mid_stream_is_restarted_and_charts_go_on(
    run: Run, client: WsClient
) -> None:
    await client.send(data("crashing", "AAA"))
    await client.wait_for("data_update", of_source("crashing", "AAA"))
    await eventually(
        lambda: run.health()["providers"]["crashing"]["restarts"] >= 1, 15, "a restart"
    )
    await eventually(
        lambda: sum(line.startswith("crashing first AAA") for line in run.hook_lines()) >= 2,
        15,
        "the subscription started again",
    )
    n = len(client.of_type("data_update"))
    await eventually(lambda: len(client.of_type("data_update")) > n + 3, 10, "updates after")
    assert client.of_type("error") == []  # the chart goes on by itself
    await client.send(
        {
            "type": "data_history",
            "source": "crashing",
            "name": "AAA",
            "interval": "1m",
            "end": client.of_type("data_init")[0]["data"][0]["date"],
            "count": 20,
        }
    )
    history = await client.wait_for("data_history", of_source("crashing", "AAA"))
    assert len(history["data"]) == 20
    assert re.search(
        r"ERROR .*provider crashing \(pid \d+\) exited with code 7", run.log.read_text()
    )


async def test_a_start_streaming_that_raises_tells_the_chart(client: WsClient) -> None:
    await client.send(data("buggy", "STARTRAISE"))
    init = await client.wait_for("data_init", of_source("buggy", "STARTRAISE"))
    assert len(init["data"]) == 50  # history still served
    error = await client.wait_for("error")
    assert error["code"] == "provider_error" and "start_streaming" in error["message"], error


async def test_a_blocking_on_close_is_reported_stuck_and_clears(run: Run) -> None:
    """Last in the module: the buggy provider's hooks wait behind it until the test has seen
    it reported (a hook that slept a fixed 5 s against HEARTBEAT_TIMEOUT=4 left one ping a
    second a window of one second to see it, and a loaded machine missed it)."""
    ws = await WsClient.open(run.server.ws_url)
    await ws.send(data("buggy", "CLOSEBLOCK"))
    await ws.wait_for("data_init", of_source("buggy", "CLOSEBLOCK"))
    await ws.close()
    stuck = "provider buggy: on_close('CLOSEBLOCK', '1m') has not returned"
    # reported some 4.3 to 5.3 s after the close (the linger, HEARTBEAT_TIMEOUT=4, which
    # ``seconds`` does not scale, and the ping that sees it), later on a loaded machine:
    # 8 s left under 3 s to spare
    await eventually(lambda: stuck in run.log.read_text(), 15, "the stuck hook logged")
    buggy = run.health()["providers"]["buggy"]
    assert buggy["status"] == "stuck" and "on_close" in buggy["status_detail"], buggy
    run.hooks.with_name(run.hooks.name + ".release").write_text("")
    # (its BLOCK history call may still be stuck: only the hook leaves the detail)
    await eventually(
        lambda: "on_close" not in run.health()["providers"]["buggy"]["status_detail"],
        8,
        "the stuck hook cleared",
    )
    other = await WsClient.open(run.server.ws_url)
    try:
        await other.send(data("buggy", "OK", "1d", 5))
        await other.wait_for("data_update", of_source("buggy", "OK", "1d"))
    finally:
        await other.close()


def test_no_failure_above_reached_the_hubs_event_loop(run: Run) -> None:
    """Last in the file: what the tests above made the providers do, the hub took in its
    stride (a provider's junk raised in its loop's callback before)."""
    assert "Exception in callback" not in run.log.read_text()
