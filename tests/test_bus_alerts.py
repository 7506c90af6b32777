"""Alerts on a hub of two workers (``--role hub --workers 2``, one ``DB`` file; issue 14).

A provider node runs ``SteeredProvider``, whose price the test writes, so an alert's rule
turns true exactly when the test says. Sockets are opened until one is served by each
worker process (found by the connection's owner). Alerts made on both workers are listed
alike from either worker and from ``/api/alerts``, one worker deletes an alert another
evaluates, the daily quota holds across workers, and after a restart of the hub every
stored alert fires exactly once per false -> true transition (one webhook call, whichever
worker resumed it), and one deleted through the other worker never fires again. A worker
killed alone and started again resumes the deliveries it stored and evaluates the alerts
its previous process did, not the other's. The store's share, notes of worker and run,
listing and deletion notes are also checked on their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from backend.alerts.store import AlertStore
from backend.hub.alerting import Worker
from tests import bus_deploy, harness
from tests.alerts_e2e import Hooks
from tests.bus_deploy import SHARED_REDIS
from tests.fakes.webpush import FakePush
from tests.harness import ServerProcess, WsClient

OWNER = "alerts-on-workers"
LOW, HIGH = 10.0, 100.0


def steer(env: dict[str, str], price: float) -> None:
    """Every bar from now on is flat at ``price`` (the file is replaced atomically)."""
    path = Path(env["CANDLEWIRE_TEST_PRICE"])
    partial = path.with_suffix(".partial")
    partial.write_text(str(price))
    os.replace(partial, path)


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str]
    node: ServerProcess
    hub: ServerProcess
    fake: FakePush

    def steer(self, price: float) -> None:
        steer(self.env, price)

    def fired(self) -> dict[int, list[int]]:
        """Alert id -> the ``fired`` counts of its webhook calls, in order."""
        calls: dict[int, list[int]] = {}
        for body in self.fake.hook_bodies("all"):
            calls.setdefault(body["alert"]["id"], []).append(body["fired"])
        return calls

    def tombstones(self) -> int:
        with sqlite3.connect(self.env["DB"]) as db:
            (count,) = db.execute("SELECT count(*) FROM alert_deleted").fetchone()
        return int(count)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with FakePush() as fake:
        env = bus_deploy.bus_env(
            tmp_path,
            SHARED_REDIS,
            bus_deploy.new_prefix(),
            "hub",
            EXTRA_PROVIDERS="counting=tests.providers:SteeredProvider",
            CANDLEWIRE_TEST_PRICE=str(tmp_path / "price"),
            CANDLEWIRE_TEST_PERIOD="0.1",
            ALERT_WEBHOOK_URL=f"{fake.url}/hook/all",
            ALERT_RETRY_SECONDS="0.05",
            MAX_ALERTS_PER_DAY="4",
        )
        steer(env, LOW)
        assert harness.populate(env).returncode == 0
        node_env = {**env, "DB": str(tmp_path / "node.sqlite3")}
        node = bus_deploy.node(node_env, tmp_path, "node")
        args = ("--role", "hub", "--workers", "2")
        hub = ServerProcess(env, tmp_path / "hub.server.log", bus_deploy.free_port(), args)
        try:
            hub.start()
            yield Deployment(tmp_path, env, node, hub, fake)
        finally:
            hub.stop()
            node.stop()


def worker_pids(hub: ServerProcess) -> set[int]:
    assert hub.proc is not None
    main = psutil.Process(hub.proc.pid)
    return {main.pid, *(child.pid for child in main.children())}


def worker_of(hub: ServerProcess, client: WsClient) -> int:
    """The pid of the worker process serving ``client``'s socket."""
    local = client.connection.local_address[1]
    for pid in worker_pids(hub):
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local and conn.laddr.port == hub_port(hub):
                return pid
    raise AssertionError(f"no worker holds the socket from port {local}")


def hub_port(hub: ServerProcess) -> int:
    return int(hub.url.rsplit(":", 1)[1])


async def one_client_per_worker(hub: ServerProcess) -> dict[int, WsClient]:
    """Open sockets until each of the two workers serves one (the kernel spreads them)."""
    clients: dict[int, WsClient] = {}
    for _ in range(40):
        client = await WsClient.open(hub.ws_url)
        pid = worker_of(hub, client)
        if pid in clients:
            await client.close()
            continue
        clients[pid] = client
        if len(clients) == 2:
            break
    assert len(clients) == 2, "40 sockets all went to one worker"
    return clients


