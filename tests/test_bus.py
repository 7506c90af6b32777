"""Hubs and provider nodes over Redis (issue 14): two provider nodes and two hubs as real
processes on the shared Redis, each module under its own ``BUS_PREFIX``.

One upstream stream for a key held on both hubs, counted at the fake exchange (the counting
provider's log of each node); identical updates on both hubs; a hub killed with SIGKILL
stops counting after one lease and its key stops upstream after the linger; the active
node killed with SIGKILL: the standby takes over, both hubs update again and no closed bar
is missing against the fake's history; ``--workers 2`` serves one port from two
processes; ``populate.py --from-bus`` fills a hub's symbol database from the nodes.
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import bus_deploy, harness
from tests.bus_deploy import LEASE, LINGER, SHARED_REDIS
from tests.harness import ServerProcess, WsClient, same_key
from tests.providers import bar


@dataclass
class Deployment:
    tmp: Path
    prefix: str
    nodes: list[ServerProcess] = field(default_factory=list)
    hubs: list[ServerProcess] = field(default_factory=list)

    @property
    def symbols(self) -> Path:
        """The symbol database the hubs start with (filled by ``populate.py``)."""
        return self.tmp / "symbols.sqlite3"

    def env(self, name: str) -> dict[str, str]:
        return bus_deploy.bus_env(self.tmp, SHARED_REDIS, self.prefix, name)

    def active(self) -> ServerProcess:
        alive = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        holders = [n for n in alive if bus_deploy.holds_lease(n)]
        assert len(holders) == 1, f"{len(holders)} nodes hold the lease"
        return holders[0]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("bus")
    deploy = Deployment(tmp, bus_deploy.new_prefix())
    try:
        with ThreadPoolExecutor(1) as pool:  # the hubs' symbols, while the nodes start
            symbols = pool.submit(harness.populate, deploy.env("symbols"))
            deploy.nodes = bus_deploy.start_all(
                *(partial(bus_deploy.node, deploy.env(n), tmp, n) for n in ("node1", "node2"))
            )
            assert symbols.result().returncode == 0
        deploy.hubs = bus_deploy.start_all(
            *(
                partial(bus_deploy.hub, deploy.env(name), tmp, name, symbols=deploy.symbols)
                for name in ("hubA", "hubB")
            )
        )
        yield deploy
    finally:
        for process in deploy.hubs + deploy.nodes:
            process.stop()


def log_of(process: ServerProcess) -> list[str]:
    return bus_deploy.lines(process.env)


def updates(client: WsClient, name: str, after: int = 0) -> list[tuple[Any, ...]]:
    return [
        tuple(sorted(m["data"].items()))
        for m in client.of_type("data_update", after)
        if same_key(name, "1m")(m)
    ]


def distinct(seen: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The states in order of first appearance."""
    return list(dict.fromkeys(seen))


def test_populate_from_bus_fills_the_hub_symbol_database(deployment: Deployment) -> None:
    env = deployment.env("frombus")
    result = harness.populate(env, "--from-bus")
    assert result.returncode == 0, result.stderr
    assert "counting: 4 rows" in result.stdout
    with sqlite3.connect(env["DB"]) as db:
        names = sorted(name for (name,) in db.execute("SELECT name FROM symbols"))
    assert names == ["AAA", "BBB", "CCC", "HANG"]
    # Only a node ran the provider: nothing here has its credentials or its code running.
    assert not bus_deploy.lines(env)


