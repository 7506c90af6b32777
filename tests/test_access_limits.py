"""Per-client limits of issue 15 against the real server (``AUTH=jwt``): the request rate
on the socket (answered ``rate_limited``, never closing it), subscriptions across a
client's connections (``limit_reached``), and quota tiers (``ACCESS_TIERS``) chosen by the
JWT ``tier`` claim.

One server serves every test; each test names its own JWT subject, so limits do not mix.
The default tier is tight (a burst of 6 frames per 3 s, 3 subscriptions per client); tier
``pro`` is generous, tier ``meagre`` has a small upstream budget.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import ServerProcess, WsClient, base_env, eventually, populate, seconds

SECRET = "test-secret-that-is-long-enough-for-hs256"
AUDIENCE = "candlewire-tests"
REQUESTS_BURST = 6
MAX_SUBSCRIPTIONS = 3
MEAGRE_RATE, MEAGRE_BURST = 1, 2
TIERS = {
    "pro": {"requests_per_second": 100, "requests_burst": 500, "max_subscriptions": 6},
    "meagre": {
        "requests_per_second": 100,
        "requests_burst": 500,
        "upstream_calls_per_second": MEAGRE_RATE,
        "upstream_burst": MEAGRE_BURST,
    },
}


class KeyedServer(ServerProcess):
    """The harness's server, its own requests (health checks) carrying a token."""

    def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {token('harness')}"}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("access-limits")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="jwt",
        JWT_SECRET=SECRET,
        JWT_AUDIENCE=AUDIENCE,
        REQUESTS_PER_SECOND="2",
        REQUESTS_BURST=str(REQUESTS_BURST),
        MAX_SUBSCRIPTIONS_PER_CALLER=str(MAX_SUBSCRIPTIONS),
        UPSTREAM_CALLS_PER_SECOND="50",
        UPSTREAM_BURST="200",
        PROVIDER_CALLS_PER_SECOND="100",
        ACCESS_TIERS=json.dumps(TIERS),
        CANDLEWIRE_TEST_PERIOD="0.5",
    )
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp / "server.log") as running:
        yield running


def token(sub: str, **claims: Any) -> str:
    payload = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time() + 3600), **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def open_socket(server: ServerProcess, sub: str, **claims: Any) -> WsClient:
    return await WsClient.open(f"{server.ws_url}?token={token(sub, **claims)}")


def data(name: str, interval: str) -> dict[str, Any]:
    return {"type": "data", "source": "counting", "name": name, "interval": interval, "count": 1}


def unsubscribe(name: str, interval: str) -> dict[str, Any]:
    return {"type": "unsubscribe", "source": "counting", "name": name, "interval": interval}


def history(name: str, interval: str, hours_ago: int) -> dict[str, Any]:
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


def limit_errors(client: WsClient, after: int = 0) -> list[dict[str, Any]]:
    return [m for m in client.of_type("error", after) if m.get("code") == "limit_reached"]


def rate_errors(client: WsClient) -> list[dict[str, Any]]:
    return [m for m in client.of_type("error") if m.get("code") == "rate_limited"]


def log_lines(server: ServerProcess, text: str) -> int:
    return sum(text in line for line in Path(server.log_path).read_text().splitlines())


