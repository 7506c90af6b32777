"""Charts as a Tradiny front end keeps them, against the fake Binance's truth, end to end.

Three clients drive the real server (a real Binance provider process) with seeded random
requests: subscribe, unsubscribe, flip between 1m, 3m and 5m, page back with
``data_history``, reconnect. Meanwhile the exchange's clock runs with the wall clock, a 1m
bar closes, the exchange drops its sockets and the provider process is killed (``kill -9``)
about when the bar closes. Each client applies what it receives the way ``dataprovider.js``
does (research/protocols.md 1.6): ``data_init`` replaces the chart, ``data_update`` updates
the row of its date among the last 33 or else appends, ``data_history`` merges older bars in.

Then the exchange's clock stops and, once the updates settle, every chart must hold exactly
the exchange's klines: dates unique and without a gap, every bar's OHLCV equal, the newest
bar the exchange's forming one; so must a new client's ``data_init`` of every key charted
and a page of history before it (what the cache and the store kept through the faults).
``CANDLEWIRE_TEST_SEED`` picks other scenarios.
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.binance import FakeBinance
from tests.harness import ServerProcess, WsClient, base_env, populate, seconds

SEED = int(os.environ.get("CANDLEWIRE_TEST_SEED", "1"))
NAMES = ("BTCUSDT", "ETHUSDT", "ETHBTC")
STEP = {"1m": 60, "3m": 180, "5m": 300}
FIELDS = ("open", "high", "low", "close", "volume")
Key = tuple[str, str]


def date_of(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def seconds_of(date: str) -> int:
    return calendar.timegm(time.strptime(date, "%Y-%m-%d %H:%M:%S"))


def request(kind: str, key: Key, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "source": "binance", "name": key[0], "interval": key[1], **extra}


@dataclass
class Chart:
    """One series of a chart: its rows as the front end holds them."""

    reply: int  # which data_init of the key on this connection is this chart's
    rows: list[dict[str, Any]] = field(default_factory=list)
    ready: bool = False
    paging: int = 0  # data_history requests unanswered


class Page:
    """A client and its charts, kept from every message read so far."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.charts: dict[Key, Chart] = {}
        self.asked: dict[Key, int] = {}  # data requests sent, per key
        self.read = 0
        self.inits: dict[Key, int] = {}

    async def show(self, key: Key, count: int | None, stream: bool = True) -> None:
        self.asked[key] = self.asked.get(key, 0) + 1
        self.charts[key] = Chart(self.asked[key])
        extra = {"stream": stream} | ({} if count is None else {"count": count})
        await self.client.send(request("data", key, **extra))

    async def hide(self, key: Key) -> None:
        del self.charts[key]
        await self.client.send(request("unsubscribe", key))

    async def page_back(self, key: Key, count: int) -> None:
        chart = self.charts[key]
        chart.paging += 1
        await self.client.send(request("data_history", key, end=chart.rows[0]["date"], count=count))

    def apply(self) -> None:
        for message in self.client.messages[self.read :]:
            key = (message.get("name"), message.get("interval"))
            chart = self.charts.get(key)  # type: ignore[arg-type]
            kind = message.get("type")
            if kind == "data_init":
                self.inits[key] = self.inits.get(key, 0) + 1  # type: ignore[index]
                if chart is not None and chart.reply == self.inits[key]:  # type: ignore[index]
                    chart.rows, chart.ready = list(message["data"]), True
            elif kind == "data_update" and chart is not None and chart.ready:
                bar = message["data"]
                row = next((r for r in chart.rows[-33:] if r["date"] == bar["date"]), None)
                if row is None:
                    chart.rows.append(dict(bar))
                else:
                    row.update(bar)
            elif kind == "data_history" and chart is not None and chart.paging:
                chart.paging -= 1
                merged = {r["date"]: r for r in chart.rows}
                merged.update({b["date"]: merged.get(b["date"], {}) | b for b in message["data"]})
                chart.rows = [merged[d] for d in sorted(merged)]
        self.read = len(self.client.messages)


def divergences(exchange: FakeBinance, pages: list[Page]) -> list[str]:
    """How each chart differs from the exchange's klines (nothing once they agree)."""
    found = []
    for n, page in enumerate(pages):
        page.apply()
        for (name, interval), chart in page.charts.items():
            where = f"client {n} {name} {interval}"
            if not chart.ready or chart.paging or not chart.rows:
                found.append(f"{where}: waiting for a reply")
                continue
            dates = [seconds_of(r["date"]) for r in chart.rows]
            steps = {b - a for a, b in itertools.pairwise(dates)}
            if steps - {STEP[interval]}:
                found.append(f"{where}: dates go by {sorted(steps)} s, not {STEP[interval]} s")
            forming = exchange.now_ms() // 1000 // STEP[interval] * STEP[interval]
            if dates[-1] != forming:
                found.append(f"{where}: newest {date_of(dates[-1])}, not {date_of(forming)}")
            truth = klines(exchange, name, interval, min(dates), max(dates))
            wrong = [r for r in chart.rows if {k: v for k, v in r.items() if k != "date"}
                     != truth.get(r["date"])]  # fmt: skip
            if wrong:
                found.append(f"{where}: {len(wrong)} bars differ, first {wrong[0]}")
    return found


