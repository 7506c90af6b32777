"""The benchmark suite: every figure with its ceiling, in one run (about 6-8 minutes).

    python bench/run_all.py [--skip search,history] [--search-rows 1000000]

Runs, one after the other, each in its own process: ``bench/fanout.py`` (N = 100, 1,000,
5,000; latency at half of our saturation), ``bench/ingest.py``, ``bench/provider_path.py``
(latency through the Binance provider), ``bench/connections.py``,
``bench/history.py`` and ``bench/search.py``. Each prints its own table as it finishes
(progress goes to stderr); then a summary of every figure next to its ceiling, the ratio,
the target and whether it is met, the machine and the load average, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import loadavg, machine, table

BENCH = Path(__file__).resolve().parent


def run_script(name: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<name>.py``; print its table; return its JSON line (and its time)."""
    started = time.monotonic()
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = done.stdout.rstrip().splitlines()
    figures: dict[str, Any] = {}
    if lines and lines[-1].startswith("{"):
        figures = json.loads(lines[-1])
        lines = lines[:-1]
    print("\n".join(lines), flush=True)
    figures["seconds"] = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        figures["failed"] = f"exit code {done.returncode}"
        print(f"{name} failed with exit code {done.returncode}", flush=True)
    return figures


def fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(
        figure: str,
        ours: Any,
        ceiling: Any,
        ratio: Any,
        target: str,
        met: Any,
        spec: str = ",.0f",
        note: str = "",
    ) -> None:
        rows.append(
            {
                "figure": figure,
                "ours": fmt(ours, spec),
                "ceiling": fmt(ceiling, spec),
                "ratio": fmt(ratio, ".2f"),
                "target": target,
                "met": "-" if met is None else ("yes" if met else "NO"),
                "note": note,
            }
        )

    fanout = results.get("fanout", {})
    for row in fanout.get("rows", []):
        n = row["clients"]
        target = ">= 0.90 x ceiling" if n >= 1000 else ""
        met = None if not target or row["ratio"] is None else row["ratio"] >= 0.9
        note = f"client max {row['client_max_per_s']:,}/s; ours limited by {row['ours_limit']}"
        if row.get("client_bound"):
            note += "; NEAR THE LOAD GENERATOR'S CEILING"
        add(
            f"fan-out N={n:,} msg/s",
            row["ours_per_s"],
            row["ceiling_per_s"],
            row["ratio"],
            target,
            met,
            note=note,
        )
    lat = fanout.get("latency") or {}
    if "ours" in lat:
        ours, ceiling = lat["ours"], lat.get("ceiling", {})
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            target = "<= 20 ms" if key == "p99_ms" else ""
            met = ours[key] <= 20 if key == "p99_ms" and ours[key] is not None else None
            ratio = ours[key] / ceiling[key] if ceiling.get(key) else None
            add(
                f"latency {label} ms at half saturation",
                ours[key],
                ceiling.get(key),
                ratio,
                target,
                met,
                ".2f",
                note=f"{lat['ours']['delivered_per_s']:,} msg/s, N=1,000"
                if key == "p50_ms"
                else "",
            )
    ingest = results.get("ingest", {}).get("row")
    if ingest:
        add(
            "ingest upstream updates/s (10 clients)",
            ingest["ours_per_s"],
            ingest["ceiling_per_s"],
            ingest["ratio"],
            ">= 20,000 at p99 <= 100 ms",
            ingest["target_met"],
            note=f"ours limited by {ingest['ours_limit']}",
        )
    path = results.get("provider_path", {})
    path_rows = path.get("rows", [])
    if len(path_rows) == 3:
        binance, synthetic, ceiling = path_rows
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            met = binance[key] <= 20 if key == "p99_ms" and binance[key] is not None else None
            add(
                f"latency {label} ms via the Binance provider",
                binance[key],
                ceiling[key],
                binance[key] / ceiling[key] if binance[key] and ceiling[key] else None,
                "<= 20 ms" if key == "p99_ms" else "",
                met,
                ".2f",
                note=f"synthetic source {synthetic[key]:.2f} ms; "
                f"{path['rate_per_s']:,.0f} msg/s, N={path['clients']:,}"
                if synthetic[key] is not None
                else "",
            )
    conn = results.get("connections", {}).get("row")
    if conn:
        add(
            f"idle connection KB ({conn['connections']:,})",
            conn["ours_kb"],
            conn["ceiling_kb"],
            conn["ratio"],
            "<= 16 KB",
            conn["target_met"],
            ".1f",
            note=f"{conn['ours_connected']:,} connected; RSS {conn['ours_rss_mb']:.0f} MB",
        )
    search = results.get("search", {}).get("search")
    if search:
        for kind, stats in search.items():
            add(
                f"search p99 ms ({kind})",
                stats["p99_ms"],
                None,
                None,
                "<= 10 ms",
                stats["p99_ms"] <= 10,
                ".2f",
                note=f"p50 {stats['p50_ms']:.2f} ms, {results['search']['rows']:,} rows, "
                "no ceiling (in process)",
            )
    history = results.get("history", {}).get("rows", [])
    for row in history:
        if "answers_per_s" in row:
            add(
                f"data_init {row['count']:,} bars: answers/s, {row['from']}",
                row["answers_per_s"],
                row["ceiling_answers_per_s"],
                row["x_ceiling"],
                "",
                None,
                ",.0f",
                note=f"p99 {row['p99_ms']:.0f} ms",
            )
        else:
            target = f"p50 <= {row['target_ms']:g} ms" if row["target_ms"] else ""
            add(
                f"data_init {row['count']:,} bars p50 ms, {row['from']}",
                row["p50_ms"],
                row["ceiling_p50_ms"],
                row["x_ceiling"],
                target,
                row["met"],
                ".2f",
                note=f"p99 {row['p99_ms']:.1f} ms; {row['provider_calls']} provider calls "
                f"for {row['n']} requests",
            )
    return rows


COLUMNS = [
    ("figure", "figure", ""),
    ("ours", "ours", ""),
    ("ceiling", "ceiling", ""),
    ("ours/ceiling", "ratio", ""),
    ("target", "target", ""),
    ("met", "met", ""),
    ("", "note", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma list of scripts to leave out")
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    load_start = loadavg()
    plan: list[tuple[str, list[str]]] = [
        ("fanout", ["--seconds", "2.5"]),
        ("ingest", ["--seconds", "2.5"]),
        ("provider_path", ["--seconds", "5"]),
        ("connections", []),
        ("history", ["--keys", "50", "--seconds", "3"]),
        ("search", ["--rows", str(args.search_rows), "--queries", "200"]),
    ]
    results: dict[str, dict[str, Any]] = {}
    for name, script_args in plan:
        if name not in skip:
            results[name] = run_script(name, *script_args)
    total = time.monotonic() - started
    info = machine()
    print("\n=== summary: every figure against its ceiling on this machine")
    print(table(COLUMNS, summary_rows(results)))
    print(
        f"\nmachine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}; "
        f"server on CPU {info['server_core']}, load generator on CPU {info['client_core']}"
        f" ({'taskset' if info['pinned'] else 'not pinned'}); load average at start "
        f"{load_start}, at end {loadavg()}; suite time {total:.0f} s"
    )
    failed = [name for name, r in results.items() if "failed" in r]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    print(
        json.dumps(
            {
                "bench": "all",
                "seconds": round(total),
                "loadavg_start": load_start,
                "loadavg_end": loadavg(),
                "machine": info,
                "results": results,
            }
        )
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
