"""Profiling helper for the benchmarks: py-spy on a running server, summarised.

``pyspy_top(pid, seconds)`` runs ``py-spy record --format raw`` (collapsed stacks) on the
process (and its children with ``children=True``) and returns, per process, the frames with
the most samples on top of the stack (self) and on the stack at all (inclusive).
py-spy is not a project dependency: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 15


def pyspy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_at(target: Any, gen: Any, found: dict[str, Any], seconds: float) -> dict[str, Any]:
    """py-spy on a server (``bench.common.Target``) at the first failing rate of a
    saturation search (``found``), i.e. at saturation."""
    step = found["first_failure"] or found["best"]
    target.set_rate(step["rate"])
    time.sleep(1.5)
    top = pyspy_top(target.pid, seconds, children=True)
    target.set_rate(0)
    gen.call("quiet", timeout=20)
    top["rate"] = step["rate"]
    return top


def pyspy_top(pid: int, seconds: float, children: bool = False, rate: int = 200) -> dict[str, Any]:
    binary = pyspy_binary()
    if binary is None:
        return {"error": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stacks.txt"
        command = [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nolineno",
            "--output",
            str(out),
        ]
        command.append("--threads")
        if children:
            command.append("--subprocesses")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            return {"error": f"py-spy failed: {done.stderr.strip()[-500:]}"}
        return summarise(out.read_text())


def summarise(collapsed: str) -> dict[str, Any]:
    """Per process: samples per thread, and the top frames by self and inclusive samples."""
    per_process: dict[str, dict[str, Counter[str]]] = {}
    totals: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = _rejoin(stack.split(";"))
        process = "main"
        while frames and frames[0].startswith("process "):  # nested: parent;child;...
            process, frames = _process_label(frames[0]), frames[1:]
        thread = "?"
        if frames and frames[0].startswith("thread "):
            thread, frames = frames[0].split(": ", 1)[-1], frames[1:]
        if not frames:
            continue
        n = int(count)
        counters = per_process.setdefault(
            process, {"self": Counter(), "inclusive": Counter(), "threads": Counter()}
        )
        totals[process] += n
        counters["threads"][thread] += n
        counters["self"][_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            counters["inclusive"][frame] += n
    result: dict[str, Any] = {}
    for process, counters in per_process.items():
        total = totals[process]

        def top(counter: Counter[str], total: int = total) -> list[tuple[str, float]]:
            return [(f, round(100 * c / total, 1)) for f, c in counter.most_common(TOP)]

        result[process] = {
            "samples": total,
            "threads": top(counters["threads"]),
            "self": top(counters["self"]),
            "inclusive": top(counters["inclusive"]),
        }
    return {"processes": result}


def _rejoin(parts: list[str]) -> list[str]:
    """Undo the split inside quoted process command lines (``-c "a; b"``)."""
    frames: list[str] = []
    for part in parts:
        if frames and frames[-1].startswith("process ") and frames[-1].count('"') % 2:
            frames[-1] += ";" + part
        else:
            frames.append(part)
    return frames


def _process_label(frame: str) -> str:
    """``process 123:"python server.py ..."`` -> ``hub 123``; a spawned child -> ``child``."""
    pid = frame.split(":", 1)[0].removeprefix("process ")
    if "server.py" in frame:
        return f"hub (pid {pid})"
    if "spawn_main" in frame:
        return f"provider process (pid {pid})"
    return f"pid {pid}"


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def print_top(profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\nprofile: {profile['error']}")
        return
    rate = profile.get("rate")
    at = f"{rate} updates/s per key" if isinstance(rate, float | int) else rate
    print(f"\npy-spy at {at} (% of samples, idle excluded):")
    for process, data in profile["processes"].items():
        print(f"\n{process}: {data['samples']} samples")
        threads = ", ".join(f"{name} {pct:g}%" for name, pct in data["threads"][:6])
        print(f"  threads: {threads}")
        print(f"  {'self %':>7}  frame")
        for frame, pct in data["self"][:12]:
            print(f"  {pct:>7.1f}  {frame}")
        print(f"  {'incl %':>7}  frame")
        for frame, pct in data["inclusive"][:12]:
            print(f"  {pct:>7.1f}  {frame}")
