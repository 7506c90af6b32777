"""End to end: an alert made through the Tradiny wire format on a streaming CSV symbol is
delivered as a decryptable Web Push, a webhook call and a socket ``notification``, again after
a restart; expiry, the daily limit, 410 removal and the ``alerts`` / ``alert_delete``
extensions (socket and ``/api/alerts``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerts_e2e import (
    KEYS,
    SERIES,
    KeyedServer,
    alert,
    delete_json,
    env_for,
    flip_rule,
    get_json,
    listed_alert,
)
from tests.fakes.openai_chat import FakeChat
from tests.fakes.webpush import FakePush
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    eventually,
    populate,
    until,
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePush]:
    with FakePush() as running:
        yield running


async def test_an_alert_delivers_push_webhook_and_notification_and_again_after_a_restart(
    tmp_path: Path, fake: FakePush
) -> None:
    server = ServerProcess(env_for(tmp_path, fake), tmp_path / "server.log").start()
    try:
        client = await WsClient.open(server.ws_url)
        await client.send({"type": "vapid_public_key"})
        key = (await client.wait_for("vapid_public_key"))["vapid_public_key"]["publicKey"]
        await client.send(alert("BTC green bar", fake.subscription("main"), owner="o1"))
        created = await client.wait_for("alert_created")
        await eventually(lambda: "BTC green bar" in fake.titles("main"), 20, "the push")
        await eventually(lambda: fake.hook_bodies("all"), 10, "the webhook call")
        note = await client.wait_for("notification", lambda m: m.get("alert_id") == created["id"])
        assert note["message"] == "BTC green bar"
        assert "Alert added: BTC green bar" in fake.titles("main")
        assert {p.vapid_key.rstrip("=") for p in fake.pushes} == {key.rstrip("=")}
        body = fake.hook_bodies("all")[0]
        assert body["alert"]["id"] == created["id"] and body["series"] == SERIES
        assert body["bar"]["close"] > body["bar"]["open"] and body["rules"] == [flip_rule()]
        await client.close()

        server.stop()
        fired_before = len(fake.hook_bodies("all"))
        server.start()
        client = await WsClient.open(server.ws_url)
        await client.send({"type": "vapid_public_key"})
        again = (await client.wait_for("vapid_public_key"))["vapid_public_key"]["publicKey"]
        assert again == key  # stored, not regenerated
        await eventually(
            lambda: len(fake.hook_bodies("all")) > fired_before, 20, "a webhook after restart"
        )
        pushes = fake.titles("main")
        await eventually(lambda: len(fake.titles("main")) > len(pushes), 20, "a push after restart")
        await client.send({"type": "alerts", "owner": "o1"})
        [listed] = (await client.wait_for("alerts"))["alerts"]
        assert listed["id"] == created["id"] and listed["fired"] >= 2
        await client.close()
    finally:
        server.stop()
    fired = [body["fired"] for body in fake.hook_bodies("all")]
    assert fired == sorted(set(fired)), "one webhook call per false -> true transition"


def rsi_alert(message: str, indicator_id: str, period: int = 14, **extra: Any) -> dict[str, Any]:
    """``RSI(14) of the 1m closes > 0``: true on every bar once the warm-up is over."""
    label = f"RSI timeperiod={period}"
    config = {
        "type": "indicator",
        "id": "rsi-csv-1m",
        "indicator": {"id": indicator_id, "name": "RSI", "type": "indicator"},
        "inputs": {"timeperiod": str(period)},
        "dataMap": {"close": {**SERIES, "value": "csv-BTCUSD-1m-close", "dataKey": "close"}},
    }
    rule = {
        "type1": "indicator",
        "indicator1": label,
        "indicator_interval1": "1m",
        "output1": "RSI",
        "comparator": ">",
        "type2": "value",
        "value2": "0",
    }
    return {
        **alert(message, None, **extra),
        "rules": [rule],
        "indicators": {label: {"indicator": config, "outputs": [{"name": "RSI"}]}},
    }


async def test_expiry_limits_removal_on_410_delete_and_indicator_rules(
    tmp_path: Path, fake: FakePush
) -> None:
    env = env_for(tmp_path, fake, ALERT_EXPIRE_MINUTES="0.05", MAX_ALERTS_PER_DAY="4")
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        fake.gone("dead")
        await client.send(rsi_alert("no such", "talib.nothing.NOPE"))
        await client.wait_for("error", lambda m: m.get("code") == "unknown_indicator")
        # in range, but about 350,000 bars of warm-up: refused as `indicator` refuses it,
        # never loaded and recomputed on every update
        await client.send(rsi_alert("long", "talib.momentum.RSI", period=100_000))
        long = await client.wait_for("error", lambda m: m.get("code") == "not_enough_history")
        assert "at most 10000" in long["message"]
        await client.send(alert("short", fake.subscription("short"), owner="o2"))
        await client.send(alert("to a dead browser", fake.subscription("dead"), owner="o2"))
        await client.send(alert("deleted", None, owner="o2"))
        await client.send(
            rsi_alert("RSI above 0", "talib.momentum.RSI", webhook=f"{fake.url}/hook/rsi")
        )
        await eventually(lambda: len(client.of_type("alert_created")) == 4, 10, "four alerts")
        created = client.of_type("alert_created")
        await eventually(lambda: fake.hook_bodies("rsi"), 10, "the indicator alert's webhook")
        assert fake.hook_bodies("rsi")[0]["alert"]["message"] == "RSI above 0"
        await client.send(alert("one too many", None, owner="o2"))
        error = await client.wait_for("error", lambda m: m.get("code") == "limit_reached")
        assert "Max alerts reached" in error["message"]
        note = await client.wait_for("notification", lambda m: "Max alerts" in m["message"])
        assert note["message"] == "Error: Max alerts reached"

        listing = get_json(server, "/api/alerts?owner=o2")
        assert len(listing["alerts"]) == 3
        dead = next(a for a in listing["alerts"] if a["message"] == "to a dead browser")
        await eventually(
            lambda: not listed_alert(server, "o2", dead["id"]).get("push", True), 20, "410 removal"
        )
        await client.send({"type": "alert_delete", "id": created[2]["id"], "owner": "o2"})
        await client.wait_for("alert_deleted")
        await client.send({"type": "alert_delete", "id": created[2]["id"], "owner": "o2"})
        await client.wait_for("error", lambda m: m.get("code") == "not_found")
        await client.send({"type": "alert_delete", "id": created[0]["id"], "owner": "someone"})
        await client.wait_for("error", lambda m: m.get("code") == "not_found", after=0)
        for huge in (2**63, 10**20, -(2**63) - 1, 0):  # past SQLite's integers: was a 500
            status, body = delete_json(server, f"/api/alerts/{huge}?owner=o2")
            assert (status, body["error"]) == (404, "not_found"), (huge, status, body)
        mark = len(client.messages)
        await client.send({"type": "alert_delete", "id": True, "owner": "o2"})  # not alert 1
        await client.wait_for("error", lambda m: m.get("code") == "not_found", after=mark)
        assert len(get_json(server, "/api/alerts?owner=o2")["alerts"]) == 2

        await eventually(lambda: "Alert expired: short" in fake.titles("short"), 20, "expiry")
        assert get_json(server, "/api/alerts?owner=o2")["alerts"] == []
        await client.send({"type": "optimize_indicator_params"})
        unsupported = await client.wait_for("error", lambda m: m.get("code") == "unsupported")
        assert "optimize_indicator_params" in unsupported["message"]
        await client.close()


async def test_an_alert_on_an_output_its_indicator_does_not_have_is_refused(
    tmp_path: Path, fake: FakePush
) -> None:
    """Such an alert could never fire; it was stored and answered ``alert_created``."""
    with ServerProcess(env_for(tmp_path, fake), tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            request = rsi_alert("never", "talib.momentum.RSI", owner="o3")
            request["rules"][0]["output1"] = "rsi_value"
            await client.send(request)
            error = await client.wait_for("error")
            assert error["code"] == "bad_rule", error
            assert "'rsi_value'" in error["message"]
            assert client.of_type("alert_created") == []
            assert get_json(server, "/api/alerts?owner=o3")["alerts"] == []
        finally:
            await client.close()


async def test_a_client_chosen_webhook_is_refused_unless_the_operator_allows_it(
    tmp_path: Path, fake: FakePush
) -> None:
    env = env_for(tmp_path, fake, ALERT_CLIENT_WEBHOOKS="false")
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            internal = "http://127.0.0.1:1/admin"
            await client.send(
                rsi_alert("to an internal URL", "talib.momentum.RSI", webhook=internal)
            )
            error = await client.wait_for("error", lambda m: m.get("code") == "unsupported")
            assert "ALERT_CLIENT_WEBHOOKS" in error["message"]
            assert client.of_type("alert_created") == []
        finally:
            await client.close()


async def test_an_alert_named_by_nothing_gets_an_owner_key_that_lists_and_deletes_it(
    tmp_path: Path, fake: FakePush
) -> None:
    """Without a push subscription or an owner, nothing would name the alert: the server
    makes it an owner key and says it in ``alert_created``."""
    with ServerProcess(env_for(tmp_path, fake), tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            await client.send(alert("no push", None), alert("with a key", None, owner="mine"))
            await eventually(lambda: len(client.of_type("alert_created")) == 2, 10, "two alerts")
            made, chosen = client.of_type("alert_created")
            assert chosen["owner"] == "mine"
            key = made["owner"]
            assert isinstance(key, str) and len(key) >= 20 and key != "mine"
            assert listed_alert(server, key, made["id"])["owner"] == key
            await client.send({"type": "alert_delete", "id": made["id"], "owner": key})
            deleted = await client.wait_for("alert_deleted")
            assert deleted["id"] == made["id"]
            assert listed_alert(server, key, made["id"]) == {}
        finally:
            await client.close()


async def test_an_alert_fires_on_the_first_update_that_makes_its_rule_true(
    tmp_path: Path, fake: FakePush
) -> None:
    """ "Within one update": the webhook names exactly the first bar, among those the hub had
    when the alert was made and the updates after it, on which ``close > open`` holds."""
    env = env_for(tmp_path, fake)
    before = len(fake.hook_bodies("all"))
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            await client.send({"type": "data", **SERIES, "count": 5})
            init = await client.wait_for("data_init")
            await client.wait_for("data_update")
            await client.send(alert("first green bar", None))
            await client.wait_for("alert_created")
            await eventually(lambda: len(fake.hook_bodies("all")) > before, 20, "the webhook call")
        finally:
            await client.close()
    # Server frames of one client keep their order: what came before ``alert_created`` is
    # what the hub had when it made the alert.
    seen: list[dict[str, Any]] = [init["data"][-1]]
    created_at = next(i for i, m in enumerate(client.messages) if m["type"] == "alert_created")
    for i, message in enumerate(client.messages):
        if message["type"] == "data_update":
            if i < created_at:
                seen = [message["data"]]
            else:
                seen.append(message["data"])
    prefix = "csv-BTCUSD-1m-"
    first_true = next(b for b in seen if b[prefix + "close"] > b[prefix + "open"])
    fired = fake.hook_bodies("all")[before]["bar"]
    assert (fired["date"], fired["close"]) == (first_true["date"], first_true[prefix + "close"])


async def test_after_a_410_the_alert_stays_listable_and_deletable_by_its_endpoint(
    tmp_path: Path, fake: FakePush
) -> None:
    with ServerProcess(env_for(tmp_path, fake), tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            fake.gone("dropped")
            subscription = fake.subscription("dropped")
            endpoint = subscription["endpoint"]
            await client.send(alert("no owner key", subscription))  # as the stock client does
            created = await client.wait_for("alert_created")
            await eventually(
                lambda: ("/push/dropped", 410) in fake.attempts, 10, "the push answered 410"
            )

            async def listed() -> list[dict[str, Any]]:
                mark = len(client.messages)
                await client.send({"type": "alerts", "endpoint": endpoint})
                return (await client.wait_for("alerts", after=mark))["alerts"]

            for _ in range(100):  # the 410 is handled in a task of its own
                [found] = await listed()
                if not found["push"]:
                    break
            assert (found["id"], found["push"]) == (created["id"], False)
            hooks = len(fake.hook_bodies("all"))
            await client.send({"type": "alert_delete", "id": created["id"], "endpoint": endpoint})
            await client.wait_for("alert_deleted")
            assert await listed() == []
            assert len(fake.hook_bodies("all")) <= hooks + 1  # it stopped firing
        finally:
            await client.close()


async def test_an_alert_that_expired_while_the_server_was_down_is_pushed_and_deleted(
    tmp_path: Path, fake: FakePush
) -> None:
    env = env_for(tmp_path, fake, ALERT_EXPIRE_MINUTES="0.05")
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        client = await WsClient.open(server.ws_url)
        await client.send(alert("short-lived", fake.subscription("offline")))
        created = await client.wait_for("alert_created")
        await client.close()
        server.stop()
        until(lambda: time.time() > created["expires_at"] + 1, 10, "the expiry to pass")
        server.start()
        await eventually(
            lambda: "Alert expired: short-lived" in fake.titles("offline"), 10, "the expired push"
        )
        with contextlib.closing(sqlite3.connect(tmp_path / "candlewire.sqlite3")) as db:
            assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    finally:
        server.stop()


async def test_with_api_keys_the_alert_and_chat_quotas_are_per_key(
    tmp_path: Path, fake: FakePush
) -> None:
    with FakeChat(["fine"]) as chat:
        env = env_for(
            tmp_path,
            fake,
            AUTH="token",
            API_KEYS=",".join(KEYS),
            MAX_ALERTS_PER_DAY="1",
            MAX_LLM_REQUESTS_PER_HOUR="1",
            LLM_BASE_URL=chat.base_url,
            LLM_API_KEY="test-key",
            LLM_MODEL="m1",
        )
        with KeyedServer(env, tmp_path / "server.log") as server:
            for key in KEYS:  # from one address, as behind a reverse proxy
                client = await WsClient.open(f"{server.ws_url}?token={key}")
                try:
                    await client.send(alert("mine", None))
                    await client.wait_for("alert_created")
                    await client.send({"type": "prompt", "conversation_id": "c", "prompt": "Hi?"})
                    done = await client.wait_for("prompt_response", lambda m: bool(m.get("done")))
                    assert client.of_type("error") == [], key
                    assert done["response"] == ""
                    await client.send(alert("one more", None))
                    error = await client.wait_for("error")
                    assert error["code"] == "limit_reached"
                finally:
                    await client.close()


async def test_the_series_alerts_read_count_against_the_callers_subscription_limit(
    tmp_path: Path, fake: FakePush
) -> None:
    """A client allowed 2 subscriptions made the hub stream 28 series through alerts."""

    def on(name: str, interval: str) -> dict[str, Any]:
        rule = flip_rule() | {"name1": name, "name2": name}
        rule |= {"interval1": interval, "interval2": interval}
        return alert(f"{name} {interval}", None, rules=[rule])

    env = env_for(tmp_path, fake, AUTH="token", API_KEYS=",".join(KEYS))
    env["MAX_SUBSCRIPTIONS_PER_CALLER"] = "2"
    with KeyedServer(env, tmp_path / "server.log") as server:
        alice = await WsClient.open(f"{server.ws_url}?token={KEYS[0]}")
        bob = await WsClient.open(f"{server.ws_url}?token={KEYS[1]}")
        try:
            for series in (("BTCUSD", "1m"), ("ACME", "1m"), ("BTCUSD", "1m")):
                mark = len(alice.messages)
                await alice.send(on(*series))
                await alice.wait_for("alert_created", after=mark)
            mark = len(alice.messages)
            await alice.send(on("BTCUSD", "5m"))  # a third series
            error = await alice.wait_for("error", after=mark)
            assert error["code"] == "limit_reached" and "2 series" in error["message"]
            await bob.send(on("BTCUSD", "5m"))  # another client has its own limit
            await bob.wait_for("alert_created")
        finally:
            await alice.close()
            await bob.close()


async def test_a_fired_alert_is_not_rearmed_by_the_stale_forming_bar_stored_before_a_restart(
    tmp_path: Path, fake: FakePush
) -> None:
    """The store keeps the forming bar as it was when the tail was fetched (not every
    update): after a restart within that bar, the alert's first evaluation read that stale
    bar, found the condition false, re-armed the fired alert, and the next live update fired
    it again while the price had stayed above the level all along."""
    price = tmp_path / "price"

    def steer(value: float) -> None:
        price.with_suffix(".partial").write_text(str(value))
        os.replace(price.with_suffix(".partial"), price)

    steer(10.0)
    env = base_env(
        tmp_path,
        PROVIDERS="counting",
        EXTRA_PROVIDERS="counting=tests.providers:SteeredProvider",
        CANDLEWIRE_TEST_PRICE=str(price),
        ALERT_WEBHOOK_URL=f"{fake.url}/hook/steered",
    )
    assert populate(env).returncode == 0
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
    until_day_turned()  # the test would otherwise span two daily bars
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        client = await WsClient.open(server.ws_url)
        chart = {"type": "data", "source": "counting", "name": "AAA", "interval": "1d"}
        await client.send(chart)  # the tail is fetched (and stored) while the price is 10
        await client.wait_for("data_update", lambda m: m["data"]["counting-AAA-1d-close"] == 10)
        await client.send({**alert("above 50", None, owner="o"), "rules": [rule]})
        await client.wait_for("alert_created")
        steer(100.0)
        await eventually(lambda: fake.hook_bodies("steered"), 20, "the firing")
        await client.close()
        server.stop()
        with contextlib.closing(sqlite3.connect(env["DB"])) as db:
            assert db.execute("SELECT armed, fired FROM alerts").fetchall() == [(0, 1)]
        server.start()
        client = await WsClient.open(server.ws_url)
        await client.send(chart)
        await client.wait_for("data_update", lambda m: m["data"]["counting-AAA-1d-close"] == 100)
        await client.wait_for("data_update", after=len(client.messages))  # one more update
        await client.send({"type": "alerts", "owner": "o"})
        [listed] = (await client.wait_for("alerts"))["alerts"]
        await client.close()
    finally:
        server.stop()
    assert [body["fired"] for body in fake.hook_bodies("steered")] == [1]
    assert (listed["armed"], listed["fired"]) == (False, 1)


def until_day_turned(margin: int = 300) -> None:
    """Return at once unless the UTC day ends within ``margin`` seconds (one run in 288);
    then wait until it has turned, polling the clock (the test runs, never skips)."""
    following = (int(time.time()) // 86_400 + 1) * 86_400
    if following - time.time() > margin:
        return
    until(lambda: time.time() >= following, timeout=margin + 60, what="the next UTC day")
