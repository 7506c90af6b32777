"""The provider path: a fake Binance upstream -> the real Binance provider process -> hub ->
clients, beside the synthetic source and the ``websockets`` ceiling in the same run.

    python bench/provider_path.py [--clients 1000] [--keys 100] [--keys-per-client 5]
                                  [--rate 50000] [--seconds 8]
                                  [--upstream-tick 0.005] [--paths binance,synthetic,ceiling]
                                  [--profile DIR [--profiler py-spy|perf|sched]]

The upstream is ``tests/fakes/binance.py`` (the real wire format: REST ``exchangeInfo`` and
``klines``, combined kline streams with live SUBSCRIBE frames) listing ``--keys`` symbols, in
its own process on the client core. Its kline pushes are replaced by the benchmarks'
:class:`bench.synthetic.Schedule`: every subscribed stream is pushed at the same rate,
spread evenly over time (every ``--upstream-tick`` seconds, by default the synthetic
source's 5 ms tick), in the synthetic source's order (sorted by name), and each kline
carries its send time (wall clock) as its volume ``v``. The Binance provider parses it like
any kline, the hub sends it as the bar's volume, and the load generator reads it as the
publish time: the latency is upstream send -> client, through the provider process and the
hub. The order matters: a client subscribes to consecutive names, so when the streams are
pushed in name order a client often gets several updates of one tick together, in one
socket write; pushed in the order they were subscribed (as this benchmark did before), they
reached each client one at a time, which cost the hub about 2.5 times the socket writes for
the same messages and made the Binance path look far dearer than the synthetic one.

Each of ``--clients`` clients subscribes to ``--keys-per-client`` keys; the rate per key is
``--rate`` / subscriptions, so the three servers deliver the same ``--rate`` messages/s:
ours through Binance, ours through the synthetic source (a provider process that publishes
by itself: no upstream socket, no parsing), and ``bench/ceiling.py`` (``websockets``
broadcast, no provider process). Prints a table (p50/p99/max latency, CPU, and the
share of the window the server's and its providers' threads waited for a CPU: on a shared
core that waiting is part of the latency; and how late a process that only sleeps 1 ms at a
time woke on the server core and on the client core meanwhile, ``bench/jitter.py``: the
machine's own floor under every path's max; and how many times the hub's own event loop
stalled over 10 ms in the window, from its stall probe), then one JSON line. ``--paths``
runs only some of the three; ``--profile DIR`` adds, after each measured window, a second
window at the same rate under py-spy (the server and its provider processes, every thread;
raw collapsed stacks in ``DIR/<path>.txt``), ``perf record -g`` (native and kernel frames,
in ``DIR/<path>.perf.data``; ``perf report -i``) or ``perf sched record -a`` (every task on
every core, ``bench/sched.py``: each task's longest run and longest wake-to-run delay on the
server and client cores, ours named, printed and kept in ``DIR/<path>.sched.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sched
from bench.common import (
    CLIENT_CORE,
    SERVER_CORE,
    CeilingServer,
    LoadGen,
    OurServer,
    Search,
    Target,
    drain,
    emit,
    interleave,
    loadavg,
    log,
    machine,
    pin_tree,
    table,
    tree_cpu,
    window,
)
from bench.hotspots import pyspy_binary
from bench.jitter import JitterProbe
from bench.synthetic import TICK_SECONDS, RateFile, Schedule, symbol_names
from tests.fakes.binance import FakeBinance, SymbolSpec, _Conn

INTERVAL = "1m"


def binance_symbols(count: int) -> list[str]:
    """``B00000USDT``...: upper-case alphanumeric, as the fake requires."""
    return [f"B{i:05d}USDT" for i in range(count)]


class TimedBinance(FakeBinance):
    """The fake exchange pushing every subscribed kline stream at the rate read from a
    :class:`RateFile`, evenly spread, each kline's volume its send time."""

    def __init__(self, count: int, rate_file: str, tick: float = TICK_SECONDS) -> None:
        symbols = [SymbolSpec(name, name[:-4], "USDT", "100") for name in binance_symbols(count)]
        super().__init__(symbols, push_interval=tick, ping_interval=None)
        self.rate_file = rate_file
        self.tick = tick
        self.sent = 0

    async def _push_events(self, conn: _Conn) -> None:
        schedule = Schedule(RateFile(self.rate_file, 0.0))
        events: dict[str, tuple[int, dict[str, Any]]] = {}  # stream -> (open time, payload)
        dumps, wall = json.dumps, time.time
        while True:
            await asyncio.sleep(self.tick)
            due = schedule.take(sorted(conn.streams), wall())
            if not due:
                continue
            now = self.now_ms()
            for stream in due:
                event = self._event(events, stream, now)
                if event is None:
                    continue
                event["E"] = now
                event["k"]["v"] = repr(wall())
                payload = {"stream": stream, "data": event} if conn.combined else event
                await conn.ws.send(dumps(payload, separators=(",", ":")))
                self.sent += 1

    def _event(
        self, events: dict[str, tuple[int, dict[str, Any]]], stream: str, now: int
    ) -> dict[str, Any] | None:
        """The payload of ``stream``'s forming bar, computed once per bar."""
        cached = events.get(stream)
        symbol = stream.split("@", 1)[0].upper()
        open_time = now - now % 60_000
        if cached is None or cached[0] != open_time:
            if symbol not in self.data.symbols:
                return None
            cached = events[stream] = (
                open_time,
                self.data.kline_event(symbol, INTERVAL, open_time, now=now),
            )
        return cached[1]


