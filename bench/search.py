"""Benchmark of the symbol database: populate throughput and search latency.

    python bench/search.py [--rows 1500000] [--queries 300] [--replace]

Fills a temporary database with synthetic symbols through
:func:`backend.symbols.writer.replace_provider_rows` (a realistic mix: US stock tickers such as AAPL
and BRK.B, index, forex and crypto pairs such as X:BTCUSD, and a long tail of option
tickers such as O:SPY251219C00450000, with company names built from word lists), then
times :meth:`backend.symbols.index.SymbolIndex.search` for exact symbols, symbol prefixes and
name words. Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import resource
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.symbols.index import SymbolIndex
from backend.symbols.writer import replace_provider_rows

SEED = 20251219


def _split(text: str) -> list[str]:
    return text.split()


WORDS = _split("""
apple micro soft global capital holdings energy bank trust systems technologies pharma
therapeutics industries international resources partners financial realty income growth
value select sector bitcoin solar green blue north south east west american national
united first general digital data cloud health medical bio gold silver oil gas mining
power electric motors auto airlines foods beverage retail stores brands media network
communications semiconductor devices software security insurance life mutual acquisition
dividend small mid large cap emerging markets china japan europe pacific atlantic river
mountain valley ocean star sun moon rock stone iron steel copper lithium nickel water wind
alpha beta delta omega summit pioneer liberty frontier harbor eagle falcon phoenix titan
atlas orion nova quantum vector fusion dynamic precision advanced integrated strategic
""")
SUFFIXES = ["Inc", "Corp", "Ltd", "Plc", "ETF", "Trust", "Holdings", "Group", "Co", "Fund"]
EXCHANGES = ["XNAS", "XNYS", "ARCX", "BATS", "XASE"]
REAL = [
    ("A", "Agilent Technologies Inc"),
    ("AAPL", "Apple Inc"),
    ("MSFT", "Microsoft Corp"),
    ("BRK.A", "Berkshire Hathaway Inc Class A"),
    ("BRK.B", "Berkshire Hathaway Inc Class B"),
    ("SPY", "SPDR S&P 500 ETF Trust"),
    ("QQQ", "Invesco QQQ Trust"),
    ("TSLA", "Tesla Inc"),
    ("NVDA", "NVIDIA Corp"),
    ("AMZN", "Amazon.com Inc"),
]
CURRENCIES = _split(
    "USD EUR JPY GBP CHF CAD AUD NZD SEK NOK DKK PLN HUF CZK TRY ZAR MXN BRL CNH HKD"
)
QUOTES = ["USD", "USDT", "EUR", "BTC"]
MONTHS = _split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec")
CANDLE = [{"name": n, "y_axis": "price"} for n in ("open", "high", "low", "close")] + [
    {"name": "volume", "y_axis": "volume"}
]
INTERVALS = ["1m", "5m", "15m", "1h", "4h", "1d", "1w"]


def dataset_row(name: str, label: str, category: str, exchange: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": "polygon",
        "name": name,
        "name_label": label,
        "type": "candlestick",
        "categories": [category],
        "intervals": INTERVALS,
        "outputs": CANDLE,
    }
    if exchange:
        row["source_label"] = exchange
    return row


class Universe:
    """The synthetic symbols: stocks, indices, forex, crypto, then options up to ``rows``."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.random = random.Random(SEED)
        self.stocks = self._tickers(max(rows // 50, 2000))
        self.labels = {ticker: self._company() for ticker in self.stocks}
        self.labels.update(REAL)

    def _tickers(self, count: int) -> list[str]:
        short = [
            "".join(p)
            for k in (1, 2, 3)
            for p in itertools.product(string.ascii_uppercase, repeat=k)
        ]
        self.random.shuffle(short)
        tickers = [t for t, _ in REAL] + [t for t in short if t not in dict(REAL)]
        seen = set(tickers)
        while len(tickers) < count:
            ticker = "".join(
                self.random.choices(string.ascii_uppercase, k=self.random.choice((4, 5)))
            )
            if ticker not in seen:
                seen.add(ticker)
                tickers.append(ticker)
        return tickers[:count]

    def _company(self) -> str:
        words = self.random.sample(WORDS, self.random.randint(1, 3))
        return " ".join(w.title() for w in words) + " " + self.random.choice(SUFFIXES)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = itertools.chain(self._equities(), self._pairs(), self._options())
        return itertools.islice(rows, self.rows)

    def _equities(self) -> Iterator[dict[str, Any]]:
        for n, ticker in enumerate(self.stocks):
            yield dataset_row(ticker, self.labels[ticker], "Stocks", EXCHANGES[n % 5])
        for ticker in self.stocks[: len(self.stocks) // 20]:
            yield dataset_row(f"I:{ticker}X", f"{self.labels[ticker]} Index", "Indices", None)

    def _pairs(self) -> Iterator[dict[str, Any]]:
        for base, quote in itertools.permutations(CURRENCIES, 2):
            yield dataset_row(f"C:{base}{quote}", f"{base} - {quote}", "Fx", None)
        yield dataset_row("X:BTCUSD", "Bitcoin - United States Dollar", "Crypto", None)
        for ticker in self.stocks[: len(self.stocks) // 2]:
            for quote in QUOTES[: 1 + len(ticker) % 4] if ticker != "BTC" else ():
                label = f"{ticker.title()} Coin - {quote}"
                yield dataset_row(f"X:{ticker}{quote}", label, "Crypto", None)

    def _options(self) -> Iterator[dict[str, Any]]:
        expiries = [
            (f"{y:02d}{m:02d}{d:02d}", f"{MONTHS[m - 1]} {d} 20{y}")
            for y in (25, 26, 27)
            for m in range(1, 13)
            for d in (3, 10, 17, 24)
        ]  # 144 expiries x 100 strikes x call/put: up to 28,800 contracts per underlying
        categories = ["Options"]
        for rank, under in enumerate(t for t in self.stocks if "." not in t):
            strikes = _strikes(rank)
            for n in range(max(60, 12_000 // (1 + rank // 4))):
                expiry, date = expiries[n // 200 % 144]
                strike, price = strikes[n // 2 % 100]
                cp, kind = ("P", "Put") if n % 2 else ("C", "Call")
                yield {
                    "source": "polygon",
                    "name": f"O:{under}{expiry}{cp}{strike}",
                    "name_label": f"{under} {date} {price} {kind}",
                    "type": "candlestick",
                    "categories": categories,
                    "intervals": INTERVALS,
                    "outputs": CANDLE,
                    "source_label": "OPRA",
                }


def _strikes(rank: int) -> list[tuple[str, str]]:
    """100 strikes of an underlying, from about half its price up: (OCC code, label)."""
    base = 10 + random.Random(rank).randint(0, 990)
    step = 0.5 if base < 100 else 5
    prices = [base // 2 + n * step for n in range(100)]
    return [(f"{round(p * 1000):08d}", f"{p:g}") for p in prices]


def queries(names: list[str], count: int) -> dict[str, list[str]]:
    """Exact symbols, symbol prefixes and name words, ``count`` of each.

    ``names`` is a sample of the generated symbols (mostly options, as in the data).
    """
    pick = random.Random(SEED + 1)
    exact = ["A", "a", "AAPL", "brk.b", "BRK.B", "SPY", "X:BTCUSD", "C:EURUSD"]
    exact += [name if n % 3 else name.lower() for n, name in enumerate(names)]
    prefixes = ["A", "AA", "BRK", "X:BT", "O:SPY25", "C:EU", "I:"]
    prefixes += [name[: pick.randint(1, max(1, len(name) - 1))] for name in names]
    words = ["apple", "appl", "inc", "crypto", "xnas", "call", "spy call", "gold mining"]
    words += [_word_query(pick) for _ in range(count)]
    return {"exact": exact[:count], "prefix": prefixes[:count], "words": words[:count]}


def _word_query(pick: random.Random) -> str:
    word = pick.choice(WORDS)
    kind = pick.random()
    if kind < 0.4:
        return word
    if kind < 0.7:
        return word[: max(3, len(word) - pick.randint(1, 3))]
    return f"{word} {pick.choice(WORDS + SUFFIXES).lower()}"


def populate(path: Path, rows: int, sample: int) -> tuple[dict[str, float], list[str]]:
    """Time the generator alone (keeping a sample of names), then the populate."""
    pick = random.Random(SEED + 2)
    names: list[str] = []
    started = time.perf_counter()
    for n, row in enumerate(Universe(rows)):
        if len(names) < sample:
            names.append(row["name"])
        elif (slot := pick.randrange(n + 1)) < sample:
            names[slot] = row["name"]
    generator = time.perf_counter() - started
    gc.collect()
    cpu, children = time.process_time(), _children_cpu()
    started = time.perf_counter()
    stored = replace_provider_rows(path, "polygon", Universe(rows))
    seconds = time.perf_counter() - started
    return {
        "rows": stored,
        "populate_s": round(seconds, 2),
        "populate_rows_per_s": round(stored / seconds),
        "generator_s": round(generator, 2),
        "rows_per_s_without_generator": round(stored / max(seconds - generator, 1e-9)),
        "caller_cpu_us_per_row": round((time.process_time() - cpu) / stored * 1e6, 2),
        "writer_cpu_us_per_row": round((_children_cpu() - children) / stored * 1e6, 2),
        "db_mb": round(sum(f.stat().st_size for f in path.parent.iterdir()) / 1e6),
    }, names


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(path: Path, sets: dict[str, list[str]]) -> dict[str, Any]:
    """Search latency per query set, and whether each exact symbol came first."""
    index = await SymbolIndex.open(path)
    try:
        for query in sets["exact"][:50] + sets["words"][:50]:  # warm the page cache
            await index.search(query)
        figures = {kind: await _latencies(index, items) for kind, items in sets.items()}
        misses = [q for q in sets["exact"] if not await _first_is(index, q)]
    finally:
        await index.close()
    return {"search": figures, "exact_first_misses": misses}


async def _latencies(index: SymbolIndex, items: list[str]) -> dict[str, float]:
    times, results = [], []
    for query in items:
        started = time.perf_counter()
        results.append(len(await index.search(query)))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "n": len(times),
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, round(0.99 * len(times)))], 3),
        "max_ms": round(times[-1], 3),
        "mean_results": round(statistics.mean(results), 1),
    }


async def _first_is(index: SymbolIndex, symbol: str) -> bool:
    found = await index.search(symbol)
    return bool(found) and found[0]["name"].lower() == symbol.lower()


def replace_again(path: Path, rows: int) -> dict[str, float]:
    started = time.perf_counter()
    stored = replace_provider_rows(path, "polygon", Universe(rows))
    seconds = time.perf_counter() - started
    return {"replace_s": round(seconds, 2), "replace_rows_per_s": round(stored / seconds)}


def print_table(figures: dict[str, Any]) -> None:
    print(f"rows                      {figures['rows']:>12,}")
    print(f"populate                  {figures['populate_s']:>12.2f} s")
    print(f"populate rate             {figures['populate_rows_per_s']:>12,} rows/s")
    print(f"  without generator time  {figures['rows_per_s_without_generator']:>12,} rows/s")
    cpu = f"{figures['caller_cpu_us_per_row']} / {figures['writer_cpu_us_per_row']}"
    print(f"  CPU caller / writer     {cpu:>12} us per row")
    if "replace_s" in figures:
        print(f"replace (delete + insert) {figures['replace_rows_per_s']:>12,} rows/s")
    print(f"database files            {figures['db_mb']:>12,} MB")
    print(f"\n{'search':<8} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'results':>8}")
    for kind, stats in figures["search"].items():
        print(
            f"{kind:<8} {stats['n']:>5} {stats['p50_ms']:>8.2f} {stats['p99_ms']:>8.2f}"
            f" {stats['max_ms']:>8.2f} {stats['mean_results']:>8.1f}"
        )
    misses = figures["exact_first_misses"]
    print(f"exact symbol first: {len(misses)} misses {misses[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--replace", action="store_true", help="also time a second populate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="candlewire-bench-") as folder:
        path = Path(folder) / "symbols.sqlite3"
        populated, names = populate(path, args.rows, args.queries)
        figures: dict[str, Any] = {"cpus": os.cpu_count(), **populated}
        figures.update(asyncio.run(measure(path, queries(names, args.queries))))
        if args.replace:
            figures.update(replace_again(path, args.rows))
    print_table(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
