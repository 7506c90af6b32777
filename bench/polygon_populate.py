"""Populate benchmark: ``populate.py`` reading N option contracts from the fake Polygon.

    python bench/polygon_populate.py [--count 1000000] [--markets options]

Starts the fake Polygon (``tests/fakes/polygon.py``) in this process with ``--count``
generated option contracts (listed, as on Polygon, by ``/v3/reference/options/contracts``,
1,000 a page), runs the real ``populate.py`` against it with ``PROVIDERS=polygon`` in a
child process, and samples the resident memory and CPU time of that process and its children
(the SQLite writer) every 0.1 s. Prints the rows stored, the REST pages served per endpoint,
the wall time, the rate, the CPU time per row of each process and the peak RSS (largest
single process and the process tree), as a table and one JSON line.

Beside it, measured in the same run (the machine is shared: compare ratios, not rates):

- the dataset ceiling: the same fake Polygon and the Polygon provider's ``get_dataset()`` in
  a child process that only counts the rows (no symbol database): populate cannot be faster;
- the SQLite ceiling: prepared rows (up to ``SQLITE_ROWS``) inserted in one transaction by
  the writer's own statements in this process (no row checks, no second process);
- the writer from memory: :func:`replace_provider_rows` fed ``--count`` generated option
  rows (no REST), beside the rate of that generator alone, then the same rows again (a
  replace: the old rows are deleted in the same transaction).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from backend.data_providers.polygon.rest import OUTPUTS
from backend.model import intervals
from backend.symbols import writer
from backend.symbols.batches import Batcher
from backend.symbols.session import Session
from tests.fakes.polygon import FakePolygon

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
SQLITE_ROWS = 200_000  # the SQLite ceiling's rows (prepared in memory first)
_UNDERLYINGS = ("SPY", "QQQ", "AAPL", "TSLA", "NVDA", "MSFT", "AMZN", "META", "IWM", "BRK.B")


@dataclass(frozen=True)
class Figures:
    """What one populate run measured."""

    tickers: int
    rows: int
    requests: dict[str, int]  # REST requests the fake answered, per path
    seconds: float
    rows_per_second: float
    populate_cpu_us: float  # CPU time of populate.py per row stored
    writer_cpu_us: float  # CPU time of its SQLite writer process per row stored
    peak_rss_mb: float  # the largest single process (populate.py or its SQLite writer)
    peak_tree_rss_mb: float  # populate.py and its children together
    db_mb: float
    exit_code: int
    output: str


def _env(fake: FakePolygon, markets: str, db: Path) -> dict[str, str]:
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
    return env


def measure(count: int, workdir: Path, markets: str = "options") -> Figures:
    """Populate ``count`` fake option contracts into a fresh database under ``workdir``."""
    db = workdir / "polygon-bench.sqlite3"
    with FakePolygon(option_count=count, frozen=True) as fake:
        env = _env(fake, markets, db)
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "populate.py"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            peak, peak_tree, cpu_main, cpu_children = _sample(process)
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
        populate_cpu_us=round(cpu_main / max(rows, 1) * 1e6, 2),
        writer_cpu_us=round(cpu_children / max(rows, 1) * 1e6, 2),
        peak_rss_mb=round(peak / MB, 1),
        peak_tree_rss_mb=round(peak_tree / MB, 1),
        db_mb=round(sum(p.stat().st_size for p in workdir.glob("polygon-bench*")) / MB, 1),
        exit_code=process.returncode,
        output=output[-2000:],
    )


def _sample(process: subprocess.Popen[str]) -> tuple[int, int, float, float]:
    """Poll until ``process`` exits: the largest single RSS, the largest RSS of the whole
    tree, and the CPU seconds of the process and of its children (their last readings)."""
    root = psutil.Process(process.pid)
    peak = peak_tree = 0
    cpu: dict[int, float] = {}
    while process.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
            sizes = [m.memory_info().rss for m in members]
            for member in members:
                times = member.cpu_times()
                cpu[member.pid] = times.user + times.system
        except psutil.Error:
            sizes = []
        if sizes:
            peak, peak_tree = max(peak, *sizes), max(peak_tree, sum(sizes))
        time.sleep(0.1)
    main = cpu.pop(process.pid, 0.0)
    return peak, peak_tree, main, sum(cpu.values())


def _rows_stored(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("polygon:") and " rows in " in line:
            return int(line.split()[1].replace(",", ""))
    return 0


# --------------------------------------------------------------------------- ceilings


def dataset_ceiling(count: int, markets: str) -> dict[str, float]:
    """The fake Polygon and the provider's ``get_dataset()`` alone, in a child process."""
    with FakePolygon(option_count=count, frozen=True) as fake:
        env = _env(fake, markets, Path(os.devnull))
        result = subprocess.run(
            [sys.executable, __file__, "--dataset-only"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    figures: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return figures


def _read_dataset() -> dict[str, float]:
    """In the child: iterate the Polygon provider's dataset, counting rows."""
    from backend.runtime.registry import load_provider_class
    from backend.settings import load_settings

    settings = load_settings()
    provider = load_provider_class(settings.provider_registry()["polygon"])()
    provider._attach("polygon", settings, lambda event: None)
    provider.init()
    try:
        started, cpu, rows = time.monotonic(), time.process_time(), 0
        for _ in provider.get_dataset():
            rows += 1
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    finally:
        provider.shutdown()
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "cpu_us": round(cpu / max(rows, 1) * 1e6, 2),
    }


def option_rows(count: int, source: str = "bench") -> Iterator[dict[str, Any]]:
    """``count`` distinct option-contract rows shaped like the Polygon provider's."""
    categories, served = ["Options"], list(intervals.INTERVALS)
    for i in range(count):
        strike, kind = 1 + i % 1000, "Call" if (i // 1000) % 2 else "Put"
        day = 1 + (i // 2000) % 28
        month = 1 + (i // 56_000) % 12
        underlying = _UNDERLYINGS[(i // 672_000) % len(_UNDERLYINGS)]
        cycle = i // (672_000 * len(_UNDERLYINGS))
        root = f"{underlying}{cycle}" if cycle else underlying
        yield {
            "source": source,
            "name": f"O:{root}27{month:02d}{day:02d}{kind[0]}{strike * 1000:08d}",
            "name_label": f"{root} 2027-{month:02d}-{day:02d} {strike} {kind}",
            "type": "candlestick",
            "categories": categories,
            "intervals": served,
            "outputs": OUTPUTS,
            "source_label": "OPRA",
        }


def generator_ceiling(count: int) -> dict[str, float]:
    """The rate of :func:`option_rows` alone."""
    started, rows = time.monotonic(), 0
    for _ in option_rows(count):
        rows += 1
    seconds = time.monotonic() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds)}


def from_memory(count: int, workdir: Path) -> dict[str, float]:
    """:func:`replace_provider_rows` fed :func:`option_rows` (no REST), into a fresh file."""
    db = workdir / "memory-bench.sqlite3"
    started = time.monotonic()
    stored = writer.replace_provider_rows(db, "bench", option_rows(count))
    seconds = time.monotonic() - started
    return {
        "rows": stored,
        "seconds": round(seconds, 2),
        "rows_per_second": round(stored / seconds),
    }


def sqlite_ceiling(count: int, workdir: Path) -> dict[str, float]:
    """Prepared rows inserted by the writer's statements alone, in one transaction."""
    batcher = Batcher("bench", 1)
    batches = []
    rows = option_rows(count)
    while chunk := list[object](itertools.islice(rows, 1000)):
        batcher.add(chunk)
        if batcher.full():
            batches.append(batcher.take())
    batches.append(batcher.take())
    session = Session(workdir / "sqlite-bench.sqlite3")
    try:
        started = time.monotonic()
        for command, args in (
            ("open", ("bench",)),
            ("begin", ("bench", 1)),
            *(("insert", batch) for batch in batches),
            ("commit", ("bench", batcher.words, 1, batcher.next_seq - 1)),
            ("checkpoint", ()),
        ):
            status, value = session.run(command, args)
            if status != "ok":
                raise RuntimeError(value)
        seconds = time.monotonic() - started
    finally:
        session.close()
    return {
        "rows": session.stored,
        "seconds": round(seconds, 2),
        "rows_per_second": round(session.stored / seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="option contracts")
    parser.add_argument("--markets", default="options", help="POLYGON_MARKETS")
    parser.add_argument("--dataset-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dataset_only:
        print(json.dumps(_read_dataset()))
        return 0
    load_before = os.getloadavg()[0]
    dataset = dataset_ceiling(args.count, args.markets)
    with tempfile.TemporaryDirectory(prefix="candlewire-bench-") as tmp:
        figures = measure(args.count, Path(tmp), args.markets)
    generator = generator_ceiling(args.count)
    with tempfile.TemporaryDirectory(prefix="candlewire-bench-") as tmp:
        memory = from_memory(args.count, Path(tmp))
        replace = from_memory(args.count, Path(tmp))  # the same rows again: a replace
    with tempfile.TemporaryDirectory(prefix="candlewire-bench-") as tmp:
        sqlite = sqlite_ceiling(min(args.count, SQLITE_ROWS), Path(tmp))
    rate = figures.rows_per_second
    print(f"contracts listed   {figures.tickers:,}")
    print(f"rows stored        {figures.rows:,}")
    for path, pages in figures.requests.items():
        print(f"REST requests      {pages:,} {path}")
    print(f"wall time          {figures.seconds:.1f} s ({rate:,} rows/s)")
    print(
        f"dataset ceiling    {dataset['rows_per_second']:,} rows/s (fake Polygon + provider,"
        f" no database; {dataset['cpu_us']:.2f} us CPU per row): populate is"
        f" {_ratio(rate, dataset)}"
    )
    print(
        f"CPU per row        {figures.populate_cpu_us:.2f} us populate.py,"
        f" {figures.writer_cpu_us:.2f} us SQLite writer"
    )
    print(f"peak RSS           {figures.peak_rss_mb:.0f} MB (largest process)")
    print(f"peak RSS, tree     {figures.peak_tree_rss_mb:.0f} MB (populate.py + SQLite writer)")
    print(f"database           {figures.db_mb:.0f} MB")
    print(
        f"from memory        {memory['rows_per_second']:,} rows/s ({memory['rows']:,} generated"
        f" rows; the generator alone: {generator['rows_per_second']:,} rows/s)"
    )
    print(
        f"replace from memory {replace['rows_per_second']:,} rows/s (the same rows again:"
        f" {_ratio(replace['rows_per_second'], memory)} the first populate)"
    )
    print(
        f"SQLite ceiling     {sqlite['rows_per_second']:,} rows/s ({sqlite['rows']:,} prepared"
        f" rows, one process): from memory is {_ratio(memory['rows_per_second'], sqlite)}"
    )
    print(f"load average       {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    if figures.exit_code:
        print(f"populate.py exited with {figures.exit_code}:\n{figures.output}")
    record = {k: v for k, v in asdict(figures).items() if k != "output"}
    loads = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    record.update(
        dataset_ceiling=dataset,
        generator=generator,
        from_memory=memory,
        replace_from_memory=replace,
        sqlite_ceiling=sqlite,
        loadavg=loads,
    )
    print(json.dumps(record))
    return figures.exit_code


def _ratio(rate: float, ceiling: dict[str, float]) -> str:
    return f"{rate / ceiling['rows_per_second']:.2f}x" if ceiling["rows_per_second"] else "?"


if __name__ == "__main__":
    sys.exit(main())
