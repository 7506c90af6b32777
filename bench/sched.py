"""What ran on each core during a benchmark window, from the kernel's scheduler events.

``perf sched record -a`` logs every context switch of the window; ``perf sched timehist``
turns them into runs. :func:`summarise` keeps, per task on one core, its number of runs,
its CPU time, its longest single run and its longest scheduling delay (from waking to
running). A latency maximum well above the server's own longest run is not the server's:
another task held the core meanwhile, a kernel thread (``kdamond``, ``rcu_preempt``,
``ksoftirqd``), another service of the machine, or the benchmark's own processes. What the
guest cannot see (its vCPU descheduled by the host) shows as a run that took longer than
the task's CPU time would need, and as a late wake of ``bench/jitter.py``'s probe.

    python bench/sched.py FILE [--cpu 0] [--top 12]   # the summary of a recorded file

Needs ``perf`` (Debian's ``linux-perf``) and the right to trace every CPU (root here);
:func:`record` says why when it cannot.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# "    2079.145768 [0000]  python[11009]    0.557    0.000    6.547"
LINE = re.compile(r"^\s*[\d.]+\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
PID = re.compile(r"\[(?:\d+/)?(\d+)\]$")  # "name[tid/pid]" or "name[pid]"


@dataclass
class TaskTimes:
    """One task's runs on one core in the window."""

    task: str  # perf's name: "comm[tid/pid]" or "comm[pid]"
    runs: int = 0
    run_ms: float = 0.0
    longest_run_ms: float = 0.0
    longest_delay_ms: float = 0.0

    @property
    def pid(self) -> int | None:
        found = PID.search(self.task)
        return int(found.group(1)) if found else None


def record(seconds: float, out: Path) -> str | None:
    """Every CPU's scheduler events for ``seconds`` into ``out``; an error message, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: linux-perf)"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["perf", "sched", "record", "-a", "-o", str(out), "--", "sleep", f"{seconds:g}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else done.stderr[-300:]


def summarise(data: Path, cpu: int) -> list[TaskTimes]:
    """The tasks that ran on ``cpu`` (idle left out), longest single run first."""
    command = ["perf", "sched", "timehist", "-i", str(data), "--cpu", str(cpu)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    tasks: dict[str, TaskTimes] = {}
    for line in done.stdout.splitlines():
        found = LINE.match(line)
        if found is None or int(found.group(1)) != cpu:
            continue
        name = found.group(2)
        if name.startswith("<idle>"):
            continue
        delay, run = float(found.group(4)), float(found.group(5))
        task = tasks.get(name)
        if task is None:
            task = tasks[name] = TaskTimes(name)
        task.runs += 1
        task.run_ms += run
        task.longest_run_ms = max(task.longest_run_ms, run)
        task.longest_delay_ms = max(task.longest_delay_ms, delay)
    return sorted(tasks.values(), key=lambda t: t.longest_run_ms, reverse=True)


def report(data: Path, cpus: list[int], labels: dict[int, str], top: int = 10) -> str:
    """A table per CPU of the ``top`` tasks by longest run, ours named by ``labels`` (pid ->
    what it is), and every task of ``labels`` that ran there even if it is not in the top."""
    lines = []
    for cpu in cpus:
        tasks = summarise(data, cpu)
        shown = tasks[:top] + [t for t in tasks[top:] if t.pid in labels]
        lines.append(f"cpu {cpu}: longest run / longest wake-to-run delay / runs / cpu ms")
        for t in shown:
            label = labels.get(t.pid or -1, "")
            lines.append(
                f"  {t.longest_run_ms:7.2f} ms {t.longest_delay_ms:7.2f} ms {t.runs:7d} "
                f"{t.run_ms:9.1f}  {t.task} {label}".rstrip()
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--cpu", type=int, action="append")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(report(args.file, args.cpu or [0, 1], {}, args.top))


if __name__ == "__main__":
    main()
