"""Soak: the real server under a long mixed churn; prints what grows.

    python bench/soak.py [--minutes 30] [--procs 3] [--users 8] [--quiet 120] [--sample 30]

Starts ``populate.py`` and ``server.py`` (through ``tests/harness.py``) with the CSV
provider replaying fast and the counting test provider, ``AUTH=jwt`` (every session a new
token subject, as the users of a long-running server come and go), a loopback fake
OpenAI-compatible chat endpoint and a loopback push service / webhook sink
(``tests/fakes``). ``--procs`` client processes each run ``--users`` looping users, each
session one of: charts (several keys and intervals, history paged back, indicators live and
not, unsubscribes), scans (stopped or run out), alerts (webhook, push, listed, deleted or
left to expire), chat turns, OpenBB live-grid sockets, REST/UDF polling, a client that stops
reading for a while then resumes, and (every minute or so) a reconnect storm; a third of the
sessions end with a TCP reset instead of a close frame.

Every ``--sample`` seconds: the hub's and each provider process's RSS, open descriptors and
threads, every gauge and counter of ``/metrics`` (clients, subscriptions, cached bars,
outboxes, live indicators, rate-limited clients, chat conversations and budgets), the SQLite
size, the log size; and, when the server under test has one (a local patch: there is none in
the repository), the JSON of ``GET /debug/soak`` (container sizes, task counts). After the churn and
``--quiet`` seconds with no client: the same, then a fresh client is served. Prints a table
of the first, middle and last samples (growth per gauge), then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
import psutil

# Measured as users start it, ``python server.py``, not forked by the test launcher.
os.environ["CANDLEWIRE_TEST_EXEC"] = "1"

SECRET = "soak-secret-that-is-long-enough-for-hs256"
GAUGE = re.compile(r"^(candlewire_\w+)(\{[^}]*\})? (\S+)$", re.M)
ERRORS: dict[str, int] = {}
COUNTING = ["AAA", "BBB", "CCC"]
INTERVALS = ["1m", "5m", "15m", "1h"]


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 4 * 3600}, SECRET, "HS256")


def http_get(url: str, tok: str | None = None, timeout: float = 20) -> bytes:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


# ---------------------------------------------------------------------------- the users


def series(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.3:
        return {"source": "csv", "name": rng.choice(["BTCUSD", "ACME"]), "interval": "1m"}
    return {"source": "counting", "name": rng.choice(COUNTING), "interval": rng.choice(INTERVALS)}


def indicator(ser: dict[str, str], chart_id: str, period: int, stream: bool) -> dict[str, Any]:
    col = f"{ser['source']}-{ser['name']}-{ser['interval']}-close"
    return {
        "type": "indicator",
        "id": chart_id,
        "indicator": {"id": "talib.momentum.RSI"},
        "inputs": {"timeperiod": period},
        "dataMap": {"close": {**ser, "value": col, "dataKey": "close"}},
        "count": 300,
        "stream": stream,
    }


def close_rule(ser: dict[str, str], comparator: str, value: float) -> dict[str, str]:
    return {
        "type1": "data",
        "source1": ser["source"],
        "name1": ser["name"],
        "interval1": ser["interval"],
        "key1": "close",
        "comparator": comparator,
        "type2": "value",
        "value2": str(value),
    }


class Session:
    """One WebSocket of a user: reads everything in the background, keeps counts."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, sub: str) -> Session:
        from websockets.asyncio.client import connect

        ws = await connect(f"{url}?token={token(sub)}", max_size=None, open_timeout=30)
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                message = json.loads(raw)
                if message.get("type") == "error":
                    what = (message.get("request") or {}).get("type", "?")
                    code = f"error:{what}:{message.get('code')}"
                    ERRORS[code] = ERRORS.get(code, 0) + 1
                if len(self.messages) < 5000:
                    self.messages.append(message)

    async def send(self, *requests: Any) -> None:
        await self.ws.send(json.dumps(list(requests)))

    async def wait(self, kind: str, timeout: float = 30, pred: Any = None) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for m in self.messages[seen:]:
                if m.get("type") == kind and (pred is None or pred(m)):
                    return m
            seen = len(self.messages)
            if self.reader.done():
                return None
            await asyncio.sleep(0.05)
        return None

    async def end(self, rng: random.Random) -> str:
        if rng.random() < 0.35:
            transport = self.ws.transport
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            how = "reset"
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)
            how = "close"
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader
        return how


