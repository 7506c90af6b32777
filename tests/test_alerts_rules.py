"""Alert parsing, the spec 3.4 semantics (fire on false -> true, re-arm on false) and the store."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend.alerts import store as alert_store
from backend.alerts.evaluate import LatestBars, Step, step
from backend.alerts.model import Alert, parse_alert, reads_indicators, series_of
from backend.alerts.store import AlertStore
from backend.errors import ProtocolError, StorageError
from backend.model.bars import SeriesId
from tests.fakes.webpush import BrowserKeys, b64url

KEY = SeriesId("csv", "BTCUSD", "1m")


def close_rule(comparator: str, value: float) -> dict[str, str]:
    return {
        "type1": "data",
        "source1": "csv",
        "name1": "BTCUSD",
        "interval1": "1m",
        "key1": "close",
        "comparator": comparator,
        "type2": "value",
        "value2": str(value),
    }


def request(**extra: Any) -> dict[str, Any]:
    return {"type": "alert", "message": "above 100", "rules": [close_rule(">", 100)], **extra}


def alert_of(raw: dict[str, Any]) -> Alert:
    spec, rule_set = parse_alert(raw, max_rules=10)
    alert = Alert(1, spec, rule_set, "127.0.0.1", time.time(), time.time() + 60)
    alert.series = series_of(rule_set)
    return alert


def bar(t: int, close: float) -> tuple[int, float, float, float, float, float]:
    return (t, close, close, close, close, 1.0)


def test_an_alert_fires_once_per_false_to_true_transition_on_forming_bar_updates() -> None:
    alert = alert_of(request())
    bars = LatestBars()
    steps = []
    # the same forming bar updated: 90, 101 (fires), 105 (still true), 99 (re-arms), 120
    for close in (90, 101, 105, 99, 120):
        bars.update(KEY, bar(60, close))
        steps.append(step(alert, bars))
    assert steps == [Step.NONE, Step.FIRED, Step.NONE, Step.REARMED, Step.FIRED]
    assert alert.fired == 2 and not alert.armed


def test_a_condition_true_at_creation_fires_at_once() -> None:
    alert = alert_of(request())
    bars = LatestBars()
    bars.update(KEY, bar(60, 150))
    assert step(alert, bars) is Step.FIRED


def test_an_unknown_value_neither_fires_nor_re_arms() -> None:
    alert = alert_of(request())
    alert.armed = False
    assert step(alert, LatestBars()) is Step.NONE
    assert not alert.armed


def test_an_older_bar_is_ignored() -> None:
    bars = LatestBars()
    assert bars.update(KEY, bar(120, 1))
    assert not bars.update(KEY, bar(60, 2))
    assert bars.newest(KEY) == bar(120, 1)


def test_and_binds_before_or_in_alert_rules() -> None:
    # false and false or true -> true
    raw = request(
        rules=[close_rule(">", 1000), close_rule("<", 0), close_rule(">", 10)],
        operators=["and", "or"],
    )
    bars = LatestBars()
    bars.update(KEY, bar(60, 50))
    assert step(alert_of(raw), bars) is Step.FIRED


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (
            request(rules=[close_rule(">", 1), close_rule("<", 2)], operators=["__import__('os')"]),
            "bad_rule",
        ),
        (request(rules=[{**close_rule(">", 1), "comparator": "=="}]), "bad_rule"),
        (request(rules=[{**close_rule(">", 1), "value2": "1e999"}]), "bad_rule"),
        (request(rules=[close_rule(">", 1)] * 11, operators=["and"] * 10), "limit_reached"),
        (request(message=""), "invalid_field"),
        (request(message="x" * 5000), "invalid_field"),
        (
            request(
                subscription={
                    "endpoint": "file:///etc/passwd",
                    "keys": {"p256dh": "a", "auth": "b"},
                }
            ),
            "invalid_field",
        ),
        (request(subscription="yes"), "invalid_field"),
        (request(webhook="gopher://x"), "invalid_field"),
        (request(owner=["list"]), "invalid_field"),
        (request(rules="close > 1"), "bad_rule"),
    ],
)
def test_hostile_alert_requests_are_refused_with_a_clear_code(
    raw: dict[str, Any], code: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_alert(raw, max_rules=10)
    assert caught.value.code == code


def test_an_alert_on_an_indicator_reads_the_series_of_its_data_map() -> None:
    label = "RSI length=14"
    indicator = {
        "type": "indicator",
        "id": "rsi-1",
        "indicator": {"id": "indicators.pandas_ta.momentum.rsi.RSI", "name": "RSI"},
        "inputs": {"length": "14"},
        "dataMap": {
            "close": {"source": "csv", "name": "BTCUSD", "interval": "1m", "dataKey": "close"}
        },
    }
    rule = {
        "type1": "indicator",
        "indicator1": label,
        "output1": "RSI",
        "comparator": ">",
        "type2": "value",
        "value2": "70",
    }
    _, rule_set = parse_alert(
        request(rules=[rule], indicators={label: {"indicator": indicator}}), 10
    )
    assert reads_indicators(rule_set)
    assert series_of(rule_set) == (KEY,)


def test_the_store_keeps_alerts_and_their_state_across_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    store = AlertStore(db)
    spec, _ = parse_alert(request(owner="me"), 10)
    row = store.create(spec, "10.0.0.1", time.time() + 60, per_day=5)
    assert row is not None
    store.save_state(row["id"], armed=False, fired=3)
    store.close()
    reopened = AlertStore(db)
    [found] = reopened.active(time.time())
    assert (found["armed"], found["fired"], found["spec"]["owner"]) == (False, 3, "me")
    assert reopened.active(time.time() + 120) == []  # expired
    reopened.close()


def test_the_store_counts_alerts_per_address_per_day(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "db.sqlite3")
    spec, _ = parse_alert(request(), 10)
    made = [store.create(spec, "10.0.0.1", time.time() + 60, per_day=2) for _ in range(3)]
    assert [row is not None for row in made] == [True, True, False]
    assert store.create(spec, "10.0.0.2", time.time() + 60, per_day=2) is not None
    store.delete([made[0]["id"]])  # type: ignore[index]
    assert store.create(spec, "10.0.0.1", time.time() + 60, per_day=2) is None
    store.close()


def test_a_create_waits_for_another_writer_and_a_lock_past_its_wait_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar store's flush holds the database's write lock across many statements; a
    stalled event loop stretched it past the alert store's 5 s wait, and the create failed
    with a raw ``sqlite3.OperationalError`` (an ``internal_error`` and a traceback)."""
    db = tmp_path / "db.sqlite3"
    AlertStore(db).close()  # the tables
    monkeypatch.setattr(alert_store, "BUSY_TIMEOUT_MS", 2_000)
    store = AlertStore(db)
    spec, _ = parse_alert(request(), 10)
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    releasing = threading.Timer(0.3, writer.commit)
    releasing.start()
    assert store.create(spec, "10.0.0.1", time.time() + 60, per_day=5) is not None
    releasing.join()
    monkeypatch.setattr(alert_store, "BUSY_TIMEOUT_MS", 100)
    impatient = AlertStore(db)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(StorageError, match="locked"):
        impatient.create(spec, "10.0.0.1", time.time() + 60, per_day=5)
    writer.rollback()
    assert impatient.create(spec, "10.0.0.1", time.time() + 60, per_day=5) is not None
    for opened in (store, impatient):
        opened.close()
    writer.close()