def upstream_main(conn: Connection, count: int, rate_file: str, tick: float) -> None:
    """The fake exchange's process: serve until told to stop; report URLs and the count of
    klines sent."""
    with TimedBinance(count, rate_file, tick) as fake:
        gc.freeze()  # as the load generator does: its pauses are not the server's latency
        conn.send({"api_url": fake.api_url, "stream_url": fake.stream_url})
        while conn.recv() != "stop":
            conn.send({"sent": fake.sent})
        conn.send({"sent": fake.sent})


class Upstream:
    """The fake exchange in its own process, pinned to the client core."""

    def __init__(self, count: int, tick: float = TICK_SECONDS) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="candlewire-upstream-")
        self.rate_file = str(Path(self._tmp.name) / "rate")
        RateFile.write(self.rate_file, 0)
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(
            target=upstream_main, args=(child, count, self.rate_file, tick), daemon=True
        )
        self.proc.start()
        child.close()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        pin_tree(self.pid, CLIENT_CORE)
        if not self.conn.poll(60):
            raise RuntimeError("the fake exchange did not start")
        urls = self.conn.recv()
        self.api_url, self.stream_url = urls["api_url"], urls["stream_url"]

    def sent(self) -> int:
        self.conn.send("count")
        return int(self.conn.recv()["sent"])

    def cpu(self) -> float:
        t = tree_cpu(self.pid)
        return t["main"] + t["children"]

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.send("stop")
            self.conn.poll(10)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self._tmp.cleanup()


def run_queue_wait(pid: int) -> dict[str, float]:
    """Seconds the threads of ``pid`` ("main") and of its descendants ("children") have
    spent runnable but waiting for a CPU (Linux ``schedstat``; 0 elsewhere)."""
    out = {"main": 0.0, "children": 0.0}
    try:
        procs = [(psutil.Process(pid), "main")]
        procs += [(child, "children") for child in procs[0][0].children(recursive=True)]
    except psutil.Error:
        return out
    for proc, part in procs:
        for task in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[part] += int(task.read_text().split()[1]) / 1e9
    return out


