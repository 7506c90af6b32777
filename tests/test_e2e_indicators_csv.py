"""End to end: indicators over bars that trip TA-Lib up, checked against TA-Lib's own batch
values over the bars the same server sent in ``data_init`` (the real server.py, the CSV
provider over files written here, a real WebSocket client).

* The adaptive averages (KAMA, MAMA, the Hilbert transform, an average with ``mamode`` KAMA)
  over a stablecoin's bars, whose closes range a tick at a time: a page of
  ``indicator_init`` equals the batch values over every bar of the series, as an EMA's does.
* A bar whose volume cell is empty: the indicators that read volume leave that bar out (its
  row null), not every bar after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import talib

from backend.model import intervals
from backend.model.bars import Bar
from tests.harness import ServerProcess, WsClient, eventually, populated_server, same_key
from tests.test_e2e_indicators import closes, same_id, values
from tests.test_indicators_engine import make_bars, ranging_at_the_tick, without_volume_at

BARS = 3000
KEY = "csv-USDCUSDT-1h"
GAP = BARS - 100  # the row of ACME.csv whose volume cell is empty
FOLDER: list[Path] = [Path()]  # the server's CSV folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("indicators_csv")
    folder = FOLDER[0] = tmp / "csv"
    folder.mkdir()
    write(folder / "USDCUSDT.csv", ranging_at_the_tick(BARS))
    write(folder / "ACME.csv", without_volume_at(make_bars(BARS, seed=7), GAP))
    write(folder / "FEED.csv", make_bars(BARS + 2, seed=8)[:BARS])  # the test appends 2
    # no replay: the whole file is history
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as running:
        yield running


def write(path: Path, bars: list[Bar], mode: str = "w") -> None:
    """``bars`` as a CSV file (appended to it with ``mode`` "a"); a missing value is an empty
    cell."""
    lines = [] if mode == "a" else ["date,open,high,low,close,volume"]
    for t, *fields in bars:
        cells = ["" if value is None else repr(float(value)) for value in fields]
        lines.append(",".join([intervals.format_date(t), *cells]))
    with path.open(mode) as out:
        out.write("\n".join(lines) + "\n")


def request(
    indicator_id: str,
    chart_id: str,
    inputs: dict[str, object],
    name: str = "USDCUSDT",
    columns: tuple[str, ...] = ("close",),
) -> dict[str, Any]:
    data_map = {
        field: {"source": "csv", "name": name, "interval": "1h",
                "value": f"csv-{name}-1h-{field}", "dataKey": field}
        for field in columns
    }  # fmt: skip
    return {"type": "indicator", "id": chart_id, "indicator": {"id": indicator_id},
            "inputs": inputs, "dataMap": data_map, "count": 300, "stream": False}  # fmt: skip


def all_bars(name: str) -> dict[str, Any]:
    return {"type": "data", "source": "csv", "name": name, "interval": "1h", "count": 5000,
            "stream": False}  # fmt: skip


@pytest.mark.parametrize(
    ("indicator_id", "inputs", "output", "reference"),
    [
        ("talib.overlap.KAMA", {}, "KAMA", lambda c: talib.KAMA(c, 30)),
        ("talib.overlap.MAMA", {}, "mama", lambda c: talib.MAMA(c)[0]),
        ("talib.cycle.HT_SINE", {}, "sine", lambda c: talib.HT_SINE(c)[0]),
        ("talib.momentum.APO", {"mamode": "6"}, "APO", lambda c: talib.APO(c, 12, 26, 6)),
    ],
)
async def test_a_page_of_an_adaptive_average_equals_talib_over_every_bar(
    client: WsClient, indicator_id: str, inputs: dict[str, object], output: str, reference: Any
) -> None:
    chart_id = indicator_id.replace(".", "-") + "_USDC"
    await client.send(all_bars("USDCUSDT"), request(indicator_id, chart_id, inputs))
    init = await client.wait_for("data_init", same_key("USDCUSDT", "1h"))
    reply = await client.wait_for("indicator_init", same_id(chart_id), timeout=20)
    price = closes(init, KEY)
    dates = sorted(price)
    assert len(dates) == BARS
    batch = dict(zip(dates, reference(np.array([price[d] for d in dates])), strict=True))
    got = values(reply, output)
    assert len(got) == 300
    for date, value in got.items():
        assert value == pytest.approx(float(batch[date]), rel=1e-9, abs=1e-12), date


@pytest.mark.parametrize(
    ("indicator_id", "columns", "reference"),
    [
        ("talib.momentum.MFI", ("high", "low", "close", "volume"), talib.MFI),
        ("talib.overlap.VWMA", ("close", "volume"), talib.VWMA),
        ("talib.volume.OBV", ("close", "volume"), talib.OBV),
    ],
)  # fmt: skip
async def test_a_bar_without_volume_leaves_only_its_own_row_empty(
    client: WsClient, indicator_id: str, columns: tuple[str, ...], reference: Any
) -> None:
    chart_id = indicator_id.replace(".", "-") + "_ACME"
    await client.send(all_bars("ACME"), request(indicator_id, chart_id, {}, "ACME", columns))
    init = await client.wait_for("data_init", same_key("ACME", "1h"))
    reply = await client.wait_for("indicator_init", same_id(chart_id), timeout=20)
    rows = {row["date"]: row for row in init["data"]}
    dates = sorted(rows)
    assert len(dates) == BARS
    gap = dates[GAP]
    assert rows[gap]["csv-ACME-1h-volume"] is None
    kept = [date for date in dates if date != gap]
    arrays = [np.array([rows[date][f"csv-ACME-1h-{field}"] for date in kept]) for field in columns]
    batch = dict(zip(kept, reference(*arrays), strict=True))
    got = values(reply, indicator_id.rsplit(".", 1)[1])
    assert len(got) == 300 and gap in got
    assert got.pop(gap) is None  # its own row only
    for date, value in got.items():
        assert value == pytest.approx(float(batch[date]), rel=1e-9), date


async def test_a_bar_streamed_without_volume_leaves_only_its_own_update_empty(
    client: WsClient,
) -> None:
    """Live: a row without volume and one after it appended to a streamed file. The running
    computation opened again with that bar in its tail, and every later value was null."""
    chart_id = "mfi_FEED"
    columns = ("high", "low", "close", "volume")
    await client.send(
        all_bars("FEED") | {"stream": True},
        request("talib.momentum.MFI", chart_id, {}, "FEED", columns) | {"stream": True},
    )
    await client.wait_for("indicator_init", same_id(chart_id), timeout=20)
    bars = make_bars(BARS + 2, seed=8)
    appended = without_volume_at(bars, BARS)[BARS:]
    write(FOLDER[0] / "FEED.csv", appended, "a")
    last = intervals.format_date(appended[-1][0])
    key = f"{chart_id}-MFI"

    def updates(date: str) -> list[float | None]:
        return [m["data"][key] for m in client.of_type("indicator_update")
                if m["id"] == chart_id and m["data"]["date"] == date]  # fmt: skip

    await eventually(lambda: updates(last), 15, "the update of the bar after the gap")
    assert set(updates(intervals.format_date(appended[0][0]))) <= {None}
    kept = bars[:BARS] + bars[BARS + 1 :]
    arrays = [np.array([bar[1 + ("open", *columns).index(c)] for bar in kept]) for c in columns]
    assert updates(last)[-1] == pytest.approx(float(talib.MFI(*arrays)[-1]), rel=1e-9)
