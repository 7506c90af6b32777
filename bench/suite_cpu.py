"""Where the test suite's CPU goes: run a command (``make test`` by default) while sampling
``/proc``, then print the CPU seconds of each kind of process it started, beside the
machine's busy share over the run.

    python bench/suite_cpu.py                      # make test
    python bench/suite_cpu.py -- .venv/bin/python -m pytest -n 4 tests/test_browser_page.py

Every process is sampled every 0.3 s; one that lived shorter than that is missed, and the
CPU a process spent after its last sample is not counted, so the figures are a floor.
Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

INTERVAL = 0.3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# (kind, words of the command line that tell it), the first that fits names the process
KINDS = (
    ("chromium", ("chromium", "chrome")),
    ("server.py (hubs)", ("server.py",)),
    ("populate.py", ("populate.py",)),
    ("provider processes", ("multiprocessing.spawn",)),
    ("multiprocessing helpers", ("multiprocessing.resource_tracker", "forkserver")),
    ("pytest workers", ("pytest", "execnet", "exec(eval(sys.stdin.readline()))")),
    ("playwright driver", ("run-driver",)),
    ("redis-server", ("redis-server",)),
)


def kind_of(command: str) -> str:
    for kind, words in KINDS:
        if any(word in command for word in words):
            return kind
    return "python (other)" if "python" in command else "other"


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


Seen = dict[tuple[int, int], tuple[str, float]]  # (pid, start) -> (kind, CPU seconds)


def sample(seen: Seen, started_after: float) -> None:
    """Record the CPU seconds of every process started after ``started_after`` (ticks)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            start = int(fields[19])
            if start < started_after:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            key = (int(entry), start)
            if key in seen:
                kind = seen[key][0]
            else:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                kind = kind_of(command.decode(errors="replace"))
            seen[key] = (kind, cpu)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile


def boot_ticks_now() -> float:
    """Now, in clock ticks since boot (the unit of a process's start time)."""
    with open("/proc/uptime", encoding="ascii") as uptime:
        return float(uptime.read().split()[0]) * CLOCK_TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="*", default=["make", "test"])
    args = parser.parse_args()
    seen: Seen = {}
    busy0, total0 = machine_busy()
    began, after = time.monotonic(), boot_ticks_now() - 1
    with subprocess.Popen(args.command) as process:
        while process.poll() is None:
            sample(seen, after)
            time.sleep(INTERVAL)
    busy1, total1 = machine_busy()
    seconds = time.monotonic() - began
    cpus = os.cpu_count() or 1
    share = (busy1 - busy0) / max(total1 - total0, 1)
    cpu: dict[str, float] = {}
    count: Counter[str] = Counter()
    for kind, spent in seen.values():
        cpu[kind] = cpu.get(kind, 0.0) + spent
        count[kind] += 1
    print(f"\n{' '.join(args.command)}: exit {process.returncode}, {seconds:.0f} s")
    print(f"machine: {share:.0%} of {cpus} CPUs busy, {share * cpus * seconds:.0f} CPU-s")
    print(f"{'CPU-s':>8} {'processes':>9}  kind (sampled every {INTERVAL} s: a floor)")
    for kind, spent in sorted(cpu.items(), key=lambda item: -item[1]):
        print(f"{spent:8.1f} {count[kind]:9d}  {kind}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