def fetches(server: ServerProcess, name: str, interval: str) -> int:
    path = Path(server.env["CANDLEWIRE_TEST_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return lines.count(f"history {name} {interval}")


async def answered_ping(client: WsClient, ping_id: int) -> dict[str, Any]:
    """Send one ping; the pong, or the ``rate_limited`` error that answered it instead."""
    mark = len(client.messages)
    await client.send({"type": "ping", "id": ping_id})
    await eventually(lambda: len(client.messages) > mark, 10, f"an answer to ping {ping_id}")
    return client.messages[mark]


# ---------------------------------------------------------------------- request rate


async def test_frames_over_the_request_rate_get_rate_limited_with_a_retry_time_and_one_log_line(
    server: ServerProcess,
) -> None:
    client = await open_socket(server, "chatty")
    for n in range(20):
        await client.send({"type": "ping", "id": n}, history("AAA", "1h", 100 + n))
    await eventually(lambda: len(client.of_type("data_history")) == 20, 10, "every answer")
    pongs = client.of_type("pong")
    refused = rate_errors(client)
    assert REQUESTS_BURST <= len(pongs) <= REQUESTS_BURST + 2, len(pongs)
    assert len(pongs) + len(refused) / 2 == 20  # a refused frame: both its requests refused
    assert all(0 < m["retry_after"] <= 4 and "retry after" in m["message"] for m in refused)
    refused_pings = {m["request"]["id"] for m in refused if m["request"]["type"] == "ping"}
    assert refused_pings == set(range(20)) - {m["id"] for m in pongs}
    # A refused history request still gets its (empty) data_history, as every refusal.
    empty = [m for m in client.of_type("data_history") if m["data"] == []]
    assert len(empty) == len(refused_pings)
    assert client.connection.close_code is None  # refused, never closed
    await eventually(lambda: log_lines(server, "sub-chatty: over the request rate"), 10, "a log")
    assert log_lines(server, "sub-chatty: over the request rate") == 1
    # After the retry time the same socket is served again.
    deadline = time.monotonic() + seconds(15)
    answer = await answered_ping(client, 100)
    while answer["type"] != "pong" and time.monotonic() < deadline:
        await asyncio.sleep(min(answer["retry_after"], 0.5))
        answer = await answered_ping(client, 100)
    assert answer["type"] == "pong"
    await client.close()


# ---------------------------------------------------------------------- subscriptions


async def test_subscriptions_are_limited_per_client_across_its_connections(
    server: ServerProcess,
) -> None:
    first = await open_socket(server, "collector")
    second = await open_socket(server, "collector")
    await first.send(data("AAA", "1m"), data("AAA", "5m"))
    await first.wait_for("data_init", lambda m: m["interval"] == "5m")
    await second.send(data("BBB", "1m"), data("BBB", "5m"))
    refused = await second.wait_for("error", lambda m: m.get("code") == "limit_reached")
    assert refused["request"]["name"] == "BBB" and refused["request"]["interval"] == "5m"
    assert f"at most {MAX_SUBSCRIPTIONS} subscriptions" in refused["message"]
    await second.wait_for("data_init", lambda m: m["name"] == "BBB" and m["interval"] == "5m")
    assert not limit_errors(first)
    # Someone else is not affected; an unsubscribe frees a slot for the client.
    other = await open_socket(server, "bystander")
    await other.send(data("BBB", "5m"))
    await other.wait_for("data_init")
    assert not limit_errors(other)
    await first.send(unsubscribe("AAA", "1m"))
    await first.wait_for("unsubscribed")
    mark = len(second.messages)
    await second.send(data("BBB", "5m"))
    await second.wait_for("data_init", after=mark)
    assert not limit_errors(second, mark)
    for client in (first, second, other):
        await client.close()


def http_get(server: ServerProcess, path: str, sub: str, **claims: Any) -> Any:
    """(status, decoded JSON body, headers) of one GET with a token of ``sub``."""
    headers = {"Authorization": f"Bearer {token(sub, **claims)}"}
    request = urllib.request.Request(server.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_an_http_request_over_the_upstream_budget_is_429_with_retry_after(
    server: ServerProcess,
) -> None:
    """A fair-use refusal of ``/api/history`` and ``/openbb/bars`` is 429 with the wait in
    ``Retry-After`` and the body, as the request-rate limit answers; it was a 503 ("the
    server is down") without ``Retry-After``. A refused quote says why, not "no data" (this
    test comes before the tier tests, which leave the daily bars of CCC cached)."""
    answers = []
    # windows nobody asked for: each costs an upstream call (a window the planner fetches
    # holds at least 300 bars, 25 hours of 5m: they are 30 hours apart)
    for hours in range(40, 160, 30):
        t = int(time.time()) // 3600 * 3600 - hours * 3600
        end = urllib.parse.quote(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)))
        path = f"/api/history?source=counting&name=AAA&interval=5m&count=1&end={end}"
        answers.append(http_get(server, path, "meagre-http", tier="meagre"))
    assert [status for status, _, _ in answers[:MEAGRE_BURST]] == [200] * MEAGRE_BURST
    status, body, headers = answers[-1]
    assert status == 429, body
    assert body["error"] == "rate_limited" and "retry after" in body["message"]
    assert body["retry_after"] > 0 and int(headers["Retry-After"]) >= 1
    status, body, headers = http_get(
        server, "/openbb/bars?symbol=counting:BBB&interval=3m&count=1", "meagre-http", tier="meagre"
    )
    assert status == 429 and body["error"] == "rate_limited", body
    assert int(headers["Retry-After"]) >= 1 and body["detail"] == body["message"]
    quote_path = "/udf/quotes?symbols=counting:CCC"
    _, quotes, _ = http_get(server, quote_path, "meagre-http", tier="meagre")
    assert quotes["d"][0]["s"] == "error" and "retry after" in quotes["d"][0]["errmsg"], quotes


def test_requests_refused_for_their_credentials_count_against_the_address(
    server: ServerProcess,
) -> None:
    """A caller from one address (here behind the local proxy, ``X-Forwarded-For``)
    guessing tokens gets 429 with ``Retry-After`` past the request burst, like any client;
    every refusal was a 401, however many, so key guessing and 401 floods were unlimited.
    A valid token from the same address keeps its own budget."""
    remote = {"X-Forwarded-For": "198.51.100.7"}
    statuses, last = [], None
    for n in range(REQUESTS_BURST + 3):
        request = urllib.request.Request(
            server.url + f"/api/symbols?q=AAA&token=guess-{n}", headers=remote
        )
        try:
            urllib.request.urlopen(request, timeout=seconds(10)).close()
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
            last = (json.loads(error.read()), error.headers)
    assert statuses[:REQUESTS_BURST] == [401] * REQUESTS_BURST, statuses
    assert statuses[-1] == 429, statuses
    assert last is not None
    body, headers = last
    assert body["error"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    valid = {**remote, "Authorization": f"Bearer {token('same-address')}"}
    request = urllib.request.Request(server.url + "/api/symbols?q=AAA", headers=valid)
    with urllib.request.urlopen(request, timeout=seconds(10)) as response:
        assert response.status == 200


async def upgrade_status(url: str, **headers: str) -> tuple[int, Any]:
    """The status and headers of a socket upgrade's refusal (0 if the socket opened)."""
    try:
        client = await WsClient.open(url, additional_headers=headers)
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.headers
    await client.close()
    return 0, None


async def test_socket_upgrades_refused_for_their_credentials_count_against_the_address(
    server: ServerProcess,
) -> None:
    """Upgrades with wrong tokens from one remote address count against it as HTTP
    refusals do (one budget per address, over every socket route and HTTP): past the
    request burst, 429 with ``Retry-After`` before the socket opens. Every one was a 401,
    however many (300 guesses in 0.3 s from one address, all 401). Loopback stays exempt,
    and a valid token from the same address still opens its socket."""
    remote = {"X-Forwarded-For": "198.51.100.8"}
    grid_url = server.ws_url.replace("/websocket/", "/openbb/live_grid_ws")
    refusals = []
    for n in range(REQUESTS_BURST + 3):
        url = server.ws_url if n % 2 else grid_url
        refusals.append(await upgrade_status(f"{url}?token=guess-{n}", **remote))
    statuses = [status for status, _ in refusals]
    assert statuses[:REQUESTS_BURST] == [401] * REQUESTS_BURST, statuses
    assert statuses[-2:] == [429, 429], statuses
    assert int(refusals[-1][1]["Retry-After"]) >= 1
    # the same budget as the address's HTTP refusals
    request = urllib.request.Request(server.url + "/api/symbols?token=guess", headers=remote)
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=seconds(10))
    assert refused.value.code == 429
    valid = await upgrade_status(f"{server.ws_url}?token={token('socket-guesser')}", **remote)
    assert valid == (0, None)
    local = [await upgrade_status(f"{server.ws_url}?token=l-{n}") for n in range(12)]
    assert [status for status, _ in local] == [401] * 12


# ---------------------------------------------------------------------- tiers


async def test_the_jwt_tier_claim_sets_the_request_rate_and_subscription_limit(
    server: ServerProcess,
) -> None:
    client = await open_socket(server, "subscriber", tier="pro")
    for n in range(20):
        await client.send({"type": "ping", "id": n})
    await client.send(*(data(name, "1h") for name in ("AAA", "BBB", "CCC")))
    await client.send(*(data(name, "1d") for name in ("AAA", "BBB", "CCC")))
    await eventually(lambda: len(client.of_type("data_init")) == 6, 10, "six data_init")
    assert len(client.of_type("pong")) == 20 and not rate_errors(client)
    assert not limit_errors(client)
    await client.send(data("AAA", "4h"))
    refused = await client.wait_for("error", lambda m: m.get("code") == "limit_reached")
    assert "at most 6 subscriptions" in refused["message"]
    await client.close()


async def test_the_jwt_tier_claim_sets_the_upstream_budget(server: ServerProcess) -> None:
    meagre = await open_socket(server, "meagre-client", tier="meagre")
    before = fetches(server, "CCC", "3m")
    started = time.monotonic()
    # 20 windows nobody asked for (the planner's hold at least 300 bars, 15 hours of 3m)
    await meagre.send(*(history("CCC", "3m", hours) for hours in range(10, 330, 16)))
    await eventually(lambda: len(meagre.of_type("data_history")) == 20, 20, "every answer")
    elapsed = time.monotonic() - started
    caused = fetches(server, "CCC", "3m") - before
    assert caused <= MEAGRE_BURST + MEAGRE_RATE * elapsed + 2, (caused, elapsed)
    assert rate_errors(meagre)
    # The default tier's budget (200 at once) serves the same kind of burst in full.
    plain = await open_socket(server, "plain-client")
    await plain.send(*(history("CCC", "30m", hours) for hours in range(10, 30)))
    await eventually(lambda: len(plain.of_type("data_history")) == 20, 20, "every answer")
    assert not rate_errors(plain)
    await meagre.close()
    await plain.close()