def browser_subscription(**keys: str) -> dict[str, Any]:
    """A subscription as a browser makes it (a real P-256 point, 16 random bytes)."""
    made = BrowserKeys()
    return {
        "endpoint": "https://push.example.com/send/abc",
        "expirationTime": None,
        "keys": {"p256dh": made.p256dh(), "auth": b64url(made.auth), **keys},
    }


NOT_ON_THE_CURVE = b64url(b"\x04" + b"\x01" * 64)


@pytest.mark.parametrize(
    "subscription",
    [
        browser_subscription(p256dh=NOT_ON_THE_CURVE),
        browser_subscription(p256dh="!!!***"),
        browser_subscription(p256dh=b64url(b"\x04" + b"\x01" * 10)),
        browser_subscription(auth=b64url(b"12345")),
        browser_subscription(auth=""),
        {**browser_subscription(), "endpoint": "http://"},
        {**browser_subscription(), "endpoint": "https://:443/x"},
    ],
    ids=[
        "not-a-point",
        "not-base64",
        "short-point",
        "auth-5-bytes",
        "auth-empty",
        "no-host",
        "port-only",
    ],
)
def test_a_push_subscription_a_browser_cannot_have_made_is_refused(
    subscription: dict[str, Any],
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_alert(request(subscription=subscription), max_rules=10)
    assert caught.value.code == "invalid_field" and "subscription" in caught.value.message


def test_a_browsers_subscription_is_accepted_over_http_and_loopback_by_default() -> None:
    local = {**browser_subscription(), "endpoint": "http://127.0.0.1:8080/push/x"}
    spec, _ = parse_alert(request(subscription=local), max_rules=10)
    assert spec["subscription"]["endpoint"] == local["endpoint"]
    with pytest.raises(ProtocolError, match="ALERT_PUSH_PUBLIC_ONLY"):
        parse_alert(request(subscription=local), max_rules=10, public_only=True)
    parse_alert(request(subscription=browser_subscription()), max_rules=10, public_only=True)


def test_unknown_keys_of_rules_and_subscription_are_not_stored_and_the_size_is_bounded() -> None:
    junk = "x" * 450_000
    subscription = {**browser_subscription(), "junk": junk}
    subscription["keys"] = {**subscription["keys"], "junk": junk}
    raw = request(rules=[{**close_rule(">", 1), "junk": junk}], subscription=subscription)
    spec, _ = parse_alert(raw, max_rules=10)
    assert "junk" not in json.dumps(spec)
    assert spec["rules"] == [close_rule(">", 1)]
    assert set(spec["subscription"]) == {"endpoint", "keys"}
    with pytest.raises(ProtocolError, match="too large"):
        parse_alert(rsi_request({"length": "1" * 100_000}), max_rules=10)


def rsi_request(inputs: dict[str, str]) -> dict[str, Any]:
    label = "RSI"
    indicator = {
        "type": "indicator",
        "id": "rsi-1",
        "indicator": {"id": "talib.momentum.RSI", "name": "RSI", "details": {"junk": 1}},
        "inputs": inputs,
        "dataMap": {
            "close": {"source": "csv", "name": "BTCUSD", "interval": "1m", "dataKey": "close"}
        },
        "render": {"paneIdx": 1},
    }
    rule = {**close_rule(">", 70), "type1": "indicator", "indicator1": label, "output1": "RSI"}
    return request(rules=[rule], indicators={label: {"indicator": indicator}, "unused": {}})


def test_an_indicator_alert_keeps_only_what_the_engine_reads() -> None:
    spec, _ = parse_alert(rsi_request({"timeperiod": "14"}), max_rules=10)
    assert spec["indicators"] == {
        "RSI": {
            "indicator": {
                "type": "indicator",
                "id": "rsi-1",
                "indicator": {"id": "talib.momentum.RSI", "name": "RSI"},
                "inputs": {"timeperiod": "14"},
                "dataMap": {
                    "close": {
                        "source": "csv",
                        "name": "BTCUSD",
                        "interval": "1m",
                        "dataKey": "close",
                    }
                },
            }
        }
    }


def test_a_daily_quota_of_zero_allows_no_alert(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "db.sqlite3")
    spec, _ = parse_alert(request(), 10)
    assert store.create(spec, "10.0.0.1", time.time() + 60, per_day=0) is None
    store.close()
