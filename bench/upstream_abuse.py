"""Upstream calls per second that one hostile WebSocket client can cause (issue 15).

    python bench/upstream_abuse.py [--seconds 10]

Starts the real server of the checkout it is run from (``PYTHONPATH=. python ...`` in
that checkout) with the counting test provider and default settings, opens one client
and keeps sending ``data_history`` requests for windows nobody asked for before (three
symbols, 1m bars, a different hour each, ``count`` 1, round again when all were sent):
requests the cache cannot answer.
Counts the provider's ``get_history`` calls over ``--seconds`` and prints calls/s, then a
second client's uncached request latency while the first one keeps going.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness import ServerProcess, WsClient, base_env, populate

# Measured as users start it, ``python server.py``, not forked by the test launcher.
os.environ["CANDLEWIRE_TEST_EXEC"] = "1"

NAMES = ("AAA", "BBB", "CCC")


def request(name: str, hours_ago: int, interval: str = "1m") -> dict[str, Any]:
    t = int(time.time()) // 3600 * 3600 - hours_ago * 3600
    end = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    return {
        "type": "data_history",
        "source": "counting",
        "name": name,
        "interval": interval,
        "end": end,
        "count": 1,
    }


def calls(log: Path) -> int:
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(line.startswith("history ") for line in lines)


async def attack(server: ServerProcess, log: Path, seconds: float) -> None:
    hostile = await WsClient.open(server.ws_url)
    windows = [(name, h) for h in range(1, 700) for name in NAMES]
    before, started = calls(log), time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        if sent - len(hostile.of_type("data_history")) < 200:
            # Refused windows stay uncached: going round again asks for them again.
            batch = [windows[(sent + i) % len(windows)] for i in range(100)]
            await hostile.send(*(request(n, h) for n, h in batch))
            sent += len(batch)
        await asyncio.sleep(0.05)
        if time.monotonic() - started > seconds / 2 and not hasattr(attack, "probed"):
            attack.probed = True  # type: ignore[attr-defined]
            await probe(server)
    elapsed = time.monotonic() - started
    caused = calls(log) - before
    refused = sum(m.get("code") == "rate_limited" for m in hostile.of_type("error"))
    print(
        f"hostile client: {caused} upstream calls in {elapsed:.1f} s = {caused / elapsed:.1f}/s; "
        f"{len(hostile.of_type('data_history'))} answers, {refused} rate_limited errors"
    )
    await hostile.close()


async def probe(server: ServerProcess) -> None:
    other = await WsClient.open(server.ws_url)
    started = time.monotonic()
    await other.send(request("BBB", 5, "1h") | {"count": 10})
    answer = await other.wait_for("data_history", timeout=30)
    errors = other.of_type("error")
    print(
        f"second client, uncached: {len(answer['data'])} bars in "
        f"{(time.monotonic() - started) * 1000:.0f} ms, errors: {[e['code'] for e in errors]}"
    )
    await other.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = base_env(tmp, PROVIDERS="counting", CANDLEWIRE_TEST_PERIOD="1")
        assert populate(env).returncode == 0
        with ServerProcess(env, tmp / "server.log") as server:
            asyncio.run(attack(server, tmp / "provider.log", args.seconds))


if __name__ == "__main__":
    main()