def rule(threshold: float) -> dict[str, str]:
    """``close > threshold`` of AAA 1m."""
    return {
        "type1": "data",
        "source1": "counting",
        "name1": "AAA",
        "interval1": "1m",
        "key1": "close",
        "comparator": ">",
        "type2": "value",
        "value2": str(threshold),
    }


async def ask(client: WsClient, request: dict[str, Any], *kinds: str) -> dict[str, Any]:
    """Send ``request``; its answer: the first message of one of ``kinds``, or an ``error``."""
    mark = len(client.messages)
    await client.send(request)
    wanted = (*kinds, "error")

    def reply() -> dict[str, Any] | None:
        return next((m for m in client.messages[mark:] if m.get("type") in wanted), None)

    await harness.eventually(lambda: reply() is not None, 10, f"an answer to {request['type']}")
    found = reply()
    assert found is not None
    return found


async def create(client: WsClient, message: str, threshold: float = 50.0) -> dict[str, Any]:
    """``alert_created`` or the ``error``."""
    request = {
        "type": "alert",
        "message": message,
        "rules": [rule(threshold)],
        "operators": [],
        "indicators": {},
        "owner": OWNER,
    }
    return await ask(client, request, "alert_created")


async def made(client: WsClient, message: str, threshold: float = 50.0) -> int:
    created = await create(client, message, threshold)
    assert created["type"] == "alert_created", created
    return int(created["id"])


async def listed(client: WsClient) -> list[int]:
    reply = await ask(client, {"type": "alerts", "owner": OWNER}, "alerts")
    return [a["id"] for a in reply["alerts"]]


async def delete(client: WsClient, alert_id: int, owner: str = OWNER) -> str:
    """``alert_deleted`` or the error code."""
    request = {"type": "alert_delete", "id": alert_id, "owner": owner}
    reply = await ask(client, request, "alert_deleted")
    return str(reply.get("code", reply["type"]))


def rest_alerts(hub: ServerProcess) -> dict[int, dict[str, Any]]:
    """``GET /api/alerts`` of the owner (answered by whichever worker the kernel picks)."""
    with urllib.request.urlopen(f"{hub.url}/api/alerts?owner={OWNER}", timeout=10) as response:
        return {a["id"]: a for a in json.loads(response.read())["alerts"]}


def rest_listing(hub: ServerProcess) -> list[int]:
    return list(rest_alerts(hub))


async def close_all(clients: dict[int, WsClient]) -> None:
    for client in clients.values():
        await client.close()


async def test_alerts_on_two_workers_fire_once_and_list_and_delete_from_either(
    deployment: Deployment,
) -> None:
    hub = deployment.hub
    clients = await one_client_per_worker(hub)
    main = hub.proc.pid if hub.proc is not None else 0
    on_main, on_child = clients[main], next(c for p, c in clients.items() if p != main)
    first = await made(on_main, "first")
    second = await made(on_child, "second")
    doomed = await made(on_main, "deleted before the restart")
    ids = [first, second, doomed]
    # Either worker (and the REST surface, on whichever worker) lists all of them.
    assert await listed(on_main) == ids and await listed(on_child) == ids
    for _ in range(4):
        assert rest_listing(hub) == ids
    # The other worker deletes an alert the first one evaluates; the first drops it.
    assert await delete(on_child, doomed) == "alert_deleted"
    assert await delete(on_main, doomed) == "not_found"
    assert await delete(on_main, first, owner="someone else") == "not_found"
    await harness.eventually(lambda: deployment.tombstones() == 0, 10, "the owner's sweep")
    assert await listed(on_main) == [first, second] == await listed(on_child)
    await close_all(clients)

    hub.stop()
    hub.start()
    clients = await one_client_per_worker(hub)
    main = hub.proc.pid if hub.proc is not None else 0
    on_main, on_child = clients[main], next(c for p, c in clients.items() if p != main)
    assert await listed(on_main) == [first, second] == await listed(on_child)
    # The daily quota (4 here) counts every worker's alerts: 3 made, 1 more allowed.
    never = await made(on_child, "never true", threshold=1e9)
    refused = await create(on_main, "one too many")
    assert refused["type"] == "error" and refused["code"] == "limit_reached"

    deployment.steer(HIGH)
    await harness.eventually(
        lambda: {first, second} <= set(deployment.fired()), 20, "both alerts firing"
    )
    deployment.steer(LOW)
    # Worker 2 of 2 (the child) resumed the odd ids: delete one through worker 1's socket.
    odd, even = (first, second) if first % 2 else (second, first)
    assert await delete(on_main, odd) == "alert_deleted"
    await harness.eventually(lambda: deployment.tombstones() == 0, 10, "the owner's sweep")
    # The condition was false again: re-armed (the state any worker lists, from the store).
    await harness.eventually(lambda: rest_alerts(hub)[even]["armed"], 20, "the alert re-armed")
    deployment.steer(HIGH)
    await harness.eventually(
        lambda: deployment.fired().get(even, []) == [1, 2], 20, "the second firing"
    )
    await close_all(clients)
    calls = deployment.fired()
    # One webhook call per false -> true transition: never twice for one firing (two
    # workers evaluating one alert), nothing after a deletion, nothing for the others.
    assert calls == {odd: [1], even: [1, 2]}, calls
    assert never not in calls and doomed not in calls


