"""UDF polls "until now" keep a key streamed for a minute (``backend.hub.watches``); a
client cannot use them to hold more streams than its tier allows, and a poll that its
upstream budget refused keeps no stream. The real server with ``AUTH=jwt`` and two tiers.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.harness import ServerProcess, base_env, populate, seconds, until

SECRET = "udf-watch-limits-test-secret-of-32-bytes"
TIERS = {
    "few": {"max_subscriptions": 2},  # its upstream budget: the defaults (a burst of 60)
    "default": {"upstream_burst": 2, "upstream_calls_per_second": 0.01},
}


def token(sub: str, tier: str = "default") -> str:
    return jwt.encode({"sub": sub, "tier": tier, "exp": time.time() + 3600}, SECRET)


class KeyedServer(ServerProcess):
    """``/health`` (and every GET of the harness) with a token: its full detail."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {token('harness')}"}
        )
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("udf-watch-limits")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="jwt",
        JWT_SECRET=SECRET,
        ACCESS_TIERS=json.dumps(TIERS),
    )
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp / "server.log") as running:
        yield running


def poll(server: ServerProcess, key: str, symbol: str, resolution: str) -> dict[str, Any]:
    """The adapter's poll: countback bars until now."""
    query = urllib.parse.urlencode(
        {"symbol": symbol, "resolution": resolution, "to": int(time.time()), "countback": 2}
    )
    request = urllib.request.Request(
        f"{server.url}/udf/history?{query}", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=seconds(30)) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def streamed(server: ServerProcess) -> float:
    """The hub's streamed series (``candlewire_subscriptions``): here, the watched keys."""
    for line in str(server.get("/metrics")).splitlines():
        if line.startswith("candlewire_subscriptions "):
            return float(line.split()[-1])
    raise AssertionError("no candlewire_subscriptions in /metrics")


def test_a_client_starts_no_more_watches_than_its_tier_streams(server: ServerProcess) -> None:
    """A client of a tier limited to 2 streamed series polls three keys: all three are
    answered, two are streamed (before: three; 1,000 with a thousand symbols), and a
    poll of a watched key still is answered."""
    key = token("few-client", "few")
    for name in ("AAA", "BBB", "CCC"):
        assert poll(server, key, f"counting:{name}", "1")["s"] == "ok"
    assert streamed(server) == 2
    assert poll(server, key, "counting:AAA", "1")["s"] == "ok"
    assert streamed(server) == 2
    other = token("other-few-client", "few")  # another client has its own two
    assert poll(server, other, "counting:CCC", "1")["s"] == "ok"
    assert streamed(server) == 3


def test_a_poll_refused_by_the_upstream_budget_keeps_no_stream(server: ServerProcess) -> None:
    """A client whose upstream budget (a burst of 2) is spent polls more keys: the refused
    polls are answered with the error and do not keep their keys streamed for a minute."""
    before = streamed(server)
    key = token("meagre-client")
    answers = [poll(server, key, f"counting:{name}", "5") for name in ("AAA", "BBB", "CCC")]
    answers += [poll(server, key, "counting:AAA", "15")]
    refused = [a for a in answers if a["s"] == "error"]
    assert len(refused) == 2 and all("too many" in a["errmsg"] for a in refused), answers
    until(lambda: streamed(server) == before + 2, what="the refused polls' streams to end")
