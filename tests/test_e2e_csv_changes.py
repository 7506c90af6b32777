"""End to end: a CSV file changed while the server runs (rows appended, or rewritten)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import (
    ServerProcess,
    WsClient,
    eventually,
    populated_server,
    same_key,
    seconds,
)

START = datetime(2026, 1, 5)
ROWS = 300


def row(k: int, close: float | None = None) -> str:
    t = START + timedelta(minutes=k)
    c = 10 + k if close is None else close
    return f"{t:%Y-%m-%d %H:%M:%S},{10 + k},{11 + k},{9 + k},{c},1\n"


def date(k: int) -> str:
    return f"{START + timedelta(minutes=k):%Y-%m-%d %H:%M:%S}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "LIVE.csv").write_text(
        "date,open,high,low,close,volume\n" + "".join(row(k) for k in range(ROWS))
    )
    return folder


@pytest.fixture
def server(tmp_path: Path, folder: Path) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as running:
        yield running


async def data_init(
    server: ServerProcess, interval: str, count: int, name: str = "LIVE"
) -> list[dict[str, object]]:
    """A new client's ``data_init`` of ``name`` (not streamed)."""
    ws = await WsClient.open(server.ws_url)
    try:
        await ws.send(
            {
                "type": "data",
                "source": "csv",
                "name": name,
                "interval": interval,
                "count": count,
                "stream": False,
            }
        )
        init = await ws.wait_for("data_init", same_key(name, interval), 10)
        return list(init["data"])
    finally:
        await ws.close()


async def test_rows_appended_to_a_file_reach_open_charts_and_history(
    server: ServerProcess, folder: Path, client: WsClient
) -> None:
    """A user who appended today's bars to a file saw nothing new while the server ran:
    the file was read once (and with CSV_REPLAY_SPEED=0 nothing streamed). The new rows
    now reach an open chart as new bars, and every data_init after them."""
    await client.send(
        {"type": "data", "source": "csv", "name": "LIVE", "interval": "1m", "count": 5}
    )
    init = await client.wait_for("data_init", same_key("LIVE", "1m"))
    assert init["data"][-1]["date"] == date(ROWS - 1)
    hours = await data_init(server, "1h", 2)  # cached, not streamed
    assert [bar["date"] for bar in hours] == [date(180), date(240)]
    with (folder / "LIVE.csv").open("a") as handle:
        handle.write(row(ROWS) + row(ROWS + 1))

    def streamed() -> set[object]:
        return {m["data"]["date"] for m in client.of_type("data_update")}

    await eventually(lambda: date(ROWS + 1) in streamed(), 15, "the appended bars streamed")
    assert date(ROWS) in streamed()
    bars = await data_init(server, "1m", 3)
    assert [bar["date"] for bar in bars] == [date(ROWS - 1), date(ROWS), date(ROWS + 1)]
    hours = await data_init(server, "1h", 2)
    assert [bar["date"] for bar in hours] == [date(240), date(ROWS)]
    assert hours[-1]["csv-LIVE-1h-close"] == 10 + ROWS + 1
    log = server.log_path.read_text()
    assert log.count("LIVE.csv: changed: read again") == 1, log


async def test_history_after_a_file_is_rewritten_is_its_new_content(
    server: ServerProcess, folder: Path, client: WsClient
) -> None:
    """Rows served before that a user corrected in the file: the hub kept serving the bars
    it had cached (a streamed series for good, another one until it was idle for 30
    minutes). After the change every data_init is the new content."""
    await client.send(
        {"type": "data", "source": "csv", "name": "LIVE", "interval": "1m", "count": 300}
    )
    await client.wait_for("data_init", same_key("LIVE", "1m"))
    before = await data_init(server, "1h", 5)  # cached, not streamed
    assert before[1]["csv-LIVE-1h-close"] == 10 + 119
    lines = (folder / "LIVE.csv").read_text().splitlines(keepends=True)
    lines[1 + 119] = row(119, close=5.5)  # the close of the second hour
    (folder / "LIVE.csv").write_text("".join(lines))

    async def closes() -> tuple[object, object]:
        minutes = await data_init(server, "1m", 300)
        hours = await data_init(server, "1h", 5)
        return minutes[119]["csv-LIVE-1m-close"], hours[1]["csv-LIVE-1h-close"]

    # the provider looks at the file every 2 s at most: poll until the change was seen
    deadline = time.monotonic() + seconds(15)
    seen = await closes()
    while seen != (5.5, 5.5) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        seen = await closes()
    assert seen == (5.5, 5.5)
    assert "LIVE.csv: changed: read again" in server.log_path.read_text()


