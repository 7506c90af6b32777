"""Memory benchmark: a burst of large ``data`` requests, some clients never reading, then all leave.

    python bench/memory.py [--readers 6] [--stalled 3] [--keys 20] [--stalled-keys 100]
                           [--count 10000] [--churn 5] [--server-root PATH]

The real server (``populate.py`` then ``server.py``, through ``bench/common.py``) with the
deterministic 1m history provider (``bench.synthetic:HistoryProvider``). The hub process's
RSS (providers not included) is read:

- fresh: the server idle after start (the reference every other figure is compared with);
- warm: after one client fetched every key of the burst once and left (the bar cache now
  holds them, up to ``CACHE_MAX_BARS``: what the hub may legitimately keep);
- peak: sampled every 20 ms during the burst: ``--readers`` clients each ask for ``--keys``
  x ``--count`` bars and read everything; ``--stalled`` clients (receive buffer 4 KiB) ask
  for ``--stalled-keys`` x ``--count`` bars and never read a byte;
- loaded: once the hub is idle again (every reply built and queued, or paced);
- the stalled clients are then watched for up to 25 s (slow-client timeout, close grace,
  margin) until the hub closed them as too slow and cut them off;
- after leave: 0.5 s after every client closed its socket; after 5 s: five seconds later;
- after churn: ``--churn`` rounds of 10 clients reading 5 cached keys each and leaving,
  6 s apart (what the collection after departures costs in a steady state);

It also prints how many clients the hub closed as too slow (``/metrics``), how long the
stalled clients stayed connected, and the hub's garbage-collection pauses as the server
logged them at shutdown (p50 / max per generation, when the server logs them).
``--server-root`` runs the ``server.py`` of another checkout (e.g. the code before a
change) with the same client load. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OurServer, emit, log, machine, rss, table, tree_cpu
from bench.synthetic import symbol_names

MIB = 1024 * 1024
HANDSHAKE = (
    b"GET /websocket/ HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SLOW_METRIC = re.compile(r"^candlewire_slow_client_disconnects_total (\S+)$", re.M)
# The slow-client timeout (10 s), the close grace (5 s) and a margin.
KICK_WAIT = 25.0
GC_LINE = re.compile(r"gc pauses: (.*)$", re.M)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=6)
    parser.add_argument("--stalled", type=int, default=3)
    parser.add_argument("--keys", type=int, default=20, help="keys per reading client")
    parser.add_argument("--stalled-keys", type=int, default=100, help="keys per stalled client")
    parser.add_argument("--count", type=int, default=10_000, help="bars per data request")
    parser.add_argument("--churn", type=int, default=5, help="rounds of 10 clients coming, going")
    parser.add_argument("--server-root", type=Path, help="run server.py of this checkout")
    return parser.parse_args()


def data_frame(names: list[str], count: int) -> bytes:
    """One masked client frame (all-zero mask) asking ``data`` for every name, unstreamed."""
    payload = orjson.dumps(
        [
            {"type": "data", "source": "history", "name": n, "interval": "1m", "count": count}
            | {"stream": False}
            for n in names
        ]
    )
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


def open_raw(url: str, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket connection on a plain socket, upgraded; nothing read after the 101."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.sendall(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    return sock


def read_inits(sock: socket.socket, wanted: int, timeout: float = 120.0) -> int:
    """Read frames until ``wanted`` ``data_init`` replies came; returns the bytes read."""
    sock.settimeout(timeout)
    buf = bytearray()
    seen = total = 0
    while seen < wanted:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"closed after {seen} of {wanted} replies")
        total += len(chunk)
        buf += chunk
        while len(buf) >= 2:
            n, start = buf[1] & 0x7F, 2
            if n == 126:
                n, start = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + n:
                break
            if buf.startswith(b'{"type":"data_init"', start):
                seen += 1
            del buf[: start + n]
    return total


class Sampler:
    """The peak RSS of one process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> Sampler:
        self.peak = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_idle(pid: int, timeout: float = 120.0) -> float:
    """Wait until the hub process uses under 5% of a core over 0.5 s; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before, t0 = tree_cpu(pid)["main"], time.monotonic()
        time.sleep(0.5)
        if (tree_cpu(pid)["main"] - before) / (time.monotonic() - t0) < 0.05:
            break
    return time.monotonic() - started


def slow_closed(server: OurServer) -> int:
    match = SLOW_METRIC.search(server.server.get("/metrics"))
    return int(float(match.group(1))) if match else 0


def burst(server: OurServer, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The readers and the stalled clients; returns figures up to their leaving."""
    url = server.ws_url
    stalled = [open_raw(url, rcvbuf=4096) for _ in range(args.stalled)]
    readers = [open_raw(url) for _ in range(args.readers)]
    opened = time.monotonic()
    with Sampler(server.pid) as sampler:
        for sock in stalled:
            sock.sendall(data_frame(names[: args.stalled_keys], args.count))
        read: list[int] = []
        threads = []
        for i, sock in enumerate(readers):
            keys = [names[(i * 3 + j) % args.keys] for j in range(args.keys)]
            sock.sendall(data_frame(keys, args.count))
            thread = threading.Thread(target=lambda s=sock: read.append(read_inits(s, args.keys)))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        read_seconds = time.monotonic() - opened
        wait_idle(server.pid)
        loaded = rss(server.pid)
        deadline = time.monotonic() + KICK_WAIT
        while slow_closed(server) < len(stalled) and time.monotonic() < deadline:
            time.sleep(0.1)
        kicked_after = time.monotonic() - opened
        while server_log(server)["logged_cut_off"] < len(stalled) and time.monotonic() < deadline:
            time.sleep(0.1)
        kicked = slow_closed(server)
        peak = sampler.peak
    for sock in stalled + readers:
        sock.close()
    return {
        "peak": peak,
        "loaded": loaded,
        "kicked": kicked,
        "burst_seconds": round(read_seconds, 2),
        "stalled_closed_after_s": round(kicked_after, 1) if kicked >= len(stalled) else None,
        "reader_mib": round(sum(read) / MIB, 1),
    }


