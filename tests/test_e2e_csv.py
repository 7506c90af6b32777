"""End to end with the CSV provider and the bundled sample data, as `make run` serves it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from backend.model import intervals
from tests.harness import (
    ROOT,
    ServerProcess,
    WsClient,
    base_env,
    eventually,
    populate,
    populated_server,
    same_key,
)

FIRST_BTCUSD_ROW = (ROOT / "data" / "BTCUSD.csv").read_text().splitlines()[1].split(",")[0]
DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("csv")
    data_dir = str(ROOT / "data")
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=data_dir, CSV_REPLAY_SPEED="60"
    ) as running:
        yield running


key = same_key


async def test_the_sample_symbols_are_searchable_with_the_exact_one_first(
    client: WsClient,
) -> None:
    await client.send({"type": "search_data", "search": "BTCUSD"})
    found = await client.wait_for("search_data_done")
    assert found["results"][0]["name"] == "BTCUSD"
    await client.send({"type": "search_data", "search": ""})
    listing = await client.wait_for("search_data_done", after=len(client.messages))
    names = {row["name"] for row in listing["results"]}
    assert {"BTCUSD", "ACME"} <= names
    assert any(name.startswith("macro__") for name in names)


@pytest.mark.parametrize("interval", ["1m", "15m", "1h", "1d"])
async def test_data_init_serves_exact_counts_for_the_file_and_coarser_intervals(
    client: WsClient, interval: str
) -> None:
    count = 10 if interval == "1d" else 300  # half of the 35-day file is history
    await client.send(
        {
            "type": "data",
            "source": "csv",
            "name": "BTCUSD",
            "interval": interval,
            "count": count,
            "stream": False,
        }
    )
    init = await client.wait_for("data_init", key("BTCUSD", interval))
    bars = init["data"]
    assert len(bars) == count
    dates = [bar["date"] for bar in bars]
    assert dates == sorted(dates) and all(DATE.match(d) for d in dates)
    times = [intervals.parse_date(d) for d in dates]
    assert all(intervals.floor(t, interval) == t for t in times)
    for bar in bars:
        o, h, lo, c = (bar[f"csv-BTCUSD-{interval}-{f}"] for f in ("open", "high", "low", "close"))
        assert lo <= min(o, c) <= max(o, c) <= h


async def test_the_replay_streams_forming_bars_within_two_seconds(client: WsClient) -> None:
    await client.send(
        {"type": "data", "source": "csv", "name": "ACME", "interval": "1m", "count": 10}
    )
    init = await client.wait_for("data_init", key("ACME", "1m"))
    mark = len(client.messages)
    update = await client.wait_for("data_update", key("ACME", "1m"), timeout=2, after=mark)
    assert update["data"]["date"] >= init["data"][-1]["date"]


async def test_no_update_repeats_the_one_before_it(client: WsClient) -> None:
    """The replay sent every bar's close twice (the forming bar shown whole, then the same
    values as final): one data_update in five on a 1-minute chart changed nothing."""
    await client.send(
        {"type": "data", "source": "csv", "name": "ACME", "interval": "1m", "count": 2}
    )
    await client.wait_for("data_init", key("ACME", "1m"))
    mark = len(client.messages)

    def dates() -> set[str]:
        return {m["data"]["date"] for m in client.of_type("data_update", mark)}

    await eventually(lambda: len(dates()) >= 5, 15, "five bars streamed")
    updates = [m["data"] for m in client.of_type("data_update", mark) if same_key("ACME", "1m")(m)]
    repeats = [a for a, b in pairwise(updates) if a == b]
    assert repeats == [], f"{len(repeats)} of {len(updates)} updates repeat the one before"


async def test_line_series_use_the_bare_key(client: WsClient) -> None:
    await client.send({"type": "search_data", "search": "macro"})
    found = await client.wait_for("search_data_done")
    line = next(r for r in found["results"] if r["details"]["type"] == "line")
    name = line["name"]
    await client.send(
        {
            "type": "data",
            "source": "csv",
            "name": name,
            "interval": "1d",
            "count": 30,
            "stream": False,
        }
    )
    init = await client.wait_for("data_init", key(name, "1d"))
    assert len(init["data"]) == 30
    assert set(init["data"][0]) == {"date", f"csv-{name}-1d"}


async def test_history_pages_back_to_the_start_of_the_file_and_then_is_empty(
    client: WsClient,
) -> None:
    first_row = FIRST_BTCUSD_ROW
    end = intervals.format_date(intervals.parse_date(first_row) + 3600 * 5)
    await client.send(
        {
            "type": "data_history",
            "source": "csv",
            "name": "BTCUSD",
            "interval": "1h",
            "end": end,
            "count": 100,
        }
    )
    page = await client.wait_for("data_history", key("BTCUSD", "1h"))
    assert page["data"][0]["date"] == first_row
    assert len(page["data"]) == 6
    mark = len(client.messages)
    await client.send(
        {
            "type": "data_history",
            "source": "csv",
            "name": "BTCUSD",
            "interval": "1h",
            "end": "2020-01-01 00:00:00",
            "count": 100,
        }
    )
    empty = await client.wait_for("data_history", key("BTCUSD", "1h"), after=mark)
    assert empty["data"] == []


async def test_rest_history_as_json_and_csv_agree(server: ServerProcess) -> None:
    query = "/api/history?source=csv&name=BTCUSD&interval=1h&count=5&end=2026-10-20%2000:00:00"
    body = server.get(query)
    text = server.get(query + "&format=csv")
    lines = text.strip().splitlines()
    assert lines[0] == "date,open,high,low,close,volume"
    assert len(lines) == 6
    assert [line.split(",")[0] for line in lines[1:]] == [b["date"] for b in body["data"]]
    assert float(lines[-1].split(",")[4]) == body["data"][-1]["csv-BTCUSD-1h-close"]


async def test_forty_charts_of_short_files_from_one_client_are_never_rate_limited(
    tmp_path: Path,
) -> None:
    """Local files cost no upstream: the CSV provider's history calls are outside the
    fair-use budgets. Each chart of a 200-row file costs several provider calls (the planner
    walks back to find the start of the data), so 20 charts at once used up the provider's
    budget (100 calls in 5 s) and the rest got ``rate_limited``; a scan was throttled so."""
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(40):
        rows = ["date,open,high,low,close,volume"]
        day = datetime(2026, 1, 1)
        for k in range(200):
            rows.append(
                f"{day + timedelta(days=k):%Y-%m-%d},{100 + k},{101 + k},{99 + k},{100 + k},1"
            )
        (folder / f"S{i:02d}.csv").write_text("\n".join(rows) + "\n")
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as server:
        ws = await WsClient.open(server.ws_url)
        try:
            names = [f"S{i:02d}" for i in range(40)]
            await ws.send(
                *(
                    {"type": "data", "source": "csv", "name": n, "interval": "1d", "count": 300}
                    for n in names
                )
            )
            for name in names:
                init = await ws.wait_for("data_init", key(name, "1d"), 60)
                assert len(init["data"]) == 200
            assert ws.of_type("error") == []
            metrics = server.get("/metrics")
            assert "candlewire_upstream_refusals_total 0.0" in metrics
        finally:
            await ws.close()


async def test_a_scan_skips_symbols_without_its_interval_without_asking_the_provider(
    server: ServerProcess, client: WsClient
) -> None:
    """The macro line series serve 1h and up: a 15m scan asked the CSV provider for each
    (a warning per symbol per scan); they are now skipped as a ``data`` request would be
    refused."""
    before = server.log_path.read_text().count("not '15m'")
    rule = {
        "type1": "data",
        "source1": "csv",
        "name1": "BTCUSD",
        "interval1": "15m",
        "key1": "close",
        "comparator": ">",
        "type2": "value",
        "value2": "0",
    }
    template = {"data": [{"type": "data", "source": "csv", "name": "BTCUSD", "interval": "15m"}]}
    await client.send(
        {
            "type": "scan",
            "search": "macro",
            "rules": [rule],
            "operators": [],
            "indicators": {},
            "dataProviderConfig": template,
        }
    )
    done = await client.wait_for("scan_done", timeout=30)
    assert done["total"] == 3 and done["scanned"] == 0
    assert server.log_path.read_text().count("not '15m'") == before


async def test_a_file_dropped_in_while_running_is_served_at_its_first_request(
    tmp_path: Path,
) -> None:
    """README, "The CSV provider": a file dropped in while the server runs is served once
    populate.py stored its symbols. Its replay clock reaches the hub only with the provider's
    first answer for it, so the planner walked back from the wall clock, months past the
    file's last row (``CSV_REPLAY_SPEED=0``), found only empty windows, marked the series as
    having nothing older, and every chart of it stayed empty until the series left the cache.
    """
    folder = tmp_path / "files"
    folder.mkdir()

    def write(name: str) -> None:
        rows = ["date,open,high,low,close,volume"]
        start = datetime(2026, 1, 5)
        rows += [
            f"{start + timedelta(minutes=k):%Y-%m-%d %H:%M:%S},{10 + k},{11 + k},{9 + k},{10 + k},1"
            for k in range(300)
        ]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")

    write("FIRST")
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as server:
        write("LATE")
        result = populate(base_env(tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder)))
        assert result.returncode == 0, result.stderr
        ws = await WsClient.open(server.ws_url)
        try:
            for name in ("FIRST", "LATE", "LATE"):
                await ws.send(
                    {"type": "data", "source": "csv", "name": name, "interval": "1m", "count": 5}
                )
                init = await ws.wait_for("data_init", same_key(name, "1m"), 10)
                assert [row["date"] for row in init["data"]][-1] == "2026-01-05 04:59:00", name
                assert len(init["data"]) == 5
                ws.messages.clear()
        finally:
            await ws.close()


async def test_a_file_dropped_in_while_replaying_fetches_only_the_bars_asked_for(
    tmp_path: Path,
) -> None:
    """At ``CSV_REPLAY_SPEED=60`` a file's replay clock runs months ahead of the wall clock.
    The first ``data_init`` of a file dropped in while the server ran was planned from the
    wall time (its clock comes with the provider's first answer for it), so its tail was
    fetched from the wall time to the clock: 400,000 bars for a chart of 3."""
    folder = tmp_path / "files"
    folder.mkdir()
    source = (ROOT / "data" / "BTCUSD.csv").read_text()
    (folder / "FIRST.csv").write_text(source)
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="60"
    ) as server:
        (folder / "LATE.csv").write_text(source)
        result = populate(base_env(tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder)))
        assert result.returncode == 0, result.stderr
        ws = await WsClient.open(server.ws_url)
        try:
            await ws.send(
                {"type": "data", "source": "csv", "name": "LATE", "interval": "1m", "count": 3}
            )
            init = await ws.wait_for("data_init", same_key("LATE", "1m"), 10)
            assert len(init["data"]) == 3
            metrics = server.get("/metrics")
            cached = re.search(r"^candlewire_cached_bars (\S+)$", metrics, re.M)
            assert cached is not None
            assert float(cached.group(1)) < 1000, cached.group(0)
        finally:
            await ws.close()


async def test_exports_with_the_date_and_the_time_of_day_apart_are_served(tmp_path: Path) -> None:
    """README, "The CSV provider": a MetaTrader export (``2024.01.02,13:45``) and a Stooq
    one (``<DATE>,<TIME>`` as ``20240102,093000``) were skipped at the scan and their
    symbols never stored; they are served with their rows' dates and times."""
    folder = tmp_path / "files"
    folder.mkdir()
    start = datetime(2024, 1, 2, 9, 0)
    times = [start + timedelta(minutes=5 * k) for k in range(200)]
    (folder / "MT.csv").write_text(
        "Date,Time,Open,High,Low,Close,Volume\n"
        + "".join(f"{t:%Y.%m.%d},{t:%H:%M},{k},{k + 1},{k},{k},1\n" for k, t in enumerate(times))
    )
    (folder / "STQ.csv").write_text(
        "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n"
        + "".join(
            f"STQ.US,5,{t:%Y%m%d},{t:%H%M%S},{k},{k + 1},{k},{k},1,0\n" for k, t in enumerate(times)
        )
    )
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as server:
        ws = await WsClient.open(server.ws_url)
        try:
            for name in ("MT", "STQ"):
                await ws.send(
                    {"type": "data", "source": "csv", "name": name, "interval": "5m", "count": 3}
                )
                init = await ws.wait_for("data_init", same_key(name, "5m"), 10)
                assert [row["date"] for row in init["data"]] == [
                    f"{t:%Y-%m-%d %H:%M:%S}" for t in times[-3:]
                ], name
                assert init["data"][-1][f"csv-{name}-5m-close"] == 199
        finally:
            await ws.close()


async def test_downloads_of_common_tools_are_served(tmp_path: Path) -> None:
    """A Binance kline file (no header, epoch milliseconds), an Investing.com export
    ("42,000.0", 1.5M, MM/DD/YYYY, newest first), a yfinance to_csv file (three header
    lines) and a Polygon flat file of one ticker (window_start in nanoseconds) were all
    skipped at the scan; populate now stores them and the server serves their rows."""
    folder = tmp_path / "files"
    folder.mkdir()
    days = [datetime(2026, 1, 5) + timedelta(days=k) for k in range(20)]
    epoch = [int((d - datetime(1970, 1, 1)).total_seconds()) for d in days]
    (folder / "BTCUSDT-1d.csv").write_text(
        "".join(
            f"{t * 1000},{k},{k + 2},{k - 1},{k + 1},5,{(t + 86_400) * 1000 - 1},50,7,2,20,0\n"
            for k, t in enumerate(epoch)
        )
    )
    (folder / "INV.csv").write_text(
        '"Date","Price","Open","High","Low","Vol.","Change %"\n'
        + "".join(
            f'"{d:%m/%d/%Y}","{1000 + k:,.1f}","{999 + k:,.1f}","{1002 + k:,.1f}",'
            f'"{998 + k:,.1f}","1.5M","0.10%"\n'
            for k, d in reversed(list(enumerate(days)))
        )
    )
    (folder / "YF.csv").write_text(
        "Price,Close,High,Low,Open,Volume\nTicker,YF,YF,YF,YF,YF\nDate,,,,,\n"
        + "".join(f"{d:%Y-%m-%d},{k + 1},{k + 2},{k - 1},{k},9\n" for k, d in enumerate(days))
    )
    (folder / "POLY.csv").write_text(
        "ticker,volume,open,close,high,low,window_start,transactions\n"
        + "".join(
            f"POLY,9,{k},{k + 1},{k + 2},{k - 1},{t * 10**9},3\n" for k, t in enumerate(epoch)
        )
    )
    last = f"{days[-1]:%Y-%m-%d %H:%M:%S}"
    expected = {"BTCUSDT-1d": 20.0, "INV": 1019.0, "YF": 20.0, "POLY": 20.0}
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as server:
        await last_daily_closes(server, last, expected)


async def test_spreadsheet_and_website_exports_are_served(tmp_path: Path) -> None:
    """Excel's ``sep=;`` line (with a byte order mark, CR LF, decimal commas and dates
    DD.MM.YYYY, which the thousands point made numbers), the address
    line above CryptoDataDownload's header, Nasdaq.com's ``$`` prices and ``Close/Last``,
    and a file named in decomposed Unicode (macOS) were skipped, served without candles or
    under a name nobody types; a .zip beside them was passed over without a word."""
    folder = tmp_path / "files"
    folder.mkdir()
    days = [datetime(2026, 1, 5) + timedelta(days=k) for k in range(20)]
    (folder / "XL.csv").write_bytes(
        (
            "\ufeffsep=;\r\nDate;Open;High;Low;Close;Volume\r\n"
            + "".join(
                f"{d:%d.%m.%Y};1.00{k % 10},5;1.010,5;990,5;1.00{k % 10},25;7\r\n"
                for k, d in enumerate(days)
            )
        ).encode()
    )
    (folder / "CDD.csv").write_text(
        "https://www.CryptoDataDownload.com\n"
        "unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount\n"
        + "".join(
            f"0,{d:%Y-%m-%d},BTC/USDT,{k},{k + 2},{k - 1},{k + 1},5,50,3\n"
            for k, d in reversed(list(enumerate(days)))
        )
    )
    (folder / "NDQ.csv").write_text(
        "Date,Close/Last,Volume,Open,High,Low\n"
        + "".join(
            f"{d:%m/%d/%Y},${k + 1}.5,100,${k}.5,${k + 2}.5,${k - 1}.5\n"
            for k, d in reversed(list(enumerate(days)))
        )
    )
    (folder / f"{unicodedata.normalize('NFD', 'Nestlé')}.csv").write_text(
        "date,open,high,low,close\n"
        + "".join(f"{d:%Y-%m-%d},1,3,0.5,{k}\n" for k, d in enumerate(days))
    )
    (folder / "BTCUSDT-1d-2026-01.zip").write_bytes(b"PK\x03\x04")
    env = base_env(tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0")
    result = populate(env)
    assert result.returncode == 0, result.stderr
    assert "BTCUSDT-1d-2026-01.zip: not read: only files ending in .csv are" in result.stderr
    last = f"{days[-1]:%Y-%m-%d %H:%M:%S}"
    expected = {"XL": 1009.25, "CDD": 20.0, "NDQ": 20.5, "Nestlé": 19.0}
    with ServerProcess(env, tmp_path / "server.log") as server:
        await last_daily_closes(server, last, expected)


async def test_paging_back_one_bar_into_a_long_pause_of_a_file_finds_the_rows_before_it(
    tmp_path: Path,
) -> None:
    """A minute file with two sessions 11 days apart. A ``data_history`` of 1 bar ending in
    the pause (a short Tradiny page, or the UDF ``nextTime`` probe) walked back windows sized
    by its count and gave up after 3.8 days of them: it got ``[]``, and the file's first
    session stayed hidden from every later request (``data_history``, UDF)."""
    folder = tmp_path / "files"
    folder.mkdir()
    rows = ["date,open,high,low,close,volume"]
    first = datetime(2026, 1, 5)
    for start in (first, first + timedelta(days=11)):
        for k in range(120):
            rows.append(f"{start + timedelta(minutes=k):%Y-%m-%d %H:%M:%S},100,101,99,100.5,1")
    (folder / "PAUSE.csv").write_text("\n".join(rows) + "\n")
    last_before = first + timedelta(minutes=119)
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as server:
        ws = await WsClient.open(server.ws_url)
        try:
            ask = {"type": "data_history", "source": "csv", "name": "PAUSE", "interval": "1m"}
            await ws.send(
                {**ask, "end": f"{first + timedelta(days=10):%Y-%m-%d %H:%M:%S}", "count": 1}
            )
            page = await ws.wait_for("data_history")
            assert [bar["date"] for bar in page["data"]] == [f"{last_before:%Y-%m-%d %H:%M:%S}"]
            seen = len(ws.messages)
            await ws.send({**ask, "end": f"{last_before:%Y-%m-%d %H:%M:%S}", "count": 300})
            page = await ws.wait_for("data_history", after=seen)
            assert len(page["data"]) == 120
            t0 = int(first.replace(tzinfo=UTC).timestamp())
            udf = server.get(f"/udf/history?symbol=csv:PAUSE&resolution=1&from={t0}&to={t0 + 600}")
            assert udf["s"] == "ok" and udf["t"] == list(range(t0, t0 + 600, 60))
        finally:
            await ws.close()


async def last_daily_closes(server: ServerProcess, last: str, expected: dict[str, float]) -> None:
    """Each daily series of ``expected`` ends at ``last`` with the close given."""
    ws = await WsClient.open(server.ws_url)
    try:
        for name, close in expected.items():
            await ws.send(
                {"type": "data", "source": "csv", "name": name, "interval": "1d", "count": 2}
            )
            init = await ws.wait_for("data_init", same_key(name, "1d"), 10)
            assert [row["date"] for row in init["data"]][-1] == last, name
            assert init["data"][-1][f"csv-{name}-1d-close"] == close, name
    finally:
        await ws.close()