def connect(
    gen: LoadGen, target: Target, clients: int, names: list[str], per_client: int, source: str
) -> None:
    result = gen.call(
        "connect",
        url=target.ws_url,
        clients=clients,
        names=names,
        per_client=per_client,
        source=source,
    )
    log(f"  {target.label}: {result['connected']} clients connected in {result['seconds']} s")
    if result["connected"] != clients:
        raise RuntimeError(
            f"{target.label}: only {result['connected']} of {clients} connected: "
            f"{result['first_failure']} {result['error_samples']}"
        )


def measure(
    target: Target,
    gen: LoadGen,
    rate: float,
    seconds: float,
    upstream: Upstream | None = None,
    profile: Path | None = None,
    profiler: str = "py-spy",
    probe: JitterProbe | None = None,
) -> dict[str, Any]:
    """Latency at ``rate`` updates/s per key over one window of ``seconds``; with
    ``profile``, then py-spy stacks of another window at the same rate in that file; with
    ``probe``, how late a sleeping process woke on each core meanwhile (the machine's floor)."""
    target.set_rate(rate)
    time.sleep(2.0)
    if probe is not None:
        probe.reset()
    stalls_before = target.loop_stalls()
    u0, s0 = (upstream.cpu(), upstream.sent()) if upstream else (0.0, 0)
    w0 = run_queue_wait(target.pid)
    t0 = time.perf_counter()
    m = window(target, gen, seconds)
    elapsed = time.perf_counter() - t0
    w1 = run_queue_wait(target.pid)
    late = probe.take() if probe is not None else [None, None]
    stalls_after = target.loop_stalls()
    stalls = None
    if stalls_before is not None and stalls_after is not None:
        stalls = round(stalls_after.get("10", 0.0) - stalls_before.get("10", 0.0))
    u1, s1 = (upstream.cpu(), upstream.sent()) if upstream else (0.0, 0)
    if profile is not None and profiler == "sched":
        record_sched(seconds, profile, ours(target, gen, upstream, probe))
    elif profile is not None:
        record_stacks(target.pid, seconds, profile, profiler)
    drain(target, gen)
    return {
        "delivered_per_s": round(m["per_s"]),
        "p50_ms": m["p50_ms"],
        "p99_ms": m["p99_ms"],
        "max_ms": m["max_ms"],
        "n": m["n"],
        "server_cpu": m["server_cpu"],
        "provider_cpu": m["provider_cpu"],
        "client_cpu": m["client_cpu"],
        "upstream_cpu": round((u1 - u0) / elapsed, 2) if upstream else None,
        # the share of the window the server's and the providers' threads spent waiting for
        # the (shared) server core: the part of the latency that is the machine's
        "server_wait": round((w1["main"] - w0["main"]) / elapsed, 2),
        "provider_wait": round((w1["children"] - w0["children"]) / elapsed, 2),
        "upstream_per_s": round((s1 - s0) / elapsed) if upstream else None,
        # the worst oversleep of a 1 ms sleep on the server core and on the client core
        "late_server_ms": late[0],
        "late_client_ms": late[1],
        # the hub's own event-loop stalls over 10 ms in the window (its stall probe)
        "hub_stalls_10ms": stalls,
        "loadavg": loadavg(),
    }


