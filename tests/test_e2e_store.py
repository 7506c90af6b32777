"""End to end: the bar store across server restarts, crashes, a small memory bound and a
disk that fills up while the server runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import sqlite3
import time
from pathlib import Path

import psutil

from backend.history.store import SCHEMA as STORE_SCHEMA
from backend.history.store import WAL_LIMIT
from backend.serving import STARTUP_FAILED
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    eventually,
    populate,
    refused_start,
    same_key,
)


def history_calls(env: dict[str, str], symbol: str, interval: str) -> int:
    path = Path(env["CANDLEWIRE_TEST_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return lines.count(f"history {symbol} {interval}")


def data(name: str, interval: str, count: int, stream: bool = True) -> dict[str, object]:
    return {
        "type": "data",
        "source": "counting",
        "name": name,
        "interval": interval,
        "count": count,
        "stream": stream,
    }


def setup(tmp: Path, **extra: str) -> dict[str, str]:
    env = base_env(tmp, PROVIDERS="counting", **extra)
    assert populate(env).returncode == 0
    return env


async def init_then_history(env: dict[str, str], log: Path, end: str | None) -> tuple[dict, dict]:
    """On a fresh server: ``data_init`` AAA 1d, then ``data_history`` AAA 1h up to ``end``
    (default: the sixth daily bar); the store is flushed before the server stops."""
    with ServerProcess(env, log) as server:
        ws = await WsClient.open(server.ws_url)
        await ws.send(data("AAA", "1d", 20))
        init = await ws.wait_for("data_init", same_key("AAA", "1d"))
        end = end or init["data"][5]["date"]
        await ws.send({"type": "data_history", "source": "counting", "name": "AAA",
                       "interval": "1h", "end": end, "count": 100})  # fmt: skip
        page = await ws.wait_for("data_history", same_key("AAA", "1h"))
        await ws.close()
    return init, page  # the store writes what is queued when the server stops


async def test_a_restarted_server_answers_stored_history_without_the_provider(
    tmp_path: Path,
) -> None:
    env = setup(tmp_path)
    first, page = await init_then_history(env, tmp_path / "server.log", None)
    calls = history_calls(env, "AAA", "1d") + history_calls(env, "AAA", "1h")
    assert calls >= 2
    end = first["data"][5]["date"]
    again, page_again = await init_then_history(env, tmp_path / "server.log", end)
    assert history_calls(env, "AAA", "1d") + history_calls(env, "AAA", "1h") == calls
    assert [b["date"] for b in again["data"]] == [b["date"] for b in first["data"]]
    assert page_again["data"] == page["data"]


async def test_fifty_concurrent_cold_requests_make_one_provider_call(tmp_path: Path) -> None:
    env = setup(tmp_path)
    with ServerProcess(env, tmp_path / "server.log") as server:
        clients = await asyncio.gather(*(WsClient.open(server.ws_url) for _ in range(50)))
        await asyncio.gather(*(ws.send(data("CCC", "5m", 300)) for ws in clients))
        inits = await asyncio.gather(
            *(ws.wait_for("data_init", same_key("CCC", "5m")) for ws in clients)
        )
        await asyncio.gather(*(ws.close() for ws in clients))
    assert all(len(init["data"]) == 300 for init in inits)
    assert history_calls(env, "CCC", "5m") == 1


async def test_a_small_memory_bound_holds_and_answers_stay_correct(tmp_path: Path) -> None:
    env = setup(tmp_path, CACHE_MAX_BARS="500")
    with ServerProcess(env, tmp_path / "server.log") as server:
        ws = await WsClient.open(server.ws_url)
        keys = [(n, i) for n in ("AAA", "BBB", "CCC") for i in ("1m", "5m", "15m", "1h")]
        answers = {}
        for name, interval in keys:
            mark = len(ws.messages)
            await ws.send(data(name, interval, 200, stream=False))
            init = await ws.wait_for("data_init", same_key(name, interval), after=mark)
            answers[(name, interval)] = init["data"]
            assert cached_bars(server) <= 500
        for name, interval in keys:  # again: from the store, the provider or memory
            mark = len(ws.messages)
            await ws.send(
                {
                    "type": "data_history",
                    "source": "counting",
                    "name": name,
                    "interval": interval,
                    "end": answers[(name, interval)][-2]["date"],
                    "count": 150,
                }
            )
            page = await ws.wait_for("data_history", same_key(name, interval), after=mark)
            assert page["data"] == answers[(name, interval)][-151:-1]
            assert cached_bars(server) <= 500
        await ws.close()


def cached_bars(server: ServerProcess) -> float:
    metrics = server.get("/metrics")
    return float(re.search(r"^candlewire_cached_bars (\S+)$", metrics, re.M).group(1))


async def test_kill_9_of_the_server_loses_no_answered_bar(tmp_path: Path) -> None:
    env = setup(tmp_path, CANDLEWIRE_TEST_PERIOD="0.05")
    server = ServerProcess(env, tmp_path / "server.log").start()
    provider_pid = server.get("/health")["providers"]["counting"]["pid"]
    ws = await WsClient.open(server.ws_url)
    await ws.send(data("BBB", "1m", 50))
    init = await ws.wait_for("data_init", same_key("BBB", "1m"))

    def bbb_updates() -> list[dict]:
        return [m["data"] for m in ws.of_type("data_update") if m["name"] == "BBB"]

    await eventually(lambda: len(bbb_updates()) >= 40, what="40 live updates")
    updates = bbb_updates()
    await asyncio.sleep(1.0)  # "on disk within one second"
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.stop()
    await ws.close()
    for _ in range(50):  # the provider dies with its hub
        if not psutil.pid_exists(provider_pid):
            break
        await asyncio.sleep(0.1)
    db = sqlite3.connect(env["DB"])
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT datetime(t, 'unixepoch'), o, h, l, c, v FROM bars JOIN bar_series s "
            "ON s.id = bars.series WHERE s.name = 'BBB' AND s.interval = '1m'"
        )
    }
    db.close()
    answered = {bar["date"]: bar for bar in init["data"][:-1]}  # closed when answered
    assert set(answered) <= set(stored)
    for date, bar in answered.items():
        assert stored[date][3] == bar["counting-BBB-1m-close"]
    # The wall-clock minute may turn while the updates arrive. A bar that closed live is
    # written when the next one begins; the forming bar is stored only if it was answered
    # with the history (a bar begun since comes back from the provider with the tail).
    last_update = {bar["date"]: bar for bar in updates}
    assert last_update
    forming = max(last_update)
    for date, bar in last_update.items():
        if date != forming:
            assert stored[date][3] == bar["counting-BBB-1m-close"]
    if forming == init["data"][-1]["date"]:
        assert forming in stored


def metric(server: ServerProcess, name: str) -> float:
    """The value of an unlabelled metric (0 when it is not exported)."""
    found = re.search(rf"^{name} (\S+)$", server.get("/metrics"), re.M)
    return float(found.group(1)) if found else 0.0


def stored_dates(env: dict[str, str], name: str, interval: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(env["DB"])) as db:
        rows = db.execute(
            "SELECT datetime(t, 'unixepoch') FROM bars JOIN bar_series s ON s.id = bars.series "
            "WHERE s.name = ? AND s.interval = ?",
            (name, interval),
        ).fetchall()
    return {str(row[0]) for row in rows}


# The server may write no file past this size (RLIMIT_FSIZE): a disk with no room left. Its
# log (started a few KB long) has room; the database and its WAL have none.
FULL_AT = 16384


async def test_a_full_disk_keeps_the_server_answering_says_so_and_stores_all_when_space_returns(
    tmp_path: Path,
) -> None:
    env = setup(tmp_path, CANDLEWIRE_TEST_PERIOD="0.05")
    log = tmp_path / "server.log"
    with ServerProcess(env, log) as server:
        assert server.proc is not None
        ws = await WsClient.open(server.ws_url)
        await ws.send(data("BBB", "1m", 50))
        await ws.wait_for("data_init", same_key("BBB", "1m"))
        await eventually(lambda: len(stored_dates(env, "BBB", "1m")) >= 49, what="BBB stored")
        assert log.stat().st_size < FULL_AT // 2
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (FULL_AT, resource.RLIM_INFINITY))
        await ws.send(data("AAA", "1h", 300))
        init = await ws.wait_for("data_init", same_key("AAA", "1h"))
        assert len(init["data"]) == 300  # answered (from the provider, kept in memory)
        await eventually(
            lambda: metric(server, "candlewire_store_write_failures_total") >= 4,
            what="four failed writes counted",
        )
        health = server.get("/health")
        assert health["status"] == "degraded"
        assert health["reason"].startswith("bar store cannot write DB")
        assert health["store"]["state"] == "failing"
        assert health["store"]["queued_bars"] >= 300
        assert metric(server, "candlewire_store_failing") == 1
        mark = len(ws.messages)
        await eventually(
            lambda: len(ws.of_type("data_update", after=mark)) >= 10, what="streaming goes on"
        )
        store_lines = [line for line in log.read_text().splitlines() if "bar store:" in line]
        assert len(store_lines) == 1, store_lines  # not one line per failed write
        assert f"cannot write DB {env['DB']}" in store_lines[0]
        resource.prlimit(
            server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        await eventually(lambda: server.get("/health")["status"] == "ok", what="health ok again")
        assert metric(server, "candlewire_store_failing") == 0
        answered = {bar["date"] for bar in init["data"][:-1]}
        assert answered <= stored_dates(env, "AAA", "1h")  # every closed bar answered
        await ws.close()
    lines = log.read_text().splitlines()
    assert sum("bar store:" in line for line in lines) == 2
    assert any(f"writing DB {env['DB']} again" in line for line in lines)
    with contextlib.closing(sqlite3.connect(env["DB"])) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def damage(db_path: Path) -> None:
    """Overwrite the start of every page after the first two (a disk that lost sectors):
    the file still opens as SQLite, and reading its tables says it is malformed."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db_path.read_bytes())
    for page in range(2 * 4096, len(data), 4096):
        data[page : page + 100] = b"\xff" * 100
    db_path.write_bytes(bytes(data))


