"""End to end: alert deliveries that hang (a webhook that never answers, a client naming many
push endpoints that never answer) delay no other user's push; a rule that fires with every
tick logs one INFO line a minute; a shutdown cancels deliveries in flight without blaming
their endpoint."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alerts_e2e import KEYS, SERIES, KeyedServer, alert, always_true_rule, env_for
from tests.fakes.webpush import FakePush
from tests.harness import ROOT, ServerProcess, WsClient, base_env, eventually, populate


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePush]:
    with FakePush() as running:
        yield running


def hung_webhook_env(tmp: Path, hung: FakePush, **extra: str) -> dict[str, str]:
    """A populated CSV server's environment whose operator webhook never answers."""
    hung.hang("/hook/hung")
    env = base_env(
        tmp,
        PROVIDERS="csv",
        CSV_FOLDER_PATH=str(ROOT / "data"),
        ALERT_WEBHOOK_URL=f"{hung.url}/hook/hung",
        **extra,
    )
    assert populate(env).returncode == 0
    return env


async def test_a_hanging_webhook_does_not_delay_another_users_push(
    tmp_path: Path, fake: FakePush
) -> None:
    with FakePush() as hung:
        env = hung_webhook_env(tmp_path, hung, ALERT_RETRY_SECONDS="0.05")
        with ServerProcess(env, tmp_path / "server.log") as server:
            attacker = await WsClient.open(server.ws_url)
            victim = await WsClient.open(server.ws_url)
            try:
                for n in range(40):
                    await attacker.send({**alert(f"now {n}", None), "rules": [always_true_rule()]})
                await eventually(
                    lambda: len(attacker.of_type("alert_created")) == 40, 20, "40 alerts"
                )
                await eventually(lambda: len(hung.attempts) >= 4, 20, "webhook calls that hang")
                await victim.send(alert("victim", fake.subscription("victim")))
                await victim.wait_for("alert_created")
                await eventually(
                    lambda: "Alert added: victim" in fake.titles("victim"), 5, "the victim's push"
                )
                assert len(hung.attempts) <= 4  # one destination: at most 4 at once
            finally:
                await attacker.close()
                await victim.close()


@contextlib.contextmanager
def hanging_endpoints(n: int) -> Iterator[list[str]]:
    """``n`` push endpoints, each its own destination, whose servers never answer (the kernel
    takes the connections; nobody reads them)."""
    listeners = []
    try:
        for _ in range(n):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listeners.append(listener)
        yield [f"http://127.0.0.1:{s.getsockname()[1]}/push/x" for s in listeners]
    finally:
        for listener in listeners:
            listener.close()


@pytest.mark.parametrize("keys", [True, False], ids=["with keys", "loopback without keys"])
async def test_one_client_naming_many_hanging_endpoints_does_not_delay_another_users_push(
    tmp_path: Path, fake: FakePush, keys: bool
) -> None:
    """Ten hanging push endpoints of one client used to hold all 32 delivery slots for a
    whole attempt (10 s): another client's push waited for it. Without keys, clients on
    loopback (a local proxy's users) are not one owner: they shared 8 slots at first."""
    extra = {"AUTH": "token", "API_KEYS": ",".join(KEYS)} if keys else {}
    env = env_for(tmp_path, fake, **extra)
    with hanging_endpoints(10) as endpoints, KeyedServer(env, tmp_path / "server.log") as server:
        tokens = [f"?token={key}" for key in KEYS] if keys else ["", ""]
        attacker = await WsClient.open(f"{server.ws_url}{tokens[0]}")
        victim = await WsClient.open(f"{server.ws_url}{tokens[1]}")
        try:
            for n in range(40):
                subscription = fake.subscription(f"decoy{n}")
                subscription["endpoint"] = endpoints[n % len(endpoints)]
                await attacker.send(
                    {**alert(f"now {n}", subscription), "rules": [always_true_rule()]}
                )
            await eventually(lambda: len(attacker.of_type("alert_created")) == 40, 20, "40 alerts")
            started = time.monotonic()
            await victim.send(alert("victim", fake.subscription("victim")))
            await victim.wait_for("alert_created")
            await eventually(
                lambda: "Alert added: victim" in fake.titles("victim"), 8, "the victim's push"
            )
            assert time.monotonic() - started < 8  # not after the attacker's 10 s attempts
        finally:
            await attacker.close()
            await victim.close()


async def test_an_alert_that_fires_again_and_again_logs_one_info_line_a_minute(
    tmp_path: Path, fake: FakePush
) -> None:
    """A condition that flips with every tick fires as often (Tradiny has no cooldown): a
    600x replay used to write 80,000 INFO lines in 100 s."""
    env = env_for(tmp_path, fake)
    log = tmp_path / "server.log"
    with ServerProcess(env, log) as server:
        client = await WsClient.open(server.ws_url)
        try:
            await client.send({"type": "data", **SERIES, "count": 5})
            await client.wait_for("data_init")
            await client.send(alert("flips", None))
            created = await client.wait_for("alert_created")

            def notified() -> int:
                return sum(1 for m in client.messages if m["type"] == "notification")

            await eventually(lambda: notified() >= 3, 30, "three firings")
        finally:
            await client.close()
    fired = [
        line
        for line in log.read_text().splitlines()
        if f"alert {created['id']} fired" in line and " INFO " in line
    ]
    assert len(fired) == 1, fired


async def test_a_shutdown_cancels_deliveries_in_flight_without_blaming_their_endpoint(
    tmp_path: Path,
) -> None:
    """The HTTP session was closed before the deliveries in flight were cancelled: each
    logged its endpoint as failed ("Server disconnected, retrying") while the server
    stopped."""
    with FakePush() as hung:
        env = hung_webhook_env(tmp_path, hung)
        server = ServerProcess(env, tmp_path / "server.log").start()
        try:
            client = await WsClient.open(server.ws_url)
            for n in range(6):
                await client.send({**alert(f"now {n}", None), "rules": [always_true_rule()]})
            await eventually(lambda: len(hung.attempts) >= 4, 20, "webhook calls that hang")
            await client.close()
        finally:
            server.stop()
    log = (tmp_path / "server.log").read_text()
    stopping = log[log.index("Shutting down") :]
    assert "webhook" not in stopping, stopping[:2000]