def record_stacks(pid: int, seconds: float, out: Path, profiler: str = "py-spy") -> None:
    """Stacks of ``pid`` and its children, every thread, in ``out``: py-spy's raw
    collapsed stacks, or a ``perf record -g`` file (native and kernel frames)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    duration = str(max(1, int(seconds)))
    if profiler == "perf":
        pids = ",".join(str(p) for p in [pid, *(c.pid for c in psutil.Process(pid).children())])
        command = ["perf", "record", "-F", "999", "-g", "-p", pids, "-o", str(out)]
        command += ["--", "sleep", duration]
    else:
        binary = pyspy_binary()
        if binary is None:
            log("  py-spy is not installed (.venv/bin/pip install py-spy): no profile")
            return
        command = [binary, "record", "--pid", str(pid), "--duration", duration]
        command += ["--rate", "200", "--format", "raw", "--nolineno", "--threads"]
        command += ["--subprocesses", "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    log(f"  profile: {out}" if done.returncode == 0 else f"  {profiler}: {done.stderr[-300:]}")


def ours(
    target: Target, gen: LoadGen, upstream: Upstream | None, probe: JitterProbe | None
) -> dict[int, str]:
    """The benchmark's processes by pid, named for :func:`record_sched`'s report."""
    names = {target.pid: "<- hub"}
    with contextlib.suppress(psutil.Error):
        names |= {child.pid: "<- provider" for child in psutil.Process(target.pid).children()}
    if gen.proc.pid is not None:
        names[gen.proc.pid] = "<- load client"
    if upstream is not None:
        names[upstream.pid] = "<- fake exchange"
    for core, pid in (probe.pids() if probe is not None else {}).items():
        names[pid] = f"<- jitter probe (core {core})"
    return names


def record_sched(seconds: float, out: Path, names: dict[int, str]) -> None:
    """Every core's scheduler events over one more window (``perf sched record -a``), and
    per task on the server and client cores its longest run and wake-to-run delay
    (``bench/sched.py``), printed and written next to ``out``."""
    data = out.with_suffix(".data")
    failed = sched.record(max(1.0, seconds), data)
    if failed is not None:
        log(f"  perf sched: {failed}")
        return
    cores = [core for core in (SERVER_CORE, CLIENT_CORE) if core is not None] or [0]
    text = sched.report(data, cores, names)
    out.write_text(text + "\n")
    log(f"  scheduler events: {data}\n{text}")


PATH_LABELS = {
    "binance": "fake Binance -> provider -> hub",
    "synthetic": "synthetic provider -> hub",
    "ceiling": "ceiling (websockets)",
}


class Route:
    """One of the compared routes: its server, and the fake exchange feeding it (Binance)."""

    def __init__(self, name: str, target: Target, upstream: Upstream | None = None) -> None:
        self.name, self.target, self.upstream = name, target, upstream
        self.label = PATH_LABELS[name]


def windows_at(
    routes: list[Route],
    gen: LoadGen,
    rates: dict[str, float],
    args: argparse.Namespace,
    profile: Callable[[str], Path | None] | None = None,
    probe: JitterProbe | None = None,
) -> list[dict[str, Any]]:
    """``--windows`` windows of every path at its rate (updates/s per key), the routes
    alternating; per path the median of the windows' p50, p99 and max (one window's tail is
    one stall of a shared machine away from twice its usual value), the worst max, and the
    mean CPU."""
    measured: dict[str, list[dict[str, Any]]] = {r.name: [] for r in routes}
    for i in range(args.windows):
        for r in routes:
            stacks = profile(r.name) if profile is not None and i == 0 else None
            measured[r.name].append(
                measure(
                    r.target,
                    gen,
                    rates[r.name],
                    args.seconds,
                    r.upstream,
                    stacks,
                    args.profiler,
                    probe,
                )
            )
    return [{"path": r.label, **combine(measured[r.name])} for r in routes]


def combine(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several windows of one path (see :func:`windows_at`)."""
    if len(windows) == 1:
        return {**windows[0], "windows": 1, "worst_max_ms": windows[0]["max_ms"]}
    row: dict[str, Any] = dict(windows[-1])
    for key in ("delivered_per_s", "p50_ms", "p99_ms", "max_ms"):
        row[key] = statistics.median(w[key] for w in windows)
    for key in ("late_server_ms", "late_client_ms"):
        late = [w[key] for w in windows if w[key] is not None]
        row[key] = statistics.median(late) if late else None
    for key in ("server_cpu", "provider_cpu", "client_cpu", "server_wait", "provider_wait"):
        row[key] = round(statistics.fmean(w[key] for w in windows), 2)
    row["delivered_per_s"] = round(row["delivered_per_s"])
    row["windows"] = len(windows)
    row["worst_max_ms"] = max(w["max_ms"] for w in windows)
    row["max_windows"] = [w["max_ms"] for w in windows]
    row["p99_windows"] = [w["p99_ms"] for w in windows]
    row["late_windows"] = [(w["late_server_ms"], w["late_client_ms"]) for w in windows]
    stalls = [w["hub_stalls_10ms"] for w in windows if w["hub_stalls_10ms"] is not None]
    row["hub_stalls_10ms"] = sum(stalls) if stalls else None
    row["below_half_cpu"] = all(w["server_cpu"] + w["provider_cpu"] < 0.5 for w in windows)
    return row