def klines(
    exchange: FakeBinance, name: str, interval: str, first: int, last: int
) -> dict[str, dict[str, float]]:
    """The exchange's bars from ``first`` to ``last`` (UTC seconds) by date, as on the wire."""
    base, bars = f"binance-{name}-{interval}", {}
    while first <= last:
        rows = exchange.klines(name, interval, first * 1000, last * 1000, limit=1000)
        for row in rows:
            values = zip(FIELDS, row[1:6], strict=True)
            bars[date_of(row[0] // 1000)] = {f"{base}-{f}": float(v) for f, v in values}
        first = rows[-1][0] // 1000 + STEP[interval] if rows else last + 1
    return bars


async def settled(exchange: FakeBinance, pages: list[Page], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds(timeout)
    while True:
        found = divergences(exchange, pages)
        if not found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_every_chart_holds_the_exchange_klines_through_faults(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    with FakeBinance(now_ms=int(time.time() * 1000), push_interval=0.2) as exchange:
        exchange.set_time(int(time.time() * 1000), frozen=False)  # it runs with the wall clock
        env = base_env(
            tmp_path,
            **exchange.settings,
            HISTORY_TIMEOUT="6",
            STREAM_LINGER_SECONDS="0.3",
        )
        assert populate(env).returncode == 0
        with ServerProcess(env, tmp_path / "server.log") as server:
            pages = [Page(await WsClient.open(server.ws_url)) for _ in range(3)]
            try:
                await drive(rnd, exchange, server, pages)
                exchange.set_time(int(time.time() * 1000))  # frozen: the bars stop moving
                assert await settled(exchange, pages) == [], f"seed {SEED}"
                shown = {key for page in pages for key in page.charts}
                fresh = Page(await WsClient.open(server.ws_url))
                pages.append(fresh)
                for key in sorted(shown):
                    await fresh.show(key, rnd.randint(20, 400), stream=False)
                assert await settled(exchange, [fresh]) == [], f"seed {SEED}"
                for key in sorted(shown):
                    await fresh.page_back(key, rnd.randint(50, 500))
                assert await settled(exchange, [fresh]) == [], f"seed {SEED}"
            finally:
                for page in pages:
                    await page.client.close()
        assert exchange.errors == []


async def drive(
    rnd: random.Random, exchange: FakeBinance, server: ServerProcess, pages: list[Page]
) -> None:
    """Random requests until 3 s after the next 1m bar closed, when it closes within 48 s
    (else for 20 s): the provider is killed just before it closes, and the exchange drops
    its sockets at a random moment."""
    now = time.time()
    turn = (int(now) // 60 + 1) * 60  # the next minute's turn at least 12 s on
    turn += 60 if turn - now < 12 else 0
    end = turn + 3 if turn + 3 - now <= 48 else now + 20
    kill = turn - rnd.uniform(1.2, 3) if end > turn else rnd.uniform(now, end)
    faults = sorted([(kill, "kill"), (rnd.uniform(now, end), "drop")])
    while (now := time.time()) < end:
        if faults and faults[0][0] <= now:
            if faults.pop(0)[1] == "kill":
                os.kill(server.get("/health")["providers"]["binance"]["pid"], signal.SIGKILL)
            else:
                exchange.drop_connections()
        page = rnd.choice(pages)
        page.apply()
        shown = list(page.charts)
        pick = rnd.random()
        if pick < 0.3 or not shown:
            key = (rnd.choice(NAMES), rnd.choice(list(STEP)))
            if key not in page.charts:
                await page.show(key, rnd.choice([None, 2, rnd.randint(5, 150)]))
        elif pick < 0.4:
            await page.hide(rnd.choice(shown))
        elif pick < 0.6:
            name, interval = rnd.choice(shown)
            other = (name, rnd.choice([i for i in STEP if i != interval]))
            if other not in page.charts:
                await page.hide((name, interval))
                await page.show(other, rnd.randint(5, 100))
        elif pick < 0.85:
            key = rnd.choice(shown)
            chart = page.charts[key]
            if chart.ready and chart.rows and not chart.paging:
                await page.page_back(key, rnd.randint(1, 80))
        else:  # reconnect: the front end sends its charts again, without a count
            await page.client.close()
            page.client = await WsClient.open(server.ws_url)
            page.read, page.asked, page.inits = 0, {}, {}
            for key in list(page.charts):
                await page.show(key, None)
        await asyncio.sleep(rnd.choice([0.05, 0.3, 1.0]))
