"""Each attack of issue 15 against the real server with ``AUTH=jwt``: it is refused, or
it costs the attacker and nobody else.

One server (counting provider, small fair-use budgets, a one-second header timeout) serves
every test here; each test names its own JWT subject, so budgets do not mix.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
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
UPSTREAM_RATE, UPSTREAM_BURST = 2, 4
HEADER_TIMEOUT = 1.0
MAX_HEADER_BYTES = 8192
PUBLIC_URL = "https://candles.example.org/md"  # behind a proxy, under a path


class KeyedServer(ServerProcess):
    """The harness's server, its own requests (health checks) carrying a token."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=bearer("harness"))
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("access")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="jwt",
        JWT_SECRET=SECRET,
        JWT_AUDIENCE=AUDIENCE,
        TOKEN_EXPIRY_GRACE_SECONDS="1",
        UPSTREAM_CALLS_PER_SECOND=str(UPSTREAM_RATE),
        UPSTREAM_BURST=str(UPSTREAM_BURST),
        PROVIDER_CALLS_PER_SECOND="4",
        HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        HTTP_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        CANDLEWIRE_TEST_PERIOD="0.5",
        PUBLIC_URL=PUBLIC_URL + "/",
    )
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp / "server.log") as running:
        yield running


def token(sub: str, seconds_left: float = 3600, **claims: Any) -> str:
    payload = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time() + seconds_left), **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def http(server: ServerProcess, path: str, method: str = "GET", **headers: str) -> Any:
    """(status, decoded JSON body or text, headers) of one request."""
    request = urllib.request.Request(server.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            status, body, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, body, got = error.code, error.read(), error.headers
    text = body.decode()
    return status, (json.loads(text) if text[:1] in ("{", "[") else text), got


def bearer(sub: str = "reader", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


async def open_socket(server: ServerProcess, sub: str, **kwargs: Any) -> WsClient:
    return await WsClient.open(f"{server.ws_url}?token={token(sub, **kwargs)}")


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await WsClient.open(url, **kwargs)
    return refused.value.response.status_code


def history(name: str, interval: str, end: str, count: int = 10) -> dict[str, Any]:
    return {
        "type": "data_history",
        "source": "counting",
        "name": name,
        "interval": interval,
        "end": end,
        "count": count,
    }


def hour_ago(hours: int) -> str:
    t = int(time.time()) // 3600 * 3600 - hours * 3600
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def fetches(server: ServerProcess, name: str, interval: str) -> int:
    path = Path(server.env["CANDLEWIRE_TEST_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return lines.count(f"history {name} {interval}")


# ---------------------------------------------------------------------- who may connect


async def test_a_socket_without_or_with_a_wrong_token_is_refused_with_401_before_it_opens(
    server: ServerProcess,
) -> None:
    assert await refused_status(server.ws_url) == 401
    assert await refused_status(server.ws_url + "?token=not-a-jwt") == 401
    forged = jwt.encode({"sub": "x", "aud": AUDIENCE, "exp": time.time() + 60}, SECRET[::-1])
    assert await refused_status(server.ws_url + "?token=" + forged) == 401
    wrong_audience = jwt.encode({"sub": "x", "aud": "else", "exp": time.time() + 60}, SECRET)
    assert await refused_status(server.ws_url + "?token=" + wrong_audience) == 401


@pytest.mark.parametrize(
    "claims",
    [{"sources": 5}, {"symbols": True}, {"symbols": {"AAA": 1}}, {"exp": 10**400}],
    ids=["sources-number", "symbols-true", "symbols-object", "exp-beyond-any-date"],
)
async def test_a_signed_token_with_a_claim_of_the_wrong_shape_is_a_401_not_a_500(
    server: ServerProcess, claims: dict[str, Any]
) -> None:
    """A mistake of the identity provider (a claim it cannot mean) is refused like any bad
    token, in the documented shape, on HTTP and on the socket; it was a bare 500
    ``Internal Server Error`` with a traceback on every route."""
    payload = {"sub": "shapes", "aud": AUDIENCE, "exp": int(time.time() + 60), **claims}
    odd = jwt.encode(payload, SECRET, algorithm="HS256")
    for path in ("/api/symbols?q=AAA", "/udf/history?symbol=AAA&resolution=60&to=1&countback=1"):
        status, body, _ = http(server, path, Authorization=f"Bearer {odd}")
        assert status == 401, (path, body)
        assert body["error"] == "unauthorized" and "invalid token" in body["message"]
    assert await refused_status(server.ws_url + "?token=" + odd) == 401
    assert "Traceback" not in server.log_path.read_text()


async def test_a_socket_from_a_foreign_origin_is_refused_with_403_even_with_a_token(
    server: ServerProcess,
) -> None:
    url = f"{server.ws_url}?token={token('origin')}"
    assert await refused_status(url, origin="https://evil.example") == 403
    grid = url.replace("/websocket/", "/openbb/live_grid_ws")
    assert await refused_status(grid, origin="https://evil.example") == 403
    # the refusal names the Origin and the setting; null is a page opened from a file
    for origin, more in (("https://evil.example", ""), ("null", "file://")):
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(url, origin=origin)
        message = json.loads(refused.value.response.body)["message"]
        assert repr(origin) in message and "WS_ALLOWED_ORIGINS" in message, message
        assert more in message, message
    local = await WsClient.open(url, origin="http://localhost:5173")
    await local.send({"type": "ping", "id": 1})
    assert (await local.wait_for("pong"))["id"] == 1
    await local.close()


def test_with_keys_any_host_is_served_to_a_key_and_refused_without_one(
    server: ServerProcess,
) -> None:
    """The Host check against DNS rebinding is for AUTH=none (ALLOWED_HOSTS unset): here a
    rebound page has no key, and a proxy or tunnel may send any public name."""
    path = "/api/symbols?q=AAA"
    status, body, _ = http(server, path, Host="candles.tunnel.example", **bearer("hosts"))
    assert status == 200 and body["results"], body
    assert http(server, path, Host="candles.tunnel.example")[0] == 401


async def test_a_bearer_header_on_the_upgrade_is_accepted(server: ServerProcess) -> None:
    client = await WsClient.open(server.ws_url, additional_headers=bearer("header"))
    await client.send({"type": "ping", "id": 2})
    await client.wait_for("pong")
    await client.close()


async def test_a_token_that_expires_on_an_open_socket_closes_it_with_1008_after_the_grace(
    server: ServerProcess,
) -> None:
    client = await open_socket(server, "expiring", seconds_left=2)
    await client.send({"type": "ping", "id": 3})
    await client.wait_for("pong")
    await eventually(lambda: client.connection.close_code is not None, 10, "the close")
    assert client.connection.close_code == 1008
    assert client.connection.close_reason == "token expired"  # what the client is told
    await client.close()


async def test_a_jwt_limited_to_some_symbols_cannot_read_others_anywhere(
    server: ServerProcess,
) -> None:
    client = await open_socket(server, "limited", symbols=["AAA"])
    await client.send(history("BBB", "1h", hour_ago(5)), history("AAA", "1h", hour_ago(5)))
    error = await client.wait_for("error", lambda m: m.get("code") == "forbidden")
    assert "counting:BBB" in error["message"]
    allowed = await client.wait_for("data_history", lambda m: m["name"] == "AAA")
    assert len(allowed["data"]) == 10
    assert not client.of_type("data_history", 0) or all(
        m["data"] == [] for m in client.of_type("data_history") if m["name"] == "BBB"
    )
    await client.close()
    query = "/api/history?source=counting&name=BBB&interval=1h&count=5"
    status, body, _ = http(server, query, **bearer("limited", symbols=["AAA"]))
    assert (status, body["error"]) == (403, "forbidden")


def test_a_jwt_limited_to_some_symbols_gets_no_interval_options_of_the_others(
    server: ServerProcess,
) -> None:
    """OpenBB's interval options of a symbol the token may not read are refused as its bars
    are (403 ``forbidden``); they were listed, telling the caller what it may not read."""
    limited = bearer("intervals", symbols=["AAA"])
    status, body, _ = http(server, "/openbb/interval_options?symbol=counting:BBB", **limited)
    assert (status, body["error"]) == (403, "forbidden"), body
    assert body["detail"] == body["message"] and "counting:BBB" in body["message"]
    status, body, _ = http(server, "/openbb/interval_options?symbol=BBB", **limited)
    assert status == 403, body
    status, offered, _ = http(server, "/openbb/interval_options?symbol=AAA", **limited)
    assert status == 200 and offered[-1]["value"] == "1d"
    status, body, _ = http(server, "/openbb/bars?symbol=counting:BBB&count=1", **limited)
    assert (status, body["error"]) == (403, "forbidden")


async def test_a_jwt_limited_to_some_symbols_gets_no_others_from_the_live_grid(
    server: ServerProcess,
) -> None:
    """OpenBB's live grid, over REST and its socket: a forbidden symbol is an error row and
    never streams."""
    limited = bearer("grid", symbols=["AAA"])
    status, rows, _ = http(server, "/openbb/live_grid?symbol=AAA,BBB", **limited)
    assert status == 200
    by_symbol = {row["symbol"]: row for row in rows}
    assert by_symbol["AAA"].get("price") is not None
    assert by_symbol["BBB"].get("price") is None
    assert "no permission" in json.dumps(by_symbol["BBB"])
    status, rows, _ = http(server, "/openbb/live_grid?symbol=BBB", **bearer("src", sources=["x"]))
    assert status == 200 and rows[0].get("price") is None
    # nor does the UDF configuration name the sources such a token may not read
    status, config, _ = http(server, "/udf/config", **bearer("src", sources=["x"]))
    assert status == 200 and [e["value"] for e in config["exchanges"]] == [""]
    status, config, _ = http(server, "/udf/config", **bearer("all"))
    assert "counting" in [e["value"] for e in config["exchanges"]]
    url = server.ws_url.replace("/websocket/", "/openbb/live_grid_ws")
    grid = await WsClient.open(f"{url}?token={token('grid', symbols=['AAA'])}")
    try:
        await grid.send_raw(json.dumps({"params": {"symbol": "AAA,BBB"}}))
        await eventually(lambda: sum(1 for m in grid.messages if m.get("symbol") == "AAA") >= 3)
        rows_of_bbb = [m for m in grid.messages if m.get("symbol") == "BBB"]
        assert len(rows_of_bbb) == 1 and rows_of_bbb[0].get("price") is None
    finally:
        await grid.close()


def test_apps_json_names_the_public_url_whatever_the_host_header(server: ServerProcess) -> None:
    """Behind a proxy, ``PUBLIC_URL`` is where Workspace's browser finds the thumbnails;
    a hostile ``Host`` changes nothing (it made the URLs ``http://<Host>/...``)."""
    for host in ("evil.example", None):
        headers = bearer("apps") | ({"Host": host} if host else {})
        status, apps, _ = http(server, "/apps.json", **headers)
        assert status == 200
        assert apps[0]["img_dark"] == PUBLIC_URL + "/openbb/thumbnail-dark.svg"
        assert apps[0]["img_light"] == PUBLIC_URL + "/openbb/thumbnail-light.svg"


def test_a_refusal_says_why_in_the_detail_workspace_shows(server: ServerProcess) -> None:
    """OpenBB Workspace shows a failed widget's ``detail`` (its error-handling docs): a
    missing or wrong key is explained there, as every other error of the app is."""
    for path, headers in (
        ("/openbb/live_grid?symbol=AAA", {}),
        ("/widgets.json", {"X-API-Key": "not-a-jwt"}),
    ):
        status, body, _ = http(server, path, Origin="https://pro.openbb.co", **headers)
        assert status == 401, path
        assert body["error"] == "unauthorized" and body["detail"] == body["message"], path


async def test_workspace_opens_the_live_grid_socket_from_widgets_json_alone(
    server: ServerProcess,
) -> None:
    """Workspace sends its connection's key with every HTTP request, but opens the live
    grid's socket at ``{backend}/{wsEndpoint}`` with ``http`` replaced by ``ws``: no header,
    no query parameter. The wsEndpoint ``widgets.json`` gives a caller with a key must open
    without one."""
    key = {"X-API-Key": token("workspace")}
    status, widgets, got = http(server, "/widgets.json", Origin="https://pro.openbb.co", **key)
    assert status == 200 and "no-store" in got.get("Cache-Control", "")
    endpoint = widgets["candlewire_live_grid"]["wsEndpoint"]
    url = f"{server.url}/{endpoint}".replace("http", "ws", 1)
    grid = await WsClient.open(url, origin="https://pro.openbb.co")
    try:
        await grid.send_raw(json.dumps({"type": "params", "params": {"symbol": "AAA"}}))
        await eventually(lambda: any(m.get("symbol") == "AAA" for m in grid.messages))
    finally:
        await grid.close()


async def test_a_jwt_limited_to_some_symbols_neither_finds_nor_scans_the_others(
    server: ServerProcess,
) -> None:
    """Search, the scanner's universe and UDF's symbol info: what the token may not read is
    not there (a scan would otherwise send the others' closes in its data_values)."""
    client = await open_socket(server, "finder", symbols=["AAA"])
    try:
        await client.send({"type": "search_data", "search": ""})
        found = await client.wait_for("search_data_done")
        assert [row["name"] for row in found["results"]] == ["AAA"]
        rule = {
            "type1": "data", "source1": "counting", "name1": "AAA", "interval1": "1h",
            "key1": "close", "comparator": ">", "type2": "value", "value2": "0",
        }  # fmt: skip
        await client.send({"type": "scan", "search": "counting", "rules": [rule]})
        done = await client.wait_for("scan_done", timeout=20)
        assert done["total"] == 1
        assert [r["data"]["name"] for r in client.of_type("scan_result")] == ["AAA"]
        column = {"source": "counting", "name": "BBB", "interval": "1h", "value": "x"}
        await client.send(
            {
                "type": "indicator",
                "id": "sma-of-bbb",
                "indicator": {"id": "talib.overlap.SMA"},
                "inputs": {"timeperiod": 1},
                "dataMap": {"close": column | {"dataKey": "close"}},
            }
        )
        refused = await client.wait_for("error", lambda m: m.get("code") == "forbidden")
        assert "counting:BBB" in refused["message"]
        empty = await client.wait_for("indicator_init")
        assert empty["data"] == []
    finally:
        await client.close()
    limited = bearer("finder", symbols=["AAA"])
    _, body, _ = http(server, "/api/symbols?q=", **limited)
    assert [row["name"] for row in body["results"]] == ["AAA"]
    _, info, _ = http(server, "/udf/symbols?symbol=BBB", **limited)
    assert info["s"] == "error" and "no permission" in info["errmsg"]
    _, found, _ = http(server, "/udf/search?query=&limit=30", **limited)
    assert [item["symbol"] for item in found] == ["AAA"]


def test_a_jwt_limited_to_some_symbols_finds_them_past_the_limit_of_the_others(
    server: ServerProcess,
) -> None:
    """The rows a token may read are found even when the rows before them, which it may not
    read, fill the limit asked: the search does not stop at the first ``limit`` rows."""
    limited = bearer("finder", symbols=["HANG"])  # listed last of the four
    _, body, _ = http(server, "/api/symbols?q=&limit=1", **limited)
    assert [row["name"] for row in body["results"]] == ["HANG"]
    _, found, _ = http(server, "/udf/search?query=&limit=2", **limited)
    assert [item["symbol"] for item in found] == ["HANG"]


# ---------------------------------------------------------------------- HTTP


def test_http_routes_need_a_key_and_say_so_in_the_documented_shape(server: ServerProcess) -> None:
    for path in ("/api/symbols?q=A", "/udf/config", "/widgets.json", "/metrics"):
        status, body, headers = http(server, path)
        assert status == 401, path
        assert body["error"] == "unauthorized" and body["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert http(server, "/api/symbols?q=AAA", **bearer())[0] == 200
    assert http(server, "/api/symbols?q=AAA", **{"X-API-Key": token("openbb")})[0] == 200
    assert http(server, f"/udf/config?token={token('udf')}")[0] == 200


def test_health_is_a_public_liveness_answer_and_details_need_a_key(server: ServerProcess) -> None:
    status, public, _ = http(server, "/health")
    assert status == 200 and public["status"] == "ok"
    assert "providers" not in public and "pid" not in json.dumps(public)
    _, detail, _ = http(server, "/health", **bearer())
    assert detail["providers"]["counting"]["pid"] > 0
    assert http(server, "/health", method="HEAD")[0] == 200


def test_head_answers_every_get_route_with_its_headers_and_no_body(server: ServerProcess) -> None:
    for path in ("/metrics", "/udf/config", "/widgets.json", "/api/symbols?q=AAA", "/"):
        got, _, headers = http(server, path, **bearer())
        status, empty, head_headers = http(server, path, method="HEAD", **bearer())
        assert (status, empty) == (got, ""), path
        assert head_headers["Content-Type"] == headers["Content-Type"], path
    assert http(server, "/udf/config", method="HEAD")[0] == 401


def test_a_udf_refusal_carries_the_datafeed_error_shape_too(server: ServerProcess) -> None:
    """The Charting Library's adapter reads the body, not the status."""
    status, body, _ = http(server, "/udf/symbols?symbol=AAA")
    assert status == 401
    assert body["s"] == "error" and body["errmsg"] == body["message"]
    assert body["error"] == "unauthorized"
    status, body, _ = http(server, "/api/symbols?q=A")
    assert status == 401 and "s" not in body


def test_the_web_page_itself_needs_no_token(server: ServerProcess) -> None:
    status, body, _ = http(server, "/")
    assert status == 200 and "<html" in body.lower()


# ---------------------------------------------------------------------- fair use


async def test_one_client_exhausting_its_upstream_budget_does_not_starve_a_second_one(
    server: ServerProcess,
) -> None:
    bob = await open_socket(server, "bob")
    await bob.send(history("CCC", "1h", hour_ago(400)))  # cached before the attack
    first = await bob.wait_for("data_history", lambda m: m["name"] == "CCC")
    assert len(first["data"]) == 10
    mallory = await open_socket(server, "mallory")
    before = fetches(server, "AAA", "1m")
    started = time.monotonic()
    frames = [[history("AAA", "1m", hour_ago(h), 1) for h in range(k, k + 50)] for k in (1, 51)]
    for frame in frames:
        await mallory.send(*frame)
    await mallory.wait_for("error", lambda m: m.get("code") == "rate_limited")
    mine = len(bob.messages)
    await bob.send(history("CCC", "1h", hour_ago(400)), history("BBB", "1h", hour_ago(300)))
    cached = await bob.wait_for("data_history", lambda m: m["name"] == "CCC", after=mine)
    uncached = await bob.wait_for("data_history", lambda m: m["name"] == "BBB", after=mine)
    assert len(cached["data"]) == 10 and len(uncached["data"]) == 10
    assert not bob.of_type("error", mine)
    await eventually(lambda: len(mallory.of_type("data_history")) == 100, 30, "every answer")
    elapsed = time.monotonic() - started
    limited = [m for m in mallory.of_type("error") if m["code"] == "rate_limited"]
    assert limited and "retry after" in limited[0]["message"]
    caused = fetches(server, "AAA", "1m") - before
    assert caused <= UPSTREAM_BURST + UPSTREAM_RATE * elapsed + 2, (caused, elapsed)
    _, metrics, _ = http(server, "/metrics", **bearer())
    assert "candlewire_upstream_refusals_total" in metrics
    await bob.close()
    await mallory.close()


# ---------------------------------------------------------------------- the front door


async def raw_exchange(server: ServerProcess, data: bytes, wait: float) -> bytes:
    """Send ``data`` and read until the server closes (or ``wait`` seconds pass)."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answer = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(seconds(wait)):
            while chunk := await reader.read(65536):
                answer += chunk
    except ConnectionResetError:
        pass  # the server closed with our bytes unread: closed, as it should
    finally:
        writer.close()
    return answer


async def test_unfinished_request_heads_are_closed_after_the_header_timeout(
    server: ServerProcess,
) -> None:
    started = time.monotonic()
    half = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"
    answers = await asyncio.gather(*(raw_exchange(server, half, 10) for _ in range(20)))
    assert answers == [b""] * 20  # closed, no response, well before the 10 s wait
    assert time.monotonic() - started < seconds(HEADER_TIMEOUT + 4)


async def test_oversized_headers_get_431_and_the_connection_closes(server: ServerProcess) -> None:
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = await raw_exchange(server, big, 10)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert http(server, "/health")[0] == 200


async def test_a_body_or_pipelined_requests_read_with_a_head_do_not_count_as_head(
    server: ServerProcess,
) -> None:
    """Both used to be 431: the whole read was counted as the head."""
    body = b"x" * 100_000
    head = b"POST /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    answer = await raw_exchange(server, head % len(body) + body, 10)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:80]  # /health takes no POST
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(server, one * 1999 + last, 30)
    assert answer.count(b"HTTP/1.1 200") == 2000, answer[:80]


def gauge(server: ServerProcess, name: str) -> float:
    status, text, _ = http(server, "/metrics", **bearer("metrics-reader"))
    if status != 200:  # polled fast: over its own request rate, read again
        return float("inf")
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_the_rate_limit_memory_of_clients_that_went_away_is_freed(
    server: ServerProcess,
) -> None:
    """Every token subject (or address) that made one request kept an entry in the
    rate limiter's memory for the life of the process: a server running for weeks grew
    with every client it had ever seen. Once their window has passed they are forgotten."""
    for i in range(40):
        status, _, _ = http(server, "/udf/time", **bearer(f"passer-by-{i}"))
        assert status == 200
    assert gauge(server, "candlewire_rate_limited_clients") >= 40
    await eventually(
        lambda: gauge(server, "candlewire_rate_limited_clients") <= 3,
        30,
        "the clients that went away forgotten by the rate limiter",
    )
    status, _, _ = http(server, "/udf/time", **bearer("passer-by-0"))  # served as new
    assert status == 200
