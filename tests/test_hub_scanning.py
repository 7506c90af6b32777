"""Scans through the real Hub (fake provider, no sockets): ``scan_stop`` ends a scan at once
while its history call blocks, and leaves nothing behind; a stop of no scan says nothing;
the end of one scan never comes among the messages of the next."""

from __future__ import annotations

import asyncio
from typing import Any

from backend.hub.hub import Hub
from tests.harness import eventually
from tests.hub_fakes import SOURCE, FakeProvider, FakeSymbols, connect, make_hub, send, taken

STOP = {"type": "scan_stop"}


class Symbols(FakeSymbols):
    """The fake index, with the ``details`` of each row a scan's universe is made of."""

    async def search(self, query: str, limit: int = 100, source: str | None = None) -> list[Any]:
        rows = await super().search(query, limit, source)
        return [row | {"details": await self.details(SOURCE, row["name"])} for row in rows]


def scan(search: str) -> dict[str, Any]:
    """``close > 0`` of AAA 1m (the template), over the symbols matching ``search``."""
    rule = {"type1": "data", "source1": SOURCE, "name1": "AAA", "interval1": "1m",
            "key1": "close", "comparator": ">", "type2": "value", "value2": "0"}  # fmt: skip
    template = {"type": "data", "source": SOURCE, "name": "AAA", "interval": "1m"}
    return {"type": "scan", "search": search, "rules": [rule], "operators": [],
            "indicators": {}, "dataProviderConfig": {"data": [template]}}  # fmt: skip


def scanning_hub() -> tuple[Hub, FakeProvider, asyncio.Event]:
    """A hub whose provider's history of AAA blocks until the event returned is set."""
    hub, provider = make_hub()
    hub.symbols = Symbols()  # type: ignore[assignment]
    provider.history = [(60 * i, 1.0, 1.0, 1.0, 1.0, 1.0) for i in range(1, 30)]
    gate = provider.gates["AAA"] = asyncio.Event()
    return hub, provider, gate


def kinds(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["type"], m.get("message", m.get("stopped"))) for m in messages]


async def turns(n: int = 20) -> None:
    """Let the loop run ``n`` times (what was to follow a message has been sent)."""
    for _ in range(n):
        await asyncio.sleep(0)


def quiet(hub: Hub) -> bool:
    """No scan runs or is owned, every symbol slot is free, no history lock is held."""
    scanning = hub.scanning
    locks = hub.planner._locks.values()
    return (
        not scanning.running
        and not scanning._scans
        and not scanning._tasks
        and scanning.limit._value == 8
        and not any(lock.locked() for lock in locks)
    )


async def test_scan_stop_while_the_history_call_blocks_ends_the_scan_at_once() -> None:
    hub, provider, gate = scanning_hub()
    client = connect(hub)
    await send(hub, client, scan("AAA"))
    await eventually(lambda: provider.history_calls == 1, what="the history call")
    assert kinds(taken(client)) == [("scan_progress", "Scanning 1/1")]
    await send(hub, client, STOP)
    await eventually(lambda: quiet(hub), what="the scan ended, its slot and lock free")
    assert kinds(taken(client)) == [
        ("scan_progress", "Stopped: 0 of 1 matched"),
        ("scan_done", True),
    ]
    gate.set()  # the provider answers after all: nothing of the scan follows
    await turns()
    assert taken(client) == []


async def test_scan_stop_of_no_scan_or_of_a_finished_one_sends_nothing() -> None:
    hub, _, gate = scanning_hub()
    gate.set()
    client = connect(hub)
    await send(hub, client, STOP, STOP)
    await send(hub, client, scan("AAA"))
    await eventually(lambda: quiet(hub), what="the scan's end")
    assert kinds(taken(client))[-1] == ("scan_done", False)
    await send(hub, client, STOP)
    await turns()
    assert taken(client) == []


async def test_a_scan_after_a_stop_comes_after_the_stopped_ones_end() -> None:
    """``scan_stop`` and a new scan in one frame, then a scan and many stops in one."""
    hub, provider, _ = scanning_hub()
    client = connect(hub)
    await send(hub, client, scan("AAA"))
    await eventually(lambda: provider.history_calls == 1, what="the history call")
    assert kinds(taken(client)) == [("scan_progress", "Scanning 1/1")]
    await send(hub, client, STOP, scan("BBB"))  # BBB's history does not block
    await eventually(lambda: quiet(hub), what="the second scan's end")
    assert kinds(taken(client)) == [
        ("scan_progress", "Stopped: 0 of 1 matched"),
        ("scan_done", True),
        ("scan_progress", "Scanning 1/1"),
        ("scan_result", None),
        ("scan_progress", "Done: 1 of 1 matched"),
        ("scan_done", False),
    ]
    await send(hub, client, scan("AAA"), *[STOP] * 30)
    await eventually(lambda: quiet(hub), what="the stopped scan's end")
    assert kinds(taken(client)) == [
        ("scan_progress", "Stopped: 0 of 1 matched"),
        ("scan_done", True),
    ]


async def test_a_client_that_leaves_mid_scan_leaves_no_task_slot_or_lock() -> None:
    hub, provider, gate = scanning_hub()
    client = connect(hub)
    await send(hub, client, scan("AAA"))
    await eventually(lambda: provider.history_calls == 1, what="the history call")
    assert not quiet(hub)
    hub.remove_client(client)
    await eventually(lambda: quiet(hub), what="the scan ended, its slot and lock free")
    gate.set()
    await turns()
    assert client.id not in hub.clients
