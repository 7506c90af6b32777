"""End to end: a chart asked for while the server starts, before the CSV provider is ready."""

from __future__ import annotations

import time
from pathlib import Path

from backend.model import intervals
from tests.harness import ServerProcess, WsClient, base_env, populate, same_key

DAYS = 30  # of 1-minute rows: 43,200, far more than a data_init of 5 may fetch


def _write_minutes(path: Path, first: int) -> None:
    lines = ["date,open,high,low,close,volume"]
    for i in range(DAYS * 1440):
        price = 100 + (i % 50) / 10
        date = intervals.format_date(first + 60 * i)
        lines.append(f"{date},{price},{price + 1},{price - 1},{price + 0.5},1")
    path.write_text("\n".join(lines) + "\n")


async def test_a_data_init_sent_before_the_replay_clock_is_known_fetches_only_its_tail(
    tmp_path: Path,
) -> None:
    """The file's replay clock runs two months ahead of the wall clock. The request reaches
    the hub before the provider is ready: its tail must be fetched back from the replay
    clock, not from the wall time (which fetched the 21,600 rows between them)."""
    started = int(time.time())
    now = started // 60 * 60  # the rows are whole minutes
    folder = tmp_path / "csv"
    folder.mkdir()
    _write_minutes(folder / "AHEAD.csv", now + 60 * 86_400)
    env = base_env(
        tmp_path,
        PROVIDERS="slowcsv",
        EXTRA_PROVIDERS="slowcsv=tests.providers_csv:SlowStartCSVProvider",
        CSV_FOLDER_PATH=str(folder),
        CSV_REPLAY_SPEED="60",
        # the start itself, not its minute: up to 59 s earlier is 3,540 s of data at 60x
        CSV_REPLAY_EPOCH=intervals.format_date(started),
    )
    assert populate(env).returncode == 0
    env["CANDLEWIRE_TEST_INIT_DELAY"] = "1.5"
    server = ServerProcess(env, tmp_path / "server.log").start(healthy=False)
    try:
        assert server.get("/health")["providers"]["slowcsv"]["state"] != "running"
        client = await WsClient.open(server.ws_url)
        await client.send(
            {"type": "data", "source": "slowcsv", "name": "AHEAD", "interval": "1m", "count": 5}
        )
        init = await client.wait_for("data_init", same_key("AHEAD", "1m"), timeout=10)
        await client.close()
    finally:
        server.stop()
    dates = [intervals.parse_date(bar["date"]) for bar in init["data"]]
    assert len(dates) == 5 and dates == sorted(dates)
    middle = now + 60 * 86_400 + DAYS * 86_400 // 2
    assert abs(dates[-1] - middle) < 3600  # the replay clock, not the wall clock
    log = (tmp_path / "server.log").read_text()
    assert "bars: kept the" not in log, "a data_init of 5 bars fetched the whole window"