async def charts(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    s = await Session.open(cfg["ws"], sub)
    keys = [series(rng) for _ in range(rng.randint(2, 5))]
    await s.send(*({"type": "data", **k, "count": rng.choice([100, 300, 1000])} for k in keys))
    for k in keys:
        await s.wait("data_init", pred=lambda m, k=k: m.get("name") == k["name"])
    for k in keys[:2]:
        end = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        for _ in range(rng.randint(1, 4)):
            await s.send({"type": "data_history", **k, "end": end, "count": 300})
            reply = await s.wait(
                "data_history",
                pred=lambda m, k=k, end=end: m.get("name") == k["name"] and m.get("end", end),
            )
            if not reply or not reply.get("data"):
                break
            end = reply["data"][0]["date"]
            s.messages.clear()
    n = 0
    for k in keys[:3]:
        n += 1
        await s.send(indicator(k, f"rsi-{n}", rng.choice([7, 14, 21]), rng.random() < 0.7))
    await asyncio.sleep(rng.uniform(3, 15))
    if rng.random() < 0.5:
        k = keys[0]
        await s.send({"type": "unsubscribe", **k})
        await s.send(indicator(rng.choice(keys), f"rsi-x{n}", 9, True))
        await asyncio.sleep(rng.uniform(1, 5))
    if rng.random() < 0.3:
        await s.send(*({"type": "unsubscribe", **k} for k in keys))
        await asyncio.sleep(1)
    await s.end(rng)


async def scans(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    s = await Session.open(cfg["ws"], sub)
    template = {"source": "counting", "name": "AAA", "interval": rng.choice(["1h", "15m"])}
    for _ in range(rng.randint(1, 3)):
        rules = [close_rule(template, ">", rng.choice([0, 50, 100]))]
        await s.send(
            {
                "type": "scan",
                "search": rng.choice(["aaa", "bbb", "ccc", "btc", "acme", "macro"]),
                "rules": rules,
                "operators": [],
                "indicators": {},
                "dataProviderConfig": {"data": [template]},
            }
        )
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0, 0.3))
            await s.send({"type": "scan_stop"})
        await s.wait("scan_done", 30)
        s.messages.clear()
    await s.end(rng)