def test_a_damaged_db_stops_the_start_with_one_line_naming_db_and_what_to_do(
    tmp_path: Path,
) -> None:
    env = setup(tmp_path)
    damage(Path(env["DB"]))
    result = refused_start(env, code=STARTUP_FAILED)
    assert "Traceback" not in result.stderr, result.stderr
    line = next(line for line in result.stderr.splitlines() if f"DB: {env['DB']}" in line)
    assert f"candlewire: DB: {env['DB']} cannot be read (database disk image is malformed)" in line
    assert "populate.py" in line and "backup" in line  # what to do


async def test_a_db_replaced_while_the_server_runs_is_reported_and_left_untouched(
    tmp_path: Path,
) -> None:
    """A database moved in place of ``DB`` (a backup restored, a new one populated apart)
    while the server runs: the server still holds the old file, but its journal
    (``DB-wal``) is found by name, so the new file got the server's pages."""
    env = setup(tmp_path, CANDLEWIRE_TEST_PERIOD="0.05")
    log = tmp_path / "server.log"
    other = dict(env, DB=str(tmp_path / "other.sqlite3"), PROVIDERS="my_provider")
    assert populate(other).returncode == 0
    with ServerProcess(env, log) as server:
        ws = await WsClient.open(server.ws_url)
        await ws.send(data("BBB", "1m", 50))
        await ws.wait_for("data_init", same_key("BBB", "1m"))
        await eventually(lambda: len(stored_dates(env, "BBB", "1m")) >= 49, what="BBB stored")
        os.replace(other["DB"], env["DB"])
        await ws.send(data("AAA", "1h", 300))
        init = await ws.wait_for("data_init", same_key("AAA", "1h"))
        assert len(init["data"]) == 300  # answered from memory
        await eventually(
            lambda: server.get("/health")["status"] == "degraded", what="health degraded"
        )
        assert "was deleted or replaced" in server.get("/health")["reason"]
        mark = len(ws.messages)
        await eventually(
            lambda: len(ws.of_type("data_update", after=mark)) >= 10, what="streaming goes on"
        )
        await ws.close()
    lines = [line for line in log.read_text().splitlines() if "bar store:" in line]
    assert len(lines) == 2, lines  # the replacement, then the bars not written at the stop
    assert f"cannot write DB {env['DB']}: it was deleted or replaced" in lines[0]
    with contextlib.closing(sqlite3.connect(env["DB"])) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "bar_series" not in tables  # populate makes none: none of the server's pages
        assert db.execute("SELECT DISTINCT source FROM symbols").fetchall() == [("my_provider",)]