def test_the_store_gives_each_worker_its_share_and_notes_deletions_for_the_others(
    tmp_path: Path,
) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite3")
    spec = {"message": "m", "rules": [], "operators": [], "owner": "o", "subscription": None}
    ids = [row["id"] for row in (store.create(spec, "peer", 2e9, 10) for _ in range(5)) if row]
    assert ids == [1, 2, 3, 4, 5]
    first, second = Worker(1, 2), Worker(2, 2)
    assert [r["id"] for r in store.active(0, first.share)] == [2, 4]
    assert [r["id"] for r in store.active(0, second.share)] == [1, 3, 5]
    assert [r["id"] for r in store.active(0)] == ids  # one worker: every alert
    assert [Worker().resumes(i) for i in ids] == [True] * 5
    assert [r["id"] for r in store.of(None, "o", 0, 3)] == [1, 2, 3]
    assert not store.delete_of(3, None, "someone else", tombstone=True)
    assert store.delete_of(3, None, "o", tombstone=True)
    assert store.delete_of(4, None, "o", tombstone=False)
    assert not store.delete_of(3, None, "o", tombstone=True)
    assert store.tombstones() == [3]
    store.forget_tombstones([3], older_than=0)
    assert store.tombstones() == []
    assert [r["id"] for r in store.of(None, "o", 0, 10)] == [1, 2, 5]
    store.close()


@contextlib.contextmanager
def two_workers(
    tmp_path: Path, hooks: Hooks, retry_seconds: str, up: bool = False
) -> Iterator[tuple[dict[str, str], ServerProcess]]:
    """A ``--workers 2`` hub over a node of the steered counting source (its price low),
    alerts calling ``hooks`` (up first with ``up``) and retrying every ``retry_seconds``:
    its settings and the hub, stopped after."""
    if up:
        hooks.up()
    env = bus_deploy.bus_env(
        tmp_path,
        SHARED_REDIS,
        bus_deploy.new_prefix(),
        "hub",
        EXTRA_PROVIDERS="counting=tests.providers:SteeredProvider",
        CANDLEWIRE_TEST_PRICE=str(tmp_path / "price"),
        CANDLEWIRE_TEST_PERIOD="0.1",
        ALERT_WEBHOOK_URL=hooks.url,
        ALERT_RETRY_SECONDS=retry_seconds,
    )
    steer(env, LOW)
    assert harness.populate(env).returncode == 0
    node = bus_deploy.node({**env, "DB": str(tmp_path / "node.sqlite3")}, tmp_path, "node")
    args = ("--role", "hub", "--workers", "2")
    hub = ServerProcess(env, tmp_path / "hub.server.log", bus_deploy.free_port(), args)
    try:
        hub.start()
        yield env, hub
    finally:
        hub.stop()
        node.stop()