async def alerts(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    s = await Session.open(cfg["ws"], sub)
    ser = series(rng)
    request: dict[str, Any] = {
        "type": "alert",
        "message": f"soak {sub}",
        "rules": [close_rule(ser, rng.choice([">", "<"]), rng.choice([0, 100, 1e9]))],
        "operators": [],
        "indicators": {},
        "subscription": None,
        "webhook": f"{cfg['sink']}/hook/{sub}",
    }
    if rng.random() < 0.3:
        request["subscription"] = cfg["push_sub"]
    await s.send(request)
    made = await s.wait("alert_created", 20)
    await asyncio.sleep(rng.uniform(1, 8))
    if made is not None:
        owner = made.get("owner")
        ident = {"owner": owner} if owner else {"endpoint": cfg["push_sub"]["endpoint"]}
        await s.send({"type": "alerts", **ident})
        await s.wait("alerts", 10)
        if rng.random() < 0.7:
            await s.send({"type": "alert_delete", "id": made["id"], **ident})
            await s.wait("alert_deleted", 10)
    await s.end(rng)


async def chat(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    s = await Session.open(cfg["ws"], sub)
    conv = f"c{rng.randrange(10**9)}"
    await s.send({"type": "prompt", "conversation_id": conv, "prompt": "How is BTC? " * 20})
    if rng.random() < 0.2:
        await asyncio.sleep(0.1)
        await s.end(rng)  # gone mid-answer
        return
    await s.wait("prompt_response", 30, lambda m: m.get("done") is True)
    for _ in range(rng.randint(0, 2)):
        s.messages.clear()
        await s.send({"type": "prompt_reply", "conversation_id": conv, "prompt": "And now?"})
        await s.wait("prompt_response", 30, lambda m: m.get("done") is True)
    await s.end(rng)


async def grid(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    from websockets.asyncio.client import connect

    url = cfg["ws"].replace("/websocket/", "/openbb/live_grid_ws")
    ws = await connect(f"{url}?token={token(sub)}", open_timeout=30)
    s = Session(ws)
    for _ in range(rng.randint(1, 3)):
        names = rng.sample([*COUNTING, "BTCUSD", "ACME"], rng.randint(1, 4))
        await ws.send(json.dumps({"params": {"symbol": ",".join(names)}}))
        await asyncio.sleep(rng.uniform(1, 6))
    await s.end(rng)


async def polling(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    tok = token(sub)
    base = cfg["http"]
    now = int(time.time())
    paths = [
        f"/udf/history?symbol=counting:AAA&resolution=1&from={now - 7200}&to={now}",
        f"/udf/history?symbol=csv:BTCUSD&resolution=1&from={now - 3600}&to={now}",
        "/udf/search?query=a&limit=10",
        "/udf/symbols?symbol=counting:BBB",
        "/udf/time",
        "/api/history?source=counting&name=CCC&interval=5m&count=200",
        "/api/symbols?q=b",
        "/openbb/live_grid?symbol=AAA,BBB,BTCUSD",
        "/health",
    ]
    loop = asyncio.get_running_loop()
    for _ in range(rng.randint(3, 10)):
        path = rng.choice(paths)
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, http_get, base + path, tok)
        await asyncio.sleep(rng.uniform(0.1, 1))


async def stalled(cfg: dict[str, Any], rng: random.Random, sub: str) -> None:
    """A raw socket with a small receive buffer: asks much, stops reading, then resumes."""
    host, port = cfg["http"].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    writer.write(
        f"GET /websocket/?token={token(sub)} HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    reqs = [{"type": "data", **series(rng), "count": 5000} for _ in range(8)]
    payload = json.dumps(reqs).encode()
    n = len(payload)
    head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big") if n < 65536 else b""
    writer.write(head + b"\0\0\0\0" + payload)
    await writer.drain()
    await asyncio.sleep(rng.uniform(5, 25))  # not reading
    deadline = time.monotonic() + rng.uniform(2, 8)
    with contextlib.suppress(Exception):
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(1 << 16), 5)
            if not chunk:
                break
    if rng.random() < 0.5:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


SCENARIOS = [
    (charts, 5),
    (scans, 2),
    (alerts, 2),
    (chat, 2),
    (grid, 2),
    (polling, 2),
    (stalled, 1),
]


async def storm(cfg: dict[str, Any], rng: random.Random, tag: str) -> None:
    """Many sockets at once subscribe, then all drop (half reset), and come back."""
    for round_ in range(2):
        sessions = []
        for i in range(30):
            with contextlib.suppress(Exception):
                sessions.append(await Session.open(cfg["ws"], f"{tag}-storm{round_}-{i}"))
        for s in sessions:
            with contextlib.suppress(Exception):
                await s.send(*({"type": "data", **series(rng), "count": 300} for _ in range(3)))
        await asyncio.sleep(2)
        for s in sessions:
            with contextlib.suppress(Exception):
                await s.end(rng)


async def user(cfg: dict[str, Any], worker: int, number: int, counts: dict[str, int]) -> None:
    rng = random.Random(worker * 1000 + number)
    weighted = [f for f, w in SCENARIOS for _ in range(w)]
    session = 0
    while time.time() < cfg["until"]:
        session += 1
        sub = f"w{worker}u{number}s{session}"
        scenario = rng.choice(weighted)
        try:
            await asyncio.wait_for(scenario(cfg, rng, sub), 120)
            counts[scenario.__name__] = counts.get(scenario.__name__, 0) + 1
        except Exception as exc:
            key = f"fail:{scenario.__name__}:{type(exc).__name__}"
            counts[key] = counts.get(key, 0) + 1
            await asyncio.sleep(1)
        await asyncio.sleep(rng.uniform(0, 2))


async def worker_main(cfg: dict[str, Any], worker: int, out: Any) -> None:
    counts: dict[str, int] = {}
    tasks = [asyncio.create_task(user(cfg, worker, n, counts)) for n in range(cfg["users"])]
    rng = random.Random(worker)
    storms = 0
    while time.time() < cfg["until"]:
        await asyncio.sleep(rng.uniform(50, 90))
        if time.time() < cfg["until"]:
            storms += 1
            with contextlib.suppress(Exception):
                await storm(cfg, rng, f"w{worker}n{storms}")
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["storms"] = storms
    counts.update(ERRORS)
    out.put((worker, counts))


def run_worker(cfg: dict[str, Any], worker: int, out: Any) -> None:
    asyncio.run(worker_main(cfg, worker, out))


# ---------------------------------------------------------------------------- sampling


def sample(server: Any, tmp: Path, started: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(time.monotonic() - started)}
    hub = psutil.Process(server.proc.pid)
    procs = {"hub": hub}
    for child in hub.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            procs[f"p{child.pid}:{' '.join(child.cmdline()[-1:])[-20:]}"] = child
    for name, p in procs.items():
        with contextlib.suppress(psutil.Error):
            row[f"{name}.rss_mib"] = round(p.memory_info().rss / 2**20, 1)
            row[f"{name}.fds"] = p.num_fds()
            row[f"{name}.threads"] = p.num_threads()
    try:
        text = http_get(server.url + "/metrics", token("sampler"), 30).decode()
        for name, labels, value in GAUGE.findall(text):
            row[name + (labels or "")] = float(value)
    except Exception as exc:
        row["metrics_error"] = repr(exc)
    with contextlib.suppress(Exception):  # a temporary debug view, when the server has one
        view = json.loads(http_get(server.url + "/debug/soak?tasks=1", token("sampler"), 30))
        row.update({f"dbg:{k}": v for k, v in view.items()})
    row["db_mib"] = round(sum(f.stat().st_size for f in tmp.glob("candlewire.sqlite3*")) / 2**20, 2)
    row["log_kib"] = round(sum(f.stat().st_size for f in tmp.glob("*.log")) / 1024, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--quiet", type=float, default=120)
    parser.add_argument("--sample", type=float, default=30)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of every sample")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()

    from tests.fakes.openai_chat import FakeChat
    from tests.fakes.webpush import FakePush
    from tests.harness import ROOT, ServerProcess, base_env, populate

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    out_path = args.out or tmp / "samples.jsonl"
    print(f"soak directory {tmp}", flush=True)
    with FakeChat(["Bitcoin ", "looks ", "fine."] * 5, delay=0.05) as fake, FakePush() as push:
        env = base_env(
            tmp,
            PROVIDERS="csv,counting",
            CSV_FOLDER_PATH=str(ROOT / "data"),
            CSV_REPLAY_SPEED="300",
            CANDLEWIRE_TEST_PERIOD="0.1",
            CANDLEWIRE_TEST_LOG="",
            AUTH="jwt",
            JWT_SECRET=SECRET,
            LLM_BASE_URL=fake.base_url,
            LLM_API_KEY="test-key",
            LLM_MODEL="fake-model",
            ALERT_CLIENT_WEBHOOKS="true",
            ALERT_WEBHOOK_URL=f"{push.url}/hook/all",
            ALERT_EXPIRE_MINUTES="3",
            ALERT_RETRY_SECONDS="0.2",
            MAX_ALERTS_PER_DAY="1000",
        )
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        assert populate(env).returncode == 0
        server = ServerProcess(env, tmp / "server.log")

        class Keyed(type(server)):  # type: ignore[misc]
            def get(self, path: str) -> Any:
                body = http_get(self.url + path, token("harness"))
                return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

        server.__class__ = Keyed
        with server:
            started = time.monotonic()
            samples = [sample(server, tmp, started)]
            cfg = {
                "ws": server.ws_url,
                "http": server.url,
                "sink": push.url,
                "push_sub": push.subscription("soak"),
                "users": args.users,
                "until": time.time() + args.minutes * 60,
            }
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            workers = [
                ctx.Process(target=run_worker, args=(cfg, i, queue)) for i in range(args.procs)
            ]
            for w in workers:
                w.start()
            with open(out_path, "w") as out:
                out.write(json.dumps(samples[0]) + "\n")
                while any(w.is_alive() for w in workers):
                    time.sleep(args.sample)
                    samples.append(sample(server, tmp, started))
                    out.write(json.dumps(samples[-1]) + "\n")
                    out.flush()
                    brief = {
                        k: v
                        for k, v in samples[-1].items()
                        if "hub." in k
                        or k
                        in (
                            "t",
                            "candlewire_clients",
                            "candlewire_subscriptions",
                            "db_mib",
                            "log_kib",
                        )
                    }
                    print(json.dumps(brief), flush=True)
                counts: dict[str, int] = {}
                while not queue.empty():
                    for k, v in queue.get()[1].items():
                        counts[k] = counts.get(k, 0) + v
                for w in workers:
                    w.join()
                print("sessions:", json.dumps(counts, sort_keys=True), flush=True)
                quiet_end = time.monotonic() + args.quiet
                while time.monotonic() < quiet_end:
                    time.sleep(min(args.sample, max(0.0, quiet_end - time.monotonic())))
                    samples.append(sample(server, tmp, started))
                    out.write(json.dumps({**samples[-1], "quiet": True}) + "\n")
                    out.flush()
            fresh = asyncio.run(fresh_client(server.ws_url))
            print("fresh client:", fresh, flush=True)
            report(samples)
    print(f"samples in {out_path}; server log {tmp / 'server.log'}")


async def fresh_client(url: str) -> str:
    s = await Session.open(url, "fresh")
    await s.send({"type": "data", "source": "counting", "name": "AAA", "interval": "1m"})
    init = await s.wait("data_init", 20)
    update = await s.wait("data_update", 20)
    await s.send({"type": "ping"})
    pong = await s.wait("pong", 10)
    await s.end(random.Random(1))
    ok = init is not None and len(init.get("data", [])) > 0 and update and pong
    return "served normally" if ok else f"NOT served: {init} {update} {pong}"


def report(samples: list[dict[str, Any]]) -> None:
    first, mid, last = samples[0], samples[len(samples) // 2], samples[-1]
    busy_last = samples[-2] if len(samples) > 2 else last
    names = sorted(
        {k for s in samples for k in s if k != "t" and isinstance(s.get(k), float | int)}
    )
    print(f"\n{'figure':70s} {'start':>10s} {'middle':>10s} {'end churn':>10s} {'quiet':>10s}")
    for name in names:
        vals = [s.get(name) for s in (first, mid, busy_last, last)]
        print(f"{name[:70]:70s} " + " ".join(f"{v if v is not None else '-':>10}" for v in vals))
    print(json.dumps({"soak": {"samples": len(samples), "last": last}}))


if __name__ == "__main__":
    main()
