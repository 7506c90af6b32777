"""End to end: the adaptive averages (KAMA, MAMA, the Hilbert transform, an average with
``mamode`` KAMA) over a stablecoin's bars, whose closes range a tick at a time: a page of
``indicator_init`` equals TA-Lib's batch values over every bar of the series, as an EMA's
does (the real server.py, the CSV provider over a file written here, a real WebSocket
client; the bars are those the same server sent in ``data_init``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import talib

from backend.model import intervals
from tests.harness import ServerProcess, WsClient, populated_server, same_key
from tests.test_e2e_indicators import closes, same_id, values
from tests.test_indicators_engine import ranging_at_the_tick

BARS = 3000
KEY = "csv-USDCUSDT-1h"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("adaptive")
    folder = tmp / "csv"
    folder.mkdir()
    lines = ["date,open,high,low,close,volume"]
    for t, *prices in ranging_at_the_tick(BARS):
        lines.append(",".join([intervals.format_date(t), *(repr(float(p)) for p in prices)]))
    (folder / "USDCUSDT.csv").write_text("\n".join(lines) + "\n")
    # no replay: the whole file is history
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as running:
        yield running


def request(indicator_id: str, chart_id: str, inputs: dict[str, object]) -> dict[str, Any]:
    column = {"source": "csv", "name": "USDCUSDT", "interval": "1h", "value": f"{KEY}-close",
              "dataKey": "close"}  # fmt: skip
    return {"type": "indicator", "id": chart_id, "indicator": {"id": indicator_id},
            "inputs": inputs, "dataMap": {"close": column}, "count": 300,
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
    await client.send(
        {"type": "data", "source": "csv", "name": "USDCUSDT", "interval": "1h", "count": 5000,
         "stream": False},
        request(indicator_id, chart_id, inputs),
    )  # fmt: skip
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