BIG = 300_000


async def test_rows_appended_to_a_big_streamed_file_are_read_alone(tmp_path: Path) -> None:
    """A recorder appending bars to a CSV file of 300,000 rows that Candlewire streams: every
    look at the grown file (every 2 s) parsed all of it again, on the replay thread and with
    the file's lock held (0.3-0.4 s a look for a million rows). Now only the lines appended
    are parsed (the provider logs how many): the new bars reach the open chart as updates
    and every data_init after them, as before."""
    folder = tmp_path / "files"
    folder.mkdir()
    path = folder / "BIG.csv"
    path.write_text("date,open,high,low,close,volume\n" + "".join(row(k) for k in range(BIG)))
    env = {"PROVIDERS": "csv", "CSV_FOLDER_PATH": str(folder), "CSV_REPLAY_SPEED": "0"}
    with populated_server(tmp_path, **env) as server:
        client = await WsClient.open(server.ws_url)
        try:
            await client.send(
                {"type": "data", "source": "csv", "name": "BIG", "interval": "1m", "count": 5}
            )
            init = await client.wait_for("data_init", same_key("BIG", "1m"), seconds(30))
            assert init["data"][-1]["date"] == date(BIG - 1)

            def streamed() -> set[object]:
                return {m["data"]["date"] for m in client.of_type("data_update")}

            for added in (range(BIG, BIG + 2), range(BIG + 2, BIG + 3)):
                with path.open("a") as handle:
                    handle.write("".join(row(k) for k in added))
                last = date(added[-1])
                await eventually(lambda last=last: last in streamed(), 15, f"{last} streamed")
            assert {date(k) for k in range(BIG, BIG + 3)} <= streamed()
            bars = await data_init(server, "1m", 4, "BIG")
            assert [bar["date"] for bar in bars] == [date(k) for k in range(BIG - 1, BIG + 3)]
            assert bars[-1]["csv-BIG-1m-close"] == 10 + BIG + 2
        finally:
            await client.close()
        log = server.log_path.read_text()
    # each look parsed the lines appended, not the file's 300,000 rows
    parsed = re.findall(r"BIG\.csv: (\d+) appended lines read from byte", log)
    assert parsed == ["2", "1"], log[-3000:]
    assert log.count("BIG.csv: changed: read again") == 2


async def test_a_last_row_with_a_bad_price_is_skipped_not_a_bar_of_the_first_rows_values(
    tmp_path: Path,
) -> None:
    """A file whose last line has a date but a price that is not a number, served with
    CSV_REPLAY_SPEED=0 from a fresh start: the clock stood frozen at that line's date (the
    scan reads dates only), one step past the last valid row, where the file's repeat
    begins: history ended with a bar at that date carrying row 0's values. The row is
    skipped (and logged) and history ends at the last valid row."""
    folder = tmp_path / "files"
    folder.mkdir()
    bad = f"{date(ROWS)},x,{11 + ROWS},{9 + ROWS},{10 + ROWS},1\n"
    (folder / "LIVE.csv").write_text(
        "date,open,high,low,close,volume\n" + "".join(row(k) for k in range(ROWS)) + bad
    )
    env = {"PROVIDERS": "csv", "CSV_FOLDER_PATH": str(folder), "CSV_REPLAY_SPEED": "0"}
    with populated_server(tmp_path, **env) as server:
        bars = await data_init(server, "1m", 3)
        hours = await data_init(server, "1h", 2)
        log = server.log_path.read_text()
    assert [bar["date"] for bar in bars] == [date(k) for k in range(ROWS - 3, ROWS)]
    assert bars[-1]["csv-LIVE-1m-open"] == 10 + ROWS - 1
    assert [bar["date"] for bar in hours] == [date(180), date(240)]
    assert hours[-1]["csv-LIVE-1h-close"] == 10 + ROWS - 1
    assert log.count(f"LIVE.csv:{ROWS + 2}: malformed row skipped (bad value in 'open')") == 1