async def test_two_hubs_get_identical_updates_from_one_upstream_stream(
    deployment: Deployment,
) -> None:
    a = await WsClient.open(deployment.hubs[0].ws_url)
    b = await WsClient.open(deployment.hubs[1].ws_url)
    try:
        for client in (a, b):
            await client.send(
                {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
            )
            await client.wait_for("data_init", same_key("AAA", "1m"))
        await harness.eventually(
            lambda: len(distinct(updates(a, "AAA"))) >= 4 and len(distinct(updates(b, "AAA"))) >= 4,
            what="updates on both hubs",
        )
        seen_a, seen_b = updates(a, "AAA"), updates(b, "AAA")
        # Both saw the same stream: the states of the bar in the same order, and the states
        # that neither hub saw at the start or end of its window reached both hubs about as
        # many times (each batch crossed Redis once, to both). Not exactly as many: a hub
        # whose client's outbox still holds an unsent update of the bar replaces it with the
        # next (forming-bar conflation), so on a loaded machine one hub may deliver a
        # repeated state fewer times; a batch delivered twice would double the count.
        states_a, states_b = distinct(seen_a), distinct(seen_b)
        common = [s for s in states_a if s in states_b]
        assert common == [s for s in states_b if s in states_a]
        assert len(common) >= 2
        ends = {seen_a[0], seen_a[-1], seen_b[0], seen_b[-1]}
        interior = [state for state in common if state not in ends]
        count_a = sum(seen_a.count(state) for state in interior)
        count_b = sum(seen_b.count(state) for state in interior)
        assert count_a < 2 * count_b and count_b < 2 * count_a, (count_a, count_b)
        active = deployment.active()
        standby = next(n for n in deployment.nodes if n is not active)
        assert log_of(active).count("first AAA 1m") == 1
        assert "first AAA 1m" not in log_of(standby)
        health = deployment.hubs[0].get("/health")
        assert health["bus"]["state"] == "up"
        assert health["bus"]["holders"] == {"counting": active.get("/health")["node"]}
        assert health["providers"]["counting"]["node"] == active.get("/health")["node"]
        assert "AAA 1m" in active.get("/health")["providers"]["counting"]["streams"]
    finally:
        await a.close()
        await b.close()


async def test_a_killed_hub_stops_counting_after_lease_and_linger(
    deployment: Deployment,
) -> None:
    doomed = bus_deploy.hub(
        deployment.env("hubC"), deployment.tmp, "hubC", symbols=deployment.symbols
    )
    try:
        client = await WsClient.open(doomed.ws_url)
        await client.send(
            {"type": "data", "source": "counting", "name": "BBB", "interval": "1m", "count": 3}
        )
        await client.wait_for("data_update", same_key("BBB", "1m"))
        active = deployment.active()
        assert log_of(active).count("first BBB 1m") == 1
        assert doomed.proc is not None
        doomed.proc.kill()
        killed = time.monotonic()
        await harness.eventually(
            lambda: "last BBB 1m" in log_of(active),
            timeout=LEASE + LINGER + 5,
            what="the upstream stop of the dead hub's key",
        )
        # Not before its demand expired (at least two thirds of a lease) plus the linger.
        assert time.monotonic() - killed >= LEASE * 2 / 3 + LINGER - 0.3
        await client.close()
    finally:
        doomed.stop()


def test_workers_serve_one_port_from_two_processes(deployment: Deployment) -> None:
    server = bus_deploy.hub(
        deployment.env("hubW"), deployment.tmp, "hubW", "--workers", "2", symbols=deployment.symbols
    )
    try:
        pids: set[int] = set()

        def another() -> bool:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                pids.add(json.loads(response.read())["pid"])
            return len(pids) == 2

        harness.until(another, 20, "answers from two worker processes")
        assert server.proc is not None and server.proc.pid in pids
    finally:
        server.stop()
    harness.until(lambda: not any(psutil.pid_exists(p) for p in pids), 20, "both workers gone")


def test_a_worker_that_dies_is_logged_and_started_again(deployment: Deployment) -> None:
    """Worker 1 notices a worker that exits (here: SIGKILL), logs it and starts a new one on
    the same port; stopping the server stops the new one too."""
    server = bus_deploy.hub(
        deployment.env("hubR"), deployment.tmp, "hubR", "--workers", "2", symbols=deployment.symbols
    )
    try:
        assert server.proc is not None
        first = server.proc.pid
        seen: set[int] = set()

        def answering() -> set[int]:
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                    seen.add(json.loads(response.read())["pid"])
            except OSError:  # a connection queued at the killed worker is reset: ask again
                pass
            return seen

        harness.until(lambda: len(answering()) == 2, 20, "answers from two worker processes")
        (doomed,) = seen - {first}
        os.kill(doomed, signal.SIGKILL)
        seen.clear()
        harness.until(
            lambda: len(answering() - {first, doomed}) == 1, 30, "answers from a new worker"
        )
        (restarted,) = seen - {first, doomed}
        assert psutil.Process(restarted).ppid() == first
        log = server.log_path.read_text()
        assert f"hub worker 2 (pid {doomed}) exited (killed by SIGKILL)" in log
        assert f"hub worker 2 started again (pid {restarted})" in log
    finally:
        server.stop()
    harness.until(
        lambda: not any(psutil.pid_exists(p) for p in (first, restarted)), 20, "every worker gone"
    )


def expected_close(t: int, name: str) -> float:
    return bar(t, "1m", t + 60, sum(map(ord, name)) % 7)[4]


async def test_the_standby_takes_over_when_the_active_node_is_killed(
    deployment: Deployment,
) -> None:
    a = await WsClient.open(deployment.hubs[0].ws_url)
    b = await WsClient.open(deployment.hubs[1].ws_url)
    try:
        for client in (a, b):
            await client.send(
                {"type": "data", "source": "counting", "name": "CCC", "interval": "1m", "count": 5}
            )
            await client.wait_for("data_update", same_key("CCC", "1m"))
        active = deployment.active()
        standby = next(n for n in deployment.nodes if n is not active)
        assert active.proc is not None
        active.proc.kill()
        killed = time.monotonic()
        await harness.eventually(
            lambda: bus_deploy.holds_lease(standby), LEASE + 10, "the standby's lease"
        )
        new_node = standby.get("/health")["node"]
        for server in deployment.hubs:
            await harness.eventually(
                lambda server=server: (
                    server.get("/health")["providers"]["counting"]["node"] == new_node
                ),
                10,
                "the hubs to see the new holder",
            )
        # From here on an update comes from the new holder (not one the killed node
        # published just before it died).
        mark_a, mark_b = len(a.messages), len(b.messages)
        for client, mark in ((a, mark_a), (b, mark_b)):
            await client.wait_for("data_update", same_key("CCC", "1m"), LEASE + 10, mark)
        took = time.monotonic() - killed
        assert log_of(standby).count("first CCC 1m") == 1
        # No closed bar missing or wrong on either hub, against the fake's history.
        for server in deployment.hubs:
            fresh = await WsClient.open(server.ws_url)
            await fresh.send(
                {"type": "data", "source": "counting", "name": "CCC", "interval": "1m", "count": 15}
            )
            init = await fresh.wait_for("data_init", same_key("CCC", "1m"))
            await fresh.close()
            rows = init["data"][:-1]  # the last one may still be forming
            times = [calendar.timegm(time.strptime(r["date"], "%Y-%m-%d %H:%M:%S")) for r in rows]
            assert len(rows) == 14
            assert all(later - earlier == 60 for earlier, later in itertools.pairwise(times))
            for t, row in zip(times, rows, strict=True):
                assert row["counting-CCC-1m-close"] == expected_close(t, "CCC")
                assert row["counting-CCC-1m-volume"] == 1
        print(f"failover: {took:.2f} s from SIGKILL to an update on both hubs (pid {os.getpid()})")
    finally:
        await a.close()
        await b.close()


async def test_a_hub_stalled_past_its_lease_counts_its_providers_as_restarted(
    deployment: Deployment,
) -> None:
    """Its demand expired and the node stopped its keys; it resumed renewing as if nothing
    had happened, so the bars that closed meanwhile were missing and the span was stored as
    covered (a permanent hole). Now the lapse is a provider restart: demand replayed, what
    was missed refilled from history. (Last in this module: it stops hub B for a while.)"""
    stalled = deployment.hubs[1]
    client = await WsClient.open(stalled.ws_url)
    try:
        await client.send(
            {"type": "data", "source": "counting", "name": "BBB", "interval": "1m", "count": 5}
        )
        await client.wait_for("data_update", same_key("BBB", "1m"))
        assert stalled.proc is not None

        def stops() -> int:
            return sum(line == "last BBB 1m" for n in deployment.nodes for line in log_of(n))

        stopped = stops()
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            await harness.eventually(  # its demand expired: the node stopped the key
                lambda: stops() > stopped,
                LEASE + LINGER + 15,
                "the key to stop upstream",
            )
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)
        await harness.eventually(
            lambda: "every provider counts as restarted" in stalled.log_path.read_text(),
            10,
            "the hub to notice its lapse",
        )
        await harness.eventually(
            lambda: "bars refilled after the provider restarted" in stalled.log_path.read_text(),
            10,
            "the refill",
        )
        mark = len(client.messages)
        await client.wait_for("data_update", same_key("BBB", "1m"), LEASE + 10, mark)
    finally:
        await client.close()
