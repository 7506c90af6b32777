"""Nothing of a deleted alert fires later, and a fired alert is not fired again after a
restart (the real hub and alerts, a fake provider whose history waits): an alert on
indicators whose computation is in flight when it is deleted does not fire when the
computation ends; the armed states being written when the server stops are all kept."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from backend.alerts.store import AlertStore, Batch, Dropped
from backend.model.bars import SeriesId
from tests.harness import eventually
from tests.hub_fakes import SOURCE, FakeClock, close_above_alert, connect, make_hub, send, taken

KEY = SeriesId(SOURCE, "AAA", "1m")
T0 = 1_700_000_040  # a whole minute


def rsi_above_zero() -> dict[str, Any]:
    """``RSI(14) of AAA 1m > 0``: true as soon as it is computed on rising closes."""
    label = "RSI 14"
    series = {"source": SOURCE, "name": "AAA", "interval": "1m"}
    config = {
        "id": "rsi",
        "indicator": {"id": "talib.momentum.RSI"},
        "inputs": {"timeperiod": 14},
        "dataMap": {"close": {**series, "value": "fake-AAA-1m-close", "dataKey": "close"}},
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
        "type": "alert",
        "message": "deleted before its computation ended",
        "rules": [rule],
        "operators": [],
        "indicators": {label: {"indicator": config, "outputs": [{"name": "RSI"}]}},
        "subscription": None,
        "owner": "owner-of-the-deleted-alert",
    }


async def test_an_alert_deleted_while_its_indicators_compute_never_fires(tmp_path: Path) -> None:
    hub, provider = make_hub(FakeClock())
    bars = [(T0 + 60 * i, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0) for i in range(60)]
    provider.history = bars
    gate = provider.gates["AAA"] = asyncio.Event()
    alerting = hub.alerting
    await alerting.open(tmp_path / "candlewire.db")
    try:
        client = connect(hub)
        await send(hub, client, rsi_above_zero())
        created = next(m for m in taken(client) if m["type"] == "alert_created")
        alert = alerting.alerts[created["id"]]
        alerting.on_bar(KEY, bars[-1])  # a live update: the computation waits for the history
        await eventually(lambda: provider.history_calls > 0, what="the history fetch")
        await send(hub, client, {"type": "alert_delete", "id": alert.id, "owner": alert.owner})
        assert [m["type"] for m in taken(client)] == ["alert_deleted"]
        gate.set()
        await eventually(lambda: not alerting._computing, what="the computation to end")
        for _ in range(20):
            await asyncio.sleep(0)
        assert alert.fired == 0
        assert hub.metrics.value("candlewire_alerts_fired_total") == 0
        assert [m for m in taken(client) if m["type"] == "notification"] == []
    finally:
        await alerting.close()


async def test_a_stop_while_armed_states_are_written_keeps_every_state(tmp_path: Path) -> None:
    """The writer's batch still being written when the server stops is finished before the
    store closes: the stop cancelled the writer while its thread went on, the store closed
    under it and the rest of the batch was lost, so an alert that had fired resumed armed
    and fired again for the same crossing after the restart."""
    hub, provider = make_hub(FakeClock())
    provider.history = [(T0 + 60 * i, 100.0, 101.0, 99.0, 100.5, 10.0) for i in range(3)]
    alerting = hub.alerting
    db = tmp_path / "candlewire.db"
    await alerting.open(db)
    client = connect(hub)
    base = close_above_alert()
    await send(
        hub,
        client,
        *({**base, "message": f"m{n}", "subscription": None, "owner": "o"} for n in range(2)),
    )
    ids = [m["id"] for m in taken(client) if m["type"] == "alert_created"]
    assert len(ids) == 2
    store = alerting.store
    assert store is not None
    writing = threading.Event()
    release = threading.Event()
    commit = store.commit

    def slow_commit(batch: Batch, worker: int, cap: int) -> list[Dropped]:
        writing.set()
        release.wait(5)
        return commit(batch, worker, cap)

    store.commit = slow_commit  # type: ignore[method-assign]
    alerting.on_bar(KEY, (T0 + 180, 100.0, 2000.0, 99.0, 1500.0, 10.0))  # both fire
    assert all(alerting.alerts[i].fired == 1 for i in ids)
    await eventually(writing.is_set, what="the writer's batch to start")
    closing = asyncio.ensure_future(alerting.close())
    await asyncio.sleep(0.05)  # time must pass: a stop that does not wait closes the store
    release.set()
    await closing
    rows = AlertStore(db).active(0.0)
    assert [(row["armed"], row["fired"]) for row in rows] == [(False, 1), (False, 1)]