async def test_a_worker_killed_alone_resumes_its_own_pending_deliveries_only(
    tmp_path: Path,
) -> None:
    """Each worker's alert fires while the webhook refuses connections; worker 2 is killed
    (SIGKILL) and started again by worker 1 while worker 1 goes on retrying its own
    delivery; the webhook comes back: each alert's call arrives once. The killed worker's
    delivery was lost (kept in memory only); resumed by alert id instead of by the worker
    that stored it, worker 2 would also have sent worker 1's, which worker 1 still sends."""
    with Hooks() as hooks, two_workers(tmp_path, hooks, "3") as (env, hub):
        # ALERT_RETRY_SECONDS 3: attempts 3, 9, 21 and 45 s after the first
        clients = await one_client_per_worker(hub)
        main = hub.proc.pid if hub.proc is not None else 0
        child = next(pid for pid in clients if pid != main)
        ids = {await made(clients[main], "on worker 1"), await made(clients[child], "on 2")}
        await close_all(clients)
        steer(env, HIGH)

        def refused() -> int:
            return hub.log_path.read_text().count("ClientConnectorError")

        await harness.eventually(lambda: refused() >= 2, 20, "both calls refused")
        os.kill(child, signal.SIGKILL)
        started = "(worker 2 of 2)"  # the line of its alerts and deliveries resumed
        await harness.eventually(
            lambda: hub.log_path.read_text().count(started) == 2, 30, "worker 2 again"
        )
        hooks.up()
        await harness.eventually(lambda: len(hooks.bodies) >= 2, 60, "both calls")
        await harness.eventually(lambda: pending(env) == 0, 60, "the deliveries done")
    calls: dict[int, list[int]] = {}
    for body in hooks.bodies:
        calls.setdefault(body["alert"]["id"], []).append(body["fired"])
    assert calls == {alert_id: [1] for alert_id in ids}, calls


def pending(env: dict[str, str]) -> int:
    with contextlib.closing(sqlite3.connect(env["DB"], timeout=10)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM alert_deliveries").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_a_worker_killed_alone_evaluates_again_its_own_alerts_only(tmp_path: Path) -> None:
    """Four alerts made on the two workers in turn (each worker evaluates those it made);
    worker 2 is killed and started again alone; the rule turns true: each alert fires once.
    The new worker 2 took its share (odd ids) back: the odd ones worker 1 made fired twice
    (both workers evaluated them), the even ones worker 2 had made never fired (nobody did)."""
    with Hooks() as hooks, two_workers(tmp_path, hooks, "0.05", up=True) as (env, hub):
        clients = await one_client_per_worker(hub)
        main = hub.proc.pid if hub.proc is not None else 0
        child = next(pid for pid in clients if pid != main)
        ids = set()
        for n in range(2):
            ids.add(await made(clients[main], f"on worker 1, {n}"))
            ids.add(await made(clients[child], f"on worker 2, {n}"))
        await close_all(clients)
        os.kill(child, signal.SIGKILL)
        started = "(worker 2 of 2)"  # the line of its alerts and deliveries resumed
        await harness.eventually(
            lambda: hub.log_path.read_text().count(started) == 2, 30, "worker 2 again"
        )
        steer(env, HIGH)
        await harness.eventually(
            lambda: {body["alert"]["id"] for body in hooks.bodies} == ids, 30, "4 firings"
        )
        await harness.eventually(lambda: pending(env) == 0, 20, "the deliveries done")
    calls: dict[int, list[int]] = {}
    for body in hooks.bodies:
        calls.setdefault(body["alert"]["id"], []).append(body["fired"])
    assert calls == {alert_id: [1] for alert_id in ids}, calls


def test_the_store_notes_the_worker_and_run_of_each_alert(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite3")
    spec = {"message": "m", "rules": [], "operators": [], "owner": "o", "subscription": None}
    made_by = [(1, "old"), (2, "old"), (1, "run"), (2, "run")]  # two before this run
    for mine in made_by:
        store.create(spec, "peer", 2e9, 10, mine)
    first, second = Worker(1, 2, "run"), Worker(2, 2, "run")
    store.claim(first.share, first.mine)  # ids 2 (and 4, made in this run: stays worker 2's)
    assert [r["id"] for r in store.active(0, mine=first.mine)] == [2, 3]
    assert [r["id"] for r in store.active(0, mine=second.mine)] == [4]  # 1 not claimed yet
    store.claim(second.share, second.mine)
    assert [r["id"] for r in store.active(0, mine=second.mine)] == [1, 4]
    store.claim(second.share, second.mine)  # worker 2 again alone: nothing moves
    assert [r["id"] for r in store.active(0, mine=first.mine)] == [2, 3]
    assert [r["id"] for r in store.active(0, mine=second.mine)] == [1, 4]
    store.close()