def saturations(
    routes: list[Route], gen: LoadGen, subscriptions: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each path's saturation (``bench/common.py`` ``Search``: delivered/ideal >= 0.95 and
    p99 <= 100 ms), the searches' steps alternating."""
    options: dict[str, Any] = {"seconds": 3.0, "settle": 1.0, "precision": 1.2, "log": log}
    start = args.rate / subscriptions
    found = interleave([Search(r.target, subscriptions, start, **options) for r in routes], gen)
    return {r.name: result for r, result in zip(routes, found, strict=True)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    k, n = args.keys_per_client, args.clients
    subscriptions = n * k
    rate = args.rate / subscriptions  # updates/s per key: every server delivers --rate msg/s
    wanted = args.paths.split(",")
    folder = Path(args.profile) if args.profile else None

    def profile(name: str) -> Path | None:
        suffix = {"perf": "perf.data", "sched": "sched.txt"}.get(args.profiler, "txt")
        return folder / f"{name}.{suffix}" if folder is not None else None

    log(f"provider path: {n} clients x {k} keys of {args.keys}, {args.rate:,.0f} msg/s")
    figures: dict[str, Any] = {
        "clients": n,
        "keys": args.keys,
        "keys_per_client": k,
        "rate_per_s": args.rate,
        "rate_per_key": round(rate, 3),
        "upstream_tick": args.upstream_tick,
        "windows": args.windows,
    }
    with LoadGen() as gen, contextlib.ExitStack() as stack:
        probe = None
        if SERVER_CORE is not None and CLIENT_CORE is not None:
            probe = stack.enter_context(JitterProbe([SERVER_CORE, CLIENT_CORE]))
        routes: list[Route] = []
        names = symbol_names(args.keys)
        if "binance" in wanted:
            upstream = stack.enter_context(Upstream(args.keys, args.upstream_tick))
            binance = stack.enter_context(
                OurServer(
                    providers="binance",
                    MAX_CLIENTS=str(n + 100),
                    BINANCE_API_URL=upstream.api_url,
                    BINANCE_STREAM_URL=upstream.stream_url,
                )
            )
            binance.label = "binance"
            binance.rate_file = upstream.rate_file  # the upstream's rate, not a provider's
            connect(gen, binance, n, binance_symbols(args.keys), k, "binance")
            routes.append(Route("binance", binance, upstream))
        if "synthetic" in wanted:
            synthetic = stack.enter_context(
                OurServer(BENCH_KEYS=str(args.keys), MAX_CLIENTS=str(n + 100))
            )
            connect(gen, synthetic, n, names, k, "synthetic")
            routes.append(Route("synthetic", synthetic))
        if "ceiling" in wanted:
            ceiling = stack.enter_context(CeilingServer("broadcast", args.keys))
            connect(gen, ceiling, n, names, k, "synthetic")
            routes.append(Route("ceiling", ceiling))
        figures["rows"] = windows_at(
            routes, gen, {r.name: rate for r in routes}, args, profile, probe
        )
        if args.rates:
            figures["sweep"] = []
            for per_s in (float(r) for r in args.rates.split(",")):
                log(f"  sweep: {per_s:,.0f} msg/s")
                rows = windows_at(
                    routes, gen, {r.name: per_s / subscriptions for r in routes}, args, None, probe
                )
                figures["sweep"] += [{"rate_per_s": per_s, **row} for row in rows]
        if args.saturation:
            found = saturations(routes, gen, subscriptions, args)
            figures["saturation"] = {
                name: {k: v for k, v in result.items() if k != "steps"}
                for name, result in found.items()
            }
            half = {
                name: (result["best"]["rate"] if result["best"] else rate) / 2
                for name, result in found.items()
            }
            log("  latency at half of each path's saturation")
            half_rows = windows_at(routes, gen, half, args, None, probe)
            figures["half_saturation"] = [
                {"saturation_per_s": found[r.name]["saturation_per_s"], **row}
                for r, row in zip(routes, half_rows, strict=True)
            ]
        gen.call("close")
    figures["machine"] = machine()
    figures["loadavg_end"] = loadavg()
    return figures


COLUMNS = [
    ("path", "path", ""),
    ("msg/s", "delivered_per_s", ",d"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p99 ms", "p99_ms", ".2f"),
    ("max ms", "max_ms", ".1f"),
    ("hub cpu", "server_cpu", ".2f"),
    ("provider cpu", "provider_cpu", ".2f"),
    ("client cpu", "client_cpu", ".2f"),
    ("upstream cpu", "upstream_cpu", ".2f"),
    ("hub waited", "server_wait", ".2f"),
    ("provider waited", "provider_wait", ".2f"),
    ("hub core late ms", "late_server_ms", ".1f"),
    ("client core late ms", "late_client_ms", ".1f"),
    ("hub loop stalls > 10 ms", "hub_stalls_10ms", "d"),
]


WINDOW_COLUMNS = [("windows", "windows", "d"), ("worst max ms", "worst_max_ms", ".1f")]


def print_report(figures: dict[str, Any]) -> None:
    windows = figures["windows"]
    median = f", median of {windows} windows" if windows > 1 else ""
    print(
        f"provider path: {figures['clients']} clients x {figures['keys_per_client']} keys of "
        f"{figures['keys']}, {figures['rate_per_s']:,.0f} msg/s "
        f"({figures['rate_per_key']} updates/s per key{median})"
    )
    columns = COLUMNS + (WINDOW_COLUMNS if windows > 1 else [])
    print(table(columns, figures["rows"]))
    if "sweep" in figures:
        print("rate sweep (hub + provider cpu < 0.5 in every window: below_half_cpu)")
        sweep = [("rate msg/s", "rate_per_s", ",.0f"), *columns]
        if windows > 1:
            sweep.append(("< 50% cpu", "below_half_cpu", ""))
        print(table(sweep, figures["sweep"]))
    if "half_saturation" in figures:
        print("latency at half of each path's own saturation")
        half = [("saturation msg/s", "saturation_per_s", ",d"), *columns]
        print(table(half, figures["half_saturation"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--keys-per-client", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50_000.0, help="messages/s delivered")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window")
    parser.add_argument(
        "--paths", default="binance,synthetic,ceiling", help="which paths, comma-separated"
    )
    parser.add_argument(
        "--upstream-tick",
        type=float,
        default=TICK_SECONDS,
        help="seconds between the fake exchange's pushes (the synthetic source's tick)",
    )
    parser.add_argument(
        "--windows", type=int, default=1, help="windows per path, alternating; medians"
    )
    parser.add_argument(
        "--rates", default="", help="also a sweep over these msg/s rates, comma-separated"
    )
    parser.add_argument(
        "--saturation",
        action="store_true",
        help="also each path's saturation, then latency at half of it",
    )
    parser.add_argument("--profile", default="", help="a folder for profiles")
    parser.add_argument("--profiler", choices=("py-spy", "perf", "sched"), default="py-spy")
    args = parser.parse_args()
    figures = run(args)
    print_report(figures)
    emit("provider_path", figures)


if __name__ == "__main__":
    main()