def churn(server: OurServer, args: argparse.Namespace, names: list[str]) -> None:
    """``--churn`` rounds: 10 clients each read 5 cached keys and leave, then 6 s (the hub's
    collection after departures comes at most every 5 s): its steady-state gc pauses."""
    for _ in range(args.churn):
        for i in range(10):
            sock = open_raw(server.ws_url)
            keys = [names[(i * 5 + j) % args.keys] for j in range(5)]
            sock.sendall(data_frame(keys, args.count))
            read_inits(sock, len(keys))
            sock.close()
        time.sleep(6.0)


def server_log(server: OurServer) -> dict[str, Any]:
    """What the hub logged: its gc pauses, and how many clients it closed and cut off."""
    text = (server.tmp / "server.log").read_text(errors="replace")
    found = GC_LINE.findall(text)
    return {
        "gc_pauses": found[-1].strip() if found else "not logged",
        "logged_too_slow": text.count("too slow"),
        "logged_cut_off": text.count("connection aborted"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = symbol_names(max(args.keys, args.stalled_keys), "HIS")
    env = {
        "BENCH_HISTORY_SYMBOLS": str(len(names)),
        "HISTORY_TIMEOUT": "120",
    }
    if args.server_root is not None:
        from tests import harness

        harness.ROOT = args.server_root.resolve()  # populate.py and server.py of that checkout
    server = OurServer("history", **env)
    server.env["LOG_LEVEL"] = "INFO"  # the hub logs its gc pauses at shutdown
    with server:
        time.sleep(2.0)
        fresh = rss(server.pid)
        log(f"fresh server: {fresh / MIB:.1f} MiB")
        warm_client = open_raw(server.ws_url)
        warm_client.sendall(data_frame(names, args.count))
        read_inits(warm_client, len(names))
        warm_client.close()
        time.sleep(1.0)
        wait_idle(server.pid)
        warm = rss(server.pid)
        log(f"warm cache, no client: {warm / MIB:.1f} MiB")
        figures = burst(server, args, names)
        time.sleep(0.5)
        after_leave = rss(server.pid)
        time.sleep(4.5)
        after_5s = rss(server.pid)
        churn(server, args, names)
        after_churn = rss(server.pid)
        server.stop()
        logged = server_log(server)
    return {
        "fresh_mib": round(fresh / MIB, 1),
        "warm_mib": round(warm / MIB, 1),
        "peak_mib": round(figures["peak"] / MIB, 1),
        "loaded_mib": round(figures["loaded"] / MIB, 1),
        "after_leave_mib": round(after_leave / MIB, 1),
        "after_5s_mib": round(after_5s / MIB, 1),
        "after_churn_mib": round(after_churn / MIB, 1),
        "kicked": figures["kicked"],
        "stalled_closed_after_s": figures["stalled_closed_after_s"],
        "burst_seconds": figures["burst_seconds"],
        "reader_mib": figures["reader_mib"],
        **logged,
    }


def main() -> None:
    args = parse_args()
    result = run(args)
    root = str(args.server_root or Path(__file__).resolve().parent.parent)
    rows = [
        {"phase": "fresh server (reference)", "mib": result["fresh_mib"]},
        {"phase": "warm cache, no client", "mib": result["warm_mib"]},
        {"phase": "peak during the burst", "mib": result["peak_mib"]},
        {"phase": "burst answered (hub idle)", "mib": result["loaded_mib"]},
        {"phase": "0.5 s after all left", "mib": result["after_leave_mib"]},
        {"phase": "5 s after all left", "mib": result["after_5s_mib"]},
        {"phase": f"after {args.churn} rounds of churn", "mib": result["after_churn_mib"]},
    ]
    print(f"\nhub RSS, server {root}")
    print(
        f"{args.readers} readers x {args.keys} x {args.count} bars, "
        f"{args.stalled} never-reading x {args.stalled_keys} x {args.count} bars"
    )
    print(table([("phase", "phase", ""), ("RSS MiB", "mib", ".1f")], rows))
    print(
        f"closed as too slow (metrics): {result['kicked']} of {args.stalled} never reading"
        + (
            f", {result['stalled_closed_after_s']} s after their request; "
            if result["stalled_closed_after_s"] is not None
            else " within 25 s; "
        )
        + f"readers received {result['reader_mib']} MiB in {result['burst_seconds']} s"
    )
    print(
        f"hub log: {result['logged_too_slow']} closed as too slow, "
        f"{result['logged_cut_off']} cut off after the close grace"
    )
    print(f"gc pauses: {result['gc_pauses']}")
    emit("memory", {"server_root": root, "args": vars(args) | {"server_root": root}, **result})
    log(f"machine: {machine()}")


if __name__ == "__main__":
    main()
