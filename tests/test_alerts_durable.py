"""Alert deliveries and firings survive the server's stop and death (README "Alerts": at
least once delivery, exactly once firing).

The real server with ``SteeredProvider`` (the test writes the price, so the rule ``close >
50`` turns true when the test says), the RFC push receiver (``tests/rfc_push.py``) and a
webhook receiver of its own (:class:`Hooks`, which can be down: its port refuses
connections). A delivery still retrying when the server is stopped (SIGTERM) or killed
(SIGKILL) arrives once after the restart; one that arrived is not sent again; a firing
killed before it was stored is delivered once (the alert fires again after the restart,
nothing was sent the first time); the table of pending deliveries stays bounded. Deliveries
were kept in memory only: those retrying at a stop were lost, and the fired state was saved
apart from (and possibly after) the deliveries, so a kill between them fired twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.alerts.store import AlertStore, Batch, Dropped, PendingDelivery
from backend.errors import StorageError
from backend.model.bars import SeriesId
from tests.alerts_e2e import Hooks
from tests.harness import ServerProcess, WsClient, base_env, eventually, populate
from tests.hub_fakes import SOURCE, FakeClock, close_above_alert, connect, make_hub, send, taken
from tests.rfc_push import RfcPush
from tests.test_e2e_alerts import until_day_turned

MESSAGE = "above 50"


@dataclass
class Steered:
    """A server whose one series' price the test sets, its push service and webhook."""

    env: dict[str, str]
    server: ServerProcess
    push: RfcPush
    hooks: Hooks

    def steer(self, price: float) -> None:
        path = Path(self.env["CANDLEWIRE_TEST_PRICE"])
        path.with_suffix(".partial").write_text(str(price))
        os.replace(path.with_suffix(".partial"), path)

    def db(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(self.env["DB"], timeout=10))

    def pending(self) -> int:
        """Rows of ``alert_deliveries`` (0 where there is no such table)."""
        with self.db() as db:
            try:
                return int(db.execute("SELECT count(*) FROM alert_deliveries").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def stored(self, alert_id: int) -> tuple[int, int]:
        """``(armed, fired)`` of the alert as stored."""
        with self.db() as db:
            found = db.execute("SELECT armed, fired FROM alerts WHERE id = ?", (alert_id,))
            armed, fired = found.fetchone()
        return int(armed), int(fired)

    def log(self) -> str:
        return self.server.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL: nothing of the server runs after it (no stop, no last write)."""
        assert self.server.proc is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(10)
        self.server.stop()  # closes the log and pipes

    def titles(self) -> list[str]:
        return sorted(p.payload["notification"]["title"] for p in self.push.pushes)

    async def create(self, client: WsClient, subscription: bool = True) -> int:
        rule = {
            "type1": "data",
            "source1": "counting",
            "name1": "AAA",
            "interval1": "1d",  # one forming bar for the whole test
            "key1": "close",
            "comparator": ">",
            "type2": "value",
            "value2": "50",
        }
        request = {
            "type": "alert",
            "message": MESSAGE,
            "rules": [rule],
            "operators": [],
            "indicators": {},
            "subscription": self.push.subscription("b") if subscription else None,
            "owner": "o",
        }
        mark = len(client.messages)
        await client.send(request)
        return int((await client.wait_for("alert_created", after=mark))["id"])


@contextlib.contextmanager
def steered(tmp_path: Path, retry_seconds: str = "2") -> Iterator[Steered]:
    """A populated server (started) at price 10; its push service and webhook are up."""
    with RfcPush() as push, Hooks() as hooks:
        env = base_env(
            tmp_path,
            PROVIDERS="counting",
            EXTRA_PROVIDERS="counting=tests.providers:SteeredProvider",
            CANDLEWIRE_TEST_PRICE=str(tmp_path / "price"),
            ALERT_WEBHOOK_URL=hooks.url,
            ALERT_RETRY_SECONDS=retry_seconds,
        )
        deployment = Steered(env, ServerProcess(env, tmp_path / "server.log"), push, hooks)
        deployment.steer(10.0)
        assert populate(env).returncode == 0
        until_day_turned()  # the test would otherwise span two daily bars
        deployment.server.start()
        try:
            yield deployment
        finally:
            deployment.server.stop()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_delivery_retrying_when_the_server_stops_arrives_once_after_the_restart(
    tmp_path: Path, how: str
) -> None:
    """The webhook refuses connections and the push service answers 503 when the alert
    fires; the server is stopped (SIGTERM, once both were refused) or killed (SIGKILL, as
    soon as the firing is stored); both come back, the server starts again: the push of
    the creation, the push of the firing and the webhook call each arrive once."""
    with steered(tmp_path) as deployment:
        push, hooks = deployment.push, deployment.hooks
        push.unavailable = True
        client = await WsClient.open(deployment.server.ws_url)
        alert_id = await deployment.create(client)
        deployment.steer(100.0)
        await client.wait_for("notification", lambda m: m.get("alert_id") == alert_id, 20)
        await client.close()
        if how == "SIGKILL":
            await eventually(lambda: deployment.stored(alert_id) == (0, 1), 10, "stored fired")
            deployment.kill()
        else:
            await eventually(lambda: push.turned_away >= 2, 10, "both pushes refused")
            refused = f"webhook {hooks.url.removesuffix('/hook')}"
            await eventually(
                lambda: f"{refused}: ClientConnectorError" in deployment.log(), 10, "refused"
            )
            deployment.server.stop()
        push.unavailable = False
        hooks.up()
        deployment.server.start()
        # A resumed delivery waits out the backoff it reached (2 s, doubling): the creation's
        # push, refused since the alert was made, may be at 16 s on a loaded machine where
        # the firing took a while (seen once in a full run: 30 s were not enough).
        await eventually(lambda: hooks.bodies and len(push.pushes) == 2, 60, "the deliveries")
        await eventually(lambda: deployment.pending() == 0, 10, "the deliveries done")
        assert deployment.stored(alert_id) == (0, 1)
    assert hooks.fired() == [1]
    assert deployment.titles() == [f"Alert added: {MESSAGE}", MESSAGE]


async def test_a_firing_killed_before_it_was_stored_is_delivered_once(tmp_path: Path) -> None:
    """Another writer holds the database (as a long flush of bars can) when the alert
    fires, so its fired state cannot be stored; the server is killed, the database let go,
    the server started again. The webhook was called before the fired state was stored:
    the restarted server, finding the alert armed, fired it again (a second call for one
    crossing). Now nothing is sent before the firing is stored: the one call comes from
    the firing after the restart. The fixed wait is the window a call before the store
    would have used (it ends at once where one came)."""
    with steered(tmp_path) as deployment:
        hooks = deployment.hooks
        hooks.up()
        client = await WsClient.open(deployment.server.ws_url)
        alert_id = await deployment.create(client, subscription=False)
        holder = sqlite3.connect(deployment.env["DB"], timeout=10, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, until the kill
            deployment.steer(100.0)
            await client.wait_for("notification", lambda m: m.get("alert_id") == alert_id, 20)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: hooks.bodies, 2, "a call before the firing is stored")
            await client.close()
            deployment.kill()
        finally:
            holder.close()
        deployment.server.start()
        await eventually(lambda: hooks.bodies, 30, "the webhook call")
        await eventually(lambda: deployment.pending() == 0, 10, "the delivery done")
        assert deployment.stored(alert_id) == (0, 1)
    assert hooks.fired() == [1]


async def test_a_delivery_that_arrived_is_not_sent_again_after_a_kill(tmp_path: Path) -> None:
    """Deliveries that arrived (and whose removal was stored: the one window left, a few
    milliseconds) are not sent again by the restarted server, and the fired alert does not
    fire again: the next calls are those of the next crossing."""
    with steered(tmp_path, retry_seconds="0.05") as deployment:
        push, hooks = deployment.push, deployment.hooks
        hooks.up()
        client = await WsClient.open(deployment.server.ws_url)
        alert_id = await deployment.create(client)
        deployment.steer(100.0)
        await eventually(lambda: hooks.bodies and len(push.pushes) == 2, 20, "the deliveries")
        await eventually(lambda: deployment.pending() == 0, 10, "the deliveries done")
        await client.close()
        deployment.kill()
        deployment.server.start()
        deployment.steer(10.0)
        await eventually(lambda: deployment.stored(alert_id) == (1, 1), 20, "re-armed")
        deployment.steer(100.0)
        await eventually(lambda: len(hooks.bodies) >= 2, 20, "the next crossing's call")
        await eventually(lambda: len(push.pushes) >= 3, 20, "the next crossing's push")
        await eventually(lambda: deployment.pending() == 0, 10, "the deliveries done")
    assert hooks.fired() == [1, 2]
    assert deployment.titles() == [f"Alert added: {MESSAGE}", MESSAGE, MESSAGE]


T0 = 1_700_000_040  # a whole minute


async def test_the_pending_deliveries_kept_are_bounded_by_count_and_age(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that refuses every connection; 8 alerts fire, then 8 others: with room for
    10, the table keeps the 10 newest deliveries (the 6 oldest are dropped, logged and
    counted, and not tried again), and after a restart those made more than a day before
    are dropped too (the others resume)."""
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{refusing.getsockname()[1]}/hook"
    db = tmp_path / "candlewire.db"
    dropped = "candlewire_alert_deliveries_dropped_total"

    def above(name: str) -> dict[str, Any]:
        return close_above_alert(name=name)

    rising = (T0 + 180, 100.0, 2000.0, 99.0, 1500.0, 10.0)
    try:
        hub, provider = make_hub(FakeClock(), ALERT_WEBHOOK_URL=url, ALERT_RETRY_SECONDS=60)
        provider.history = [(T0 + 60 * i, 100.0, 101.0, 99.0, 100.0, 10.0) for i in range(3)]
        alerting = hub.alerting
        await alerting.open(db)
        alerting.journal.cap = 10
        try:
            client = connect(hub)
            for name in ("AAA", "BBB"):
                alerts = ({**above(name), "message": f"{name} {n}", "owner": "o"} for n in range(8))
                await send(hub, client, *alerts)
            assert len([m for m in taken(client) if m["type"] == "alert_created"]) == 16
            with caplog.at_level(logging.WARNING):
                alerting.on_bar(SeriesId(SOURCE, "AAA", "1m"), rising)
                await eventually(lambda: len(alerting.sending.live) == 8, 10, "8 stored")
                alerting.on_bar(SeriesId(SOURCE, "BBB", "1m"), rising)
                await eventually(
                    lambda: hub.metrics.value(dropped, reason="table_full") == 6, 10, "6 dropped"
                )
            assert "alerts: 6 pending deliveries dropped (over 10 kept" in caplog.text
            kept = sorted(alerting.sending.live)
            assert len(kept) == 10
        finally:
            await alerting.close()
        with contextlib.closing(sqlite3.connect(db)) as raw, raw:
            ids = [row[0] for row in raw.execute("SELECT id FROM alert_deliveries ORDER BY id")]
            assert ids == kept  # the newest
            raw.execute(
                "UPDATE alert_deliveries SET created_at = ? WHERE id IN (?, ?)",
                (time.time() - 25 * 3600, ids[0], ids[1]),
            )
        hub, provider = make_hub(FakeClock(), ALERT_WEBHOOK_URL=url, ALERT_RETRY_SECONDS=60)
        alerting = hub.alerting
        await alerting.open(db)
        try:
            assert hub.metrics.value(dropped, reason="too_old") == 2
            assert sorted(alerting.sending.live) == ids[2:]
        finally:
            await alerting.close()
    finally:
        refusing.close()


async def test_a_batch_the_store_refuses_is_written_with_the_next(tmp_path: Path) -> None:
    """The store refuses the firing's batch once (locked past its wait, a full disk): the
    writer tries it again (the writer's task ended on the error before, and no state was
    stored after it for the life of the process); the delivery goes out once written."""
    db = tmp_path / "candlewire.db"
    with Hooks() as hooks:
        hooks.up()
        hub, provider = make_hub(FakeClock(), ALERT_WEBHOOK_URL=hooks.url)
        provider.history = [(T0 + 60 * i, 100.0, 101.0, 99.0, 100.0, 10.0) for i in range(3)]
        alerting = hub.alerting
        await alerting.open(db)
        store = alerting.store
        assert store is not None
        commit = store.commit
        refused: list[int] = []

        def refuse_once(batch: Batch, worker: int, cap: int) -> list[Dropped]:
            if batch.new and not refused:
                refused.append(len(batch.new))
                raise StorageError("alert store: database is locked")
            return commit(batch, worker, cap)

        store.commit = refuse_once  # type: ignore[method-assign]
        try:
            client = connect(hub)
            request = close_above_alert()
            await send(hub, client, {**request, "message": "m", "owner": "o"})
            [created] = [m for m in taken(client) if m["type"] == "alert_created"]
            alerting.on_bar(
                SeriesId(SOURCE, "AAA", "1m"), (T0 + 180, 100.0, 2e3, 99.0, 1500.0, 1.0)
            )
            await eventually(lambda: hooks.bodies, 10, "the webhook call")
            assert refused == [1]
            await eventually(lambda: not alerting.sending.live, 10, "the delivery done")
        finally:
            await alerting.close()
        rows = AlertStore(db).active(0.0)
    assert [(r["id"], r["armed"], r["fired"]) for r in rows] == [(created["id"], False, 1)]
    assert hooks.fired() == [1]


@pytest.mark.parametrize("now_set", ["another", "none"])
async def test_an_operator_webhook_call_resumed_after_a_restart_goes_where_the_setting_says_now(
    tmp_path: Path, now_set: str
) -> None:
    """The operator's ALERT_WEBHOOK_URL refuses connections when the alert fires; the
    server is stopped and started again with ALERT_WEBHOOK_URL set to another receiver (or
    to none). The pending call went on to the old address (the operator's trust, never
    restricted, kept by a URL that is no longer the setting) for up to a day. Now it goes to
    the webhook set now, or is given up when there is none."""
    with steered(tmp_path) as deployment, Hooks() as current:
        old = deployment.hooks
        client = await WsClient.open(deployment.server.ws_url)
        alert_id = await deployment.create(client, subscription=False)
        deployment.steer(100.0)
        await client.wait_for("notification", lambda m: m.get("alert_id") == alert_id, 20)
        await client.close()
        refused = f"webhook {old.url.removesuffix('/hook')}: ClientConnectorError"
        await eventually(lambda: refused in deployment.log(), 10, "the call refused")
        deployment.server.stop()
        assert deployment.pending() == 1
        old.up()
        current.up()
        url = current.url if now_set == "another" else ""
        env = {**deployment.env, "ALERT_WEBHOOK_URL": url}
        with ServerProcess(env, tmp_path / "again.log"):
            if now_set == "another":
                await eventually(lambda: current.bodies, 30, "the call to the webhook set now")
            await eventually(lambda: deployment.pending() == 0, 30, "the delivery done")
        assert deployment.stored(alert_id) == (0, 1)
    assert old.bodies == []
    assert current.fired() == ([1] if now_set == "another" else [])


async def test_a_day_old_delivery_of_a_worker_gone_is_dropped_not_sent_at_the_start(
    tmp_path: Path,
) -> None:
    """A hub that ran two workers starts again with one: worker 1 takes the pending
    deliveries of worker 2. Those were looked at for age (24 h) before they became its
    own, so one made more than a day before was resumed and sent, past its push's TTL, at
    once (the minute's prune came after). Now it is dropped as too old, as worker 1's own."""
    db = tmp_path / "candlewire.db"
    dropped = "candlewire_alert_deliveries_dropped_total"
    with Hooks() as hooks:
        hooks.up()
        store = AlertStore(db)
        try:
            old = time.time() - 25 * 3600
            for worker in (1, 2):
                delivery = PendingDelivery(7, "webhook", hooks.url, True, None, {"n": 1}, old)
                store.commit(Batch(new=[delivery]), worker, 10)
        finally:
            store.close()
        hub, _ = make_hub(FakeClock(), ALERT_WEBHOOK_URL=hooks.url)
        alerting = hub.alerting
        await alerting.open(db)
        try:
            assert hub.metrics.value(dropped, reason="too_old") == 2
            assert alerting.sending.live == {}
        finally:
            await alerting.close()
        with contextlib.closing(sqlite3.connect(db)) as raw:
            assert raw.execute("SELECT count(*) FROM alert_deliveries").fetchone()[0] == 0
    assert hooks.bodies == []


# The server may write no file past this size (RLIMIT_FSIZE): a disk with no room left. Its
# log (a few KB) has room; the database and its journal have none.
FULL_AT = 16384


async def test_an_alert_firing_on_a_full_disk_is_reported_and_delivered_once_space_returns(
    tmp_path: Path,
) -> None:
    """Deliveries are stored before they are attempted (README), so while the disk is full
    a firing's push and webhook call wait: the socket's notification goes at once, /health
    says the alert store cannot write (it said ok, and the log had a warning a second),
    and both arrive once when space returns."""
    with steered(tmp_path, retry_seconds="0.2") as deployment:
        push, hooks, server = deployment.push, deployment.hooks, deployment.server
        assert server.proc is not None
        hooks.up()
        client = await WsClient.open(server.ws_url)
        alert_id = await deployment.create(client)
        await eventually(lambda: len(push.pushes) == 1, 10, "the creation's push")
        assert server.log_path.stat().st_size < FULL_AT // 2
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (FULL_AT, resource.RLIM_INFINITY))
        deployment.steer(100.0)
        await client.wait_for("notification", lambda m: m.get("alert_id") == alert_id, 20)
        await eventually(
            lambda: server.get("/health")["alert_store"].get("failed_writes", 0) >= 3,
            10,
            "three failed writes of the alert store",
        )
        health = server.get("/health")
        assert health["status"] == "degraded"
        assert health["alert_store"]["state"] == "failing"
        assert not hooks.bodies and len(push.pushes) == 1  # not sent before it is stored
        lines = [line for line in deployment.log().splitlines() if "alert store:" in line]
        assert len(lines) == 1, lines
        assert f"alert store: cannot write DB {deployment.env['DB']}" in lines[0]
        resource.prlimit(
            server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        await eventually(lambda: hooks.bodies and len(push.pushes) == 2, 30, "the deliveries")
        await eventually(lambda: server.get("/health")["status"] == "ok", 10, "health ok")
        await client.close()
        assert deployment.stored(alert_id) == (0, 1)
    assert hooks.fired() == [1]
    assert deployment.titles() == [f"Alert added: {MESSAGE}", MESSAGE]
    lines = [line for line in deployment.log().splitlines() if "alert store:" in line]
    assert len(lines) == 2 and "writing DB" in lines[1], lines


async def test_an_alert_firing_after_the_db_was_replaced_leaves_the_new_file_untouched(
    tmp_path: Path,
) -> None:
    """A database moved in place of ``DB`` while the server runs: the alert store went on
    writing (the firing, its deliveries) through the journal found by name (``DB-wal``),
    whose pages the next process to open the new file copied into it (the new database
    got the server's alerts)."""
    with steered(tmp_path) as deployment:
        server = deployment.server
        deployment.hooks.up()
        client = await WsClient.open(server.ws_url)
        alert_id = await deployment.create(client)
        other = dict(deployment.env, DB=str(tmp_path / "other.sqlite3"))
        assert populate(other).returncode == 0
        os.replace(other["DB"], deployment.env["DB"])
        deployment.steer(100.0)
        await client.wait_for("notification", lambda m: m.get("alert_id") == alert_id, 20)
        await eventually(
            lambda: server.get("/health")["alert_store"]["state"] == "failing",
            10,
            "the alert store failing",
        )
        assert "deleted or replaced" in server.get("/health")["alert_store"]["error"]
        with deployment.db() as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "alerts" not in tables and "symbols" in tables
        await client.close()
    assert not deployment.hooks.bodies  # never stored, so never sent (the socket was told)
