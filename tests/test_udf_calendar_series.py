"""UDF symbol info of series that have no daily bars: a CSV file of weekly or monthly rows
(economic data) serves only ``1w`` or ``1M``. The Charting Library builds weekly and monthly
bars from daily ones itself unless ``has_weekly_and_monthly`` is true, and then asks for
``1D``, which such a symbol does not offer: the chart stayed blank."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, populated_server
from tests.test_udf import udf_get


def months(count: int) -> list[int]:
    """The first of each of the ``count`` months before this one, at 00:00 UTC."""
    now = time.gmtime()
    year, month = now.tm_year, now.tm_mon
    firsts = []
    for _ in range(count):
        month -= 1
        if month == 0:
            year, month = year - 1, 12
        firsts.append(calendar.timegm((year, month, 1, 0, 0, 0)))
    return sorted(firsts)


def write_csv(path: Path, times: list[int]) -> None:
    rows = ["timestamp,open,high,low,close,volume"]
    rows += [
        f"{t},{100 + i}.5,{101 + i}.0,{99 + i}.0,{100 + i}.75,{10 + i}" for i, t in enumerate(times)
    ]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("udf-calendar")
    folder = tmp / "data"
    folder.mkdir()
    write_csv(folder / "MONTHLY.csv", months(36))
    monday = int(time.time()) // 86_400 * 86_400
    monday -= ((monday // 86_400 + 3) % 7) * 86_400  # 1970-01-01 was a Thursday
    write_csv(folder / "WEEKLY.csv", [monday - i * 7 * 86_400 for i in range(52, 0, -1)])
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0"
    ) as running:
        yield running


@pytest.mark.parametrize(("symbol", "resolution"), [("MONTHLY", "1M"), ("WEEKLY", "1W")])
def test_a_series_without_daily_bars_asks_the_library_for_its_own(
    server: ServerProcess, symbol: str, resolution: str
) -> None:
    info = udf_get(server, "symbols", symbol=f"csv:{symbol}")
    assert "s" not in info, info
    assert info["supported_resolutions"] == [resolution]
    assert info["has_daily"] is False and info["has_intraday"] is False
    # false would make the library build them from daily bars, which this symbol lacks
    assert info["has_weekly_and_monthly"] is True
    if resolution == "1M":
        assert info["monthly_multipliers"] == ["1"] and info["weekly_multipliers"] == []
    else:
        assert info["weekly_multipliers"] == ["1"] and info["monthly_multipliers"] == []
    assert info["daily_multipliers"] == []
    bars = udf_get(server, "history", symbol=f"csv:{symbol}", resolution=resolution,
                   to=int(time.time()), countback=5)  # fmt: skip
    assert bars["s"] == "ok" and len(bars["t"]) == 5
    assert udf_get(server, "history", symbol=f"csv:{symbol}", resolution="1D",
                   to=int(time.time()), countback=5)["s"] == "error"  # fmt: skip
