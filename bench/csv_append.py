"""CSV append benchmark: what a look at a big CSV file that grew by one row costs.

    python bench/csv_append.py [--rows 1000000] [--appends 20]

A file of ``--rows`` one-minute candles (ISO dates, six columns) in a temporary folder is
served by the CSV provider (in this process, frozen clock as with ``CSV_REPLAY_SPEED=0``),
read once; then ``--appends`` times a row is appended and the provider looks at the file
again, as its replay thread does every 2 s while the symbol streams. The time of each look
(the provider's lock on the file is held all of it) is the figure: a full parse of the file
before the provider read appended lines alone, the parse of one line since.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import settings as config
from backend.data_providers.csv import CSVProvider
from bench.common import emit, log, machine, summary, table

START = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def row(i: int) -> str:
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(START + 60 * i))
    o = 100 + i % 500 / 10
    return f"{t},{o:.2f},{o + 1:.2f},{o - 1:.2f},{o + 0.5:.2f},{1000 + i % 97}\n"


def write(path: Path, rows: int) -> None:
    with path.open("w") as handle:
        handle.write("date,open,high,low,close,volume\n")
        for start in range(0, rows, 100_000):
            handle.write("".join(row(i) for i in range(start, min(rows, start + 100_000))))


def provider(folder: Path) -> CSVProvider:
    csv = CSVProvider()
    settings = config.load_settings(CSV_FOLDER_PATH=folder, CSV_REPLAY_SPEED=0)
    csv._attach("csv", settings, lambda event: None)
    csv.init()
    return csv


def run(rows: int, appends: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "BIG.csv"
        write(path, rows)
        csv = provider(Path(tmp))
        started = time.perf_counter()
        csv._series("BIG", "1m")
        first_ms = (time.perf_counter() - started) * 1000
        looks: list[float] = []
        for k in range(appends):
            with path.open("a") as handle:
                handle.write(row(rows + k))
            csv._files[0].checked = -math.inf  # as CHECK_SECONDS later
            started = time.perf_counter()
            _, series = csv._series("BIG", "1m")
            looks.append((time.perf_counter() - started) * 1000)
            assert int(series.rows.times[-1]) == START + 60 * (rows + k), "row not served"
        size = path.stat().st_size
    return {"rows": rows, "mb": round(size / 1e6, 1), "first_read_ms": round(first_ms, 1)} | {
        f"look_{key}": value for key, value in summary(looks).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log(f"writing {args.rows} rows ...")
    figures = run(args.rows, args.appends)
    columns = [
        ("rows", "rows", ","),
        ("MB", "mb", ".1f"),
        ("first read ms", "first_read_ms", ".1f"),
        ("look p50 ms", "look_p50_ms", ".1f"),
        ("look max ms", "look_max_ms", ".1f"),
    ]
    print(table(columns, [figures]))
    emit("csv_append", {**figures, "machine": machine()})


if __name__ == "__main__":
    main()
