"""End to end: refills after a provider restart whose history calls never return do not
hold live updates for longer than one ``HISTORY_TIMEOUT``.

Refills make at most 8 history calls at once (``backend/hub/refill.py``). When the restarted
provider (or the node that took over, in scale-out) answers no history at all, each call
waits out ``HISTORY_TIMEOUT``, and the keys queued behind the first 8 held their live updates
for one more timeout per 8 keys: 36 keys at a 1 s timeout, 5 s for the last; 1,000 keys at
the default 30 s, an hour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests import harness
from tests.harness import WsClient, populated_server
from tests.providers import INTERVALS

SYMBOLS = ("AAA", "BBB", "CCC")


def provider_pid(server: harness.ServerProcess) -> int:
    return int(server.get("/health")["providers"]["stuckhist"]["pid"] or 0)


async def test_keys_queued_behind_refills_of_a_provider_that_never_answers_do_not_wait_each(
    tmp_path: Path,
) -> None:
    stuck = tmp_path / "stuck"
    with populated_server(
        tmp_path,
        PROVIDERS="stuckhist",
        EXTRA_PROVIDERS="stuckhist=tests.providers:StuckHistoryProvider",
        CANDLEWIRE_TEST_STUCK=str(stuck),
        HISTORY_TIMEOUT="1",
        HISTORY_THREADS="40",  # the data_inits of 36 keys at once, each within the timeout
    ) as server:
        client = await WsClient.open(server.ws_url)
        try:
            keys = [(s, i) for s in SYMBOLS for i in INTERVALS]  # 36: more than 8 at once
            await client.send(
                *[
                    {"type": "data", "source": "stuckhist", "name": s, "interval": i, "count": 2}
                    for s, i in keys
                ]
            )
            for s, i in keys:
                await client.wait_for("data_update", harness.same_key(s, i), timeout=20)
            stuck.touch()
            pid = provider_pid(server)
            os.kill(pid, signal.SIGKILL)
            await harness.eventually(
                lambda: provider_pid(server) not in (0, pid), timeout=20, what="a new process"
            )
            after = len(client.messages)
            first: dict[tuple[str, str], float] = {}
            deadline = time.monotonic() + 15
            while len(first) < len(keys) and time.monotonic() < deadline:
                for message in client.of_type("data_update", after):
                    key = (message["name"], message["interval"])
                    first.setdefault(key, time.monotonic())
                with contextlib.suppress(AssertionError):  # none within 1 s: look again
                    await client.wait_for("data_update", timeout=1, after=len(client.messages))
            assert len(first) == len(keys), f"no update since the restart: {set(keys) - set(first)}"
            spread = max(first.values()) - min(first.values())
            # One timeout for every key (the calls made at once), not one per 8 keys queued.
            assert spread < 1.0, f"updates resumed over {spread:.1f} s"
            errors = [e for e in client.of_type("error", after) if "may be missing" in e["message"]]
            assert len(errors) == len(keys)
        finally:
            await client.close()