def add_old_bars(env: dict[str, str], count: int, days_old: int) -> None:
    """``count`` minute bars of 20 series, all older than ``days_old`` days."""
    newest = int(time.time()) // 60 * 60 - days_old * 86400 - 60
    with contextlib.closing(sqlite3.connect(env["DB"])) as db:
        db.executescript(STORE_SCHEMA.read_text())
        for k in range(20):
            series = db.execute(
                "INSERT INTO bar_series (source, name, interval) VALUES ('counting', ?, '1m')",
                (f"OLD{k}",),
            ).lastrowid
            db.executemany(
                "INSERT INTO bars VALUES (?, ?, 1, 1, 1, 1, 1, 0)",
                ((series, newest - 60 * j) for j in range(count // 20)),
            )
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def wal_size(env: dict[str, str]) -> int:
    wal = Path(env["DB"] + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_a_large_retention_leaves_no_large_journal_behind(tmp_path: Path) -> None:
    """The first retention pass over a store that kept everything deletes millions of bars
    in one transaction, all of it in the journal (``DB-wal``); SQLite reuses that file from
    its start after a checkpoint but never shrinks it: it stayed as large as the deleted
    bars for as long as the server ran, on a disk that retention was meant to relieve."""
    env = setup(tmp_path, BAR_RETENTION_DAYS="1m=7")
    add_old_bars(env, 1_500_000, days_old=8)
    log = tmp_path / "server.log"
    with ServerProcess(env, log) as server:
        await eventually(
            lambda: "retention: removed 1500000 bars" in log.read_text(),
            timeout=60,
            what="the retention pass",
        )
        assert wal_size(env) > 2 * WAL_LIMIT  # the deletion went through the journal
        ws = await WsClient.open(server.ws_url)
        for interval in ("1h", "4h", "1d", "15m"):  # new series: writes after the pass
            mark = len(ws.messages)
            await ws.send(data("AAA", interval, 100, stream=False))
            await ws.wait_for("data_init", same_key("AAA", interval), after=mark)
        await eventually(
            lambda: wal_size(env) <= WAL_LIMIT, what=f"DB-wal back to {WAL_LIMIT} bytes"
        )
        await ws.close()


async def test_a_long_outage_keeps_the_write_queue_bounded_and_the_store_consistent(
    tmp_path: Path,
) -> None:
    """While the disk is full every answered bar waited in the store's queue, outside the
    memory bound (``CACHE_MAX_BARS``), for as long as the outage lasted. The queue now
    holds at most that many bars: the series queued first are given up (counted, logged)
    and their coverage is not stored for the rest of the run, so what the file says is
    complete stays true; after a restart each answer is what it was."""
    env = setup(tmp_path, CACHE_MAX_BARS="500")
    log = tmp_path / "server.log"
    keys = [("AAA", "1h"), ("AAA", "30m"), ("CCC", "1h"), ("CCC", "30m")]
    answers = {}
    with ServerProcess(env, log) as server:
        assert server.proc is not None
        ws = await WsClient.open(server.ws_url)
        await ws.send(data("BBB", "1m", 50, stream=False))
        await ws.wait_for("data_init", same_key("BBB", "1m"))
        await eventually(lambda: len(stored_dates(env, "BBB", "1m")) >= 49, what="BBB stored")
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (FULL_AT, resource.RLIM_INFINITY))
        for name, interval in keys:
            mark = len(ws.messages)
            await ws.send(data(name, interval, 300, stream=False))
            init = await ws.wait_for("data_init", same_key(name, interval), after=mark)
            answers[(name, interval)] = [bar["date"] for bar in init["data"]]
            assert len(answers[(name, interval)]) == 300
            await eventually(
                lambda: server.get("/health")["store"]["state"] == "failing", what="failing"
            )
        health = server.get("/health")
        assert health["store"]["queued_bars"] <= 500
        assert metric(server, "candlewire_store_given_up_bars_total") >= 600
        resource.prlimit(
            server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        await eventually(lambda: server.get("/health")["status"] == "ok", what="health ok again")
        await ws.close()
    with ServerProcess(env, log) as server:
        ws = await WsClient.open(server.ws_url)
        for name, interval in keys:
            mark = len(ws.messages)
            await ws.send(data(name, interval, 300, stream=False))
            init = await ws.wait_for("data_init", same_key(name, interval), after=mark)
            assert [bar["date"] for bar in init["data"]] == answers[(name, interval)]
        await ws.close()
    given_up = [line for line in log.read_text().splitlines() if "given up" in line]
    assert given_up and len(given_up) <= 3, given_up
