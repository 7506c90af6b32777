"""Populate benchmark: ``populate.py`` reading N option contracts from the fake Polygon.

    python bench/polygon_populate.py [--count 1000000] [--markets options]

Starts the fake Polygon (``tests/fakes/polygon.py``) in this process with ``--count``
generated option contracts (listed, as on Polygon, by ``/v3/reference/options/contracts``,
1,000 a page), runs the real ``populate.py`` against it with ``PROVIDERS=polygon`` in a
child process, and samples the resident memory of that process and its children (the SQLite
writer) every 0.1 s. Prints the rows stored, the REST pages served per endpoint, the wall
time, the rate and the peak RSS (largest single process and the process tree), as a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from tests.fakes.polygon import FakePolygon

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


@dataclass(frozen=True)
class Figures:
    """What one populate run measured."""

    tickers: int
    rows: int
    requests: dict[str, int]  # REST requests the fake answered, per path
    seconds: float
    rows_per_second: float
    peak_rss_mb: float  # the largest single process (populate.py or its SQLite writer)
    peak_tree_rss_mb: float  # populate.py and its children together
    db_mb: float
    exit_code: int
    output: str


def measure(count: int, workdir: Path, markets: str = "options") -> Figures:
    """Populate ``count`` fake option contracts into a fresh database under ``workdir``."""
    db = workdir / "polygon-bench.sqlite3"
    with FakePolygon(option_count=count, frozen=True) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CSV_", "POLYGON_"))}
        env.update(
            PROVIDERS="polygon",
            POLYGON_API_KEY="k",
            POLYGON_API_URL=fake.base_url,
            POLYGON_WS_URL=f"ws://{fake.ws_feed}",
            POLYGON_MARKETS=markets,
            DB=str(db),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "populate.py"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            peak, peak_tree = _sample_rss(process)
            output = process.stdout.read() if process.stdout else ""
        seconds = time.monotonic() - started
        requests = Counter(r.path for r in fake.rest_requests)
    rows = _rows_stored(output)
    return Figures(
        tickers=count,
        rows=rows,
        requests=dict(sorted(requests.items())),
        seconds=round(seconds, 2),
        rows_per_second=round(rows / seconds) if seconds else 0,
        peak_rss_mb=round(peak / MB, 1),
        peak_tree_rss_mb=round(peak_tree / MB, 1),
        db_mb=round(sum(p.stat().st_size for p in workdir.glob("polygon-bench*")) / MB, 1),
        exit_code=process.returncode,
        output=output[-2000:],
    )


def _sample_rss(process: subprocess.Popen[str]) -> tuple[int, int]:
    """Poll until ``process`` exits: (largest single RSS, largest RSS of the whole tree)."""
    root = psutil.Process(process.pid)
    peak = peak_tree = 0
    while process.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
            sizes = [m.memory_info().rss for m in members]
        except psutil.Error:
            sizes = []
        if sizes:
            peak, peak_tree = max(peak, *sizes), max(peak_tree, sum(sizes))
        time.sleep(0.1)
    return peak, peak_tree


def _rows_stored(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("polygon:") and " rows in " in line:
            return int(line.split()[1].replace(",", ""))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="option contracts")
    parser.add_argument("--markets", default="options", help="POLYGON_MARKETS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="candlewire-bench-") as tmp:
        figures = measure(args.count, Path(tmp), args.markets)
    print(f"contracts listed   {figures.tickers:,}")
    print(f"rows stored        {figures.rows:,}")
    for path, pages in figures.requests.items():
        print(f"REST requests      {pages:,} {path}")
    print(f"wall time          {figures.seconds:.1f} s ({figures.rows_per_second:,} rows/s)")
    print(f"peak RSS           {figures.peak_rss_mb:.0f} MB (largest process)")
    print(f"peak RSS, tree     {figures.peak_tree_rss_mb:.0f} MB (populate.py + SQLite writer)")
    print(f"database           {figures.db_mb:.0f} MB")
    if figures.exit_code:
        print(f"populate.py exited with {figures.exit_code}:\n{figures.output}")
    print(json.dumps({k: v for k, v in asdict(figures).items() if k != "output"}))
    return figures.exit_code


if __name__ == "__main__":
    sys.exit(main())
