"""A hostile client of access control, written from DESIGN section 8 and README "Security"
(not from the other access tests): forged and malformed tokens, tokens restricted to some
symbols reaching for others, foreign origins and limits dodged through a second route,
against the real server on 127.0.0.1 with real WebSockets and plain HTTP.

Two servers: ``AUTH=jwt`` with ``JWT_SECRET`` and the default ``JWT_ALGORITHMS`` (which
name asymmetric algorithms too), and ``AUTH=jwt`` with a JWKS file of an RSA and an EC key.
Each test names its own token subject, so budgets do not mix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.exceptions import InvalidStatus

from tests.harness import ServerProcess, WsClient, base_env, eventually, populate, seconds

SECRET = "hostile-secret-that-is-long-enough-for-hs256"
AUDIENCE, ISSUER = "candlewire-hostile", "https://idp.example"
ALLOWED_ORIGIN = "https://charts.example.com"
FREE_SUBSCRIPTIONS = 2
HISTORY = "/api/history?source=counting&name=AAA&interval=1h&count=2"
HTTP_ROUTES = (
    HISTORY,
    "/api/symbols?q=AAA",
    "/udf/history?symbol=AAA&resolution=60&to=2000000000&countback=2",
    "/udf/quotes?symbols=AAA",
    "/openbb/live_grid?symbol=AAA",
    "/openbb/bars?symbol=AAA&interval=1h",
    "/widgets.json",
    "/metrics",
)
SOCKETS = ("/websocket/", "/openbb/live_grid_ws")


class KeyedServer(ServerProcess):
    """The harness's server, its health checks carrying a token (``signer`` makes it)."""

    signer: Any = None

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.signer('harness')}"}
        )
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def claims(sub: str, **more: Any) -> dict[str, Any]:
    payload = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 3600}
    payload.update(more)
    return {name: value for name, value in payload.items() if value is not None}


def token(sub: str, **more: Any) -> str:
    return jwt.encode(claims(sub, **more), SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="jwt",
        JWT_SECRET=SECRET,
        JWT_AUDIENCE=AUDIENCE,
        JWT_ISSUER=ISSUER,
        WS_ALLOWED_ORIGINS=ALLOWED_ORIGIN,
        ACCESS_TIERS=json.dumps({"free": {"max_subscriptions": FREE_SUBSCRIPTIONS}}),
        CANDLEWIRE_TEST_PERIOD="0.2",
    )
    assert populate(env).returncode == 0
    running = KeyedServer(env, tmp / "server.log")
    running.signer = token
    with running:
        yield running


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp = tmp_path_factory.mktemp("hostile-jwks")
    keys = []
    for kid, text in (
        ("rsa", RSAAlgorithm.to_jwk(RSA_KEY.public_key())),
        ("ec", ECAlgorithm.to_jwk(EC_KEY.public_key())),
    ):
        keys.append({**json.loads(text), "kid": kid})
    jwks_text = json.dumps({"keys": keys})
    (tmp / "jwks.json").write_text(jwks_text)
    env = base_env(
        tmp,
        PROVIDERS="counting",
        AUTH="jwt",
        JWT_PUBLIC_KEY=str(tmp / "jwks.json"),
        JWT_AUDIENCE=AUDIENCE,
    )
    assert populate(env).returncode == 0
    running = KeyedServer(env, tmp / "server.log")
    running.signer = lambda sub: jwt.encode(
        claims(sub), RSA_KEY, algorithm="RS256", headers={"kid": "rsa"}
    )
    with running:
        yield running, jwks_text


def http(server: ServerProcess, path: str, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=seconds(15)) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    text = body.decode()
    return status, (json.loads(text) if text[:1] in ("{", "[") else text)


async def upgrade(server: ServerProcess, path: str, **kwargs: Any) -> int:
    """The status of a socket upgrade: 101 when it opened (then closed), else the refusal."""
    try:
        client = await WsClient.open(server.ws_url.replace("/websocket/", path), **kwargs)
    except InvalidStatus as refused:
        return refused.response.status_code
    await client.close()
    return 101


def segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def refused_everywhere(server: ServerProcess, bad: str) -> list[str]:
    """Where ``bad`` was not refused with 401 (HTTP routes, and both socket routes with the
    token as a header and as the ``token`` parameter)."""
    wrong = []
    for path in HTTP_ROUTES:
        status, body = http(server, path, Authorization=f"Bearer {bad}")
        if status != 401 or body.get("error") != "unauthorized":
            wrong.append(f"GET {path}: {status} {str(body)[:120]}")
    for path in SOCKETS:
        header = await upgrade(server, path, additional_headers={"Authorization": f"Bearer {bad}"})
        query = await upgrade(server, f"{path}?token={bad}")
        if (header, query) != (401, 401):
            wrong.append(f"socket {path}: header {header}, query {query}")
    return wrong


# ---------------------------------------------------------------------- forged tokens


def hs256(payload: dict[str, Any], secret: str, **header: str) -> str:
    """An HS256 token signed with any text (PyJWT refuses a key that looks public)."""
    signed = segment({"alg": "HS256", "typ": "JWT", **header}) + "." + segment(payload)
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def asymmetric_headed_tokens() -> dict[str, str]:
    """Tokens a stranger makes with keys of its own, for the algorithms ``JWT_ALGORITHMS``
    names by default besides HS256."""
    payload = claims("stranger")
    return {
        "ES256": jwt.encode(payload, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        "RS256": jwt.encode(payload, RSA_KEY, algorithm="RS256"),
        "EdDSA": jwt.encode(payload, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA"),
    }


async def test_a_token_of_an_asymmetric_algorithm_is_a_401_on_a_secret_server_not_a_500(
    server: ServerProcess,
) -> None:
    """With ``JWT_SECRET`` and the default algorithms, a token whose header says ES256 made
    PyJWT load the secret as a PEM key: ``ValueError``, 500 on every route (``/health``
    too) and on both socket upgrades, a traceback per request, for anyone."""
    for name, forged in asymmetric_headed_tokens().items():
        assert await refused_everywhere(server, forged) == [], name
        status, body = http(server, "/health", Authorization=f"Bearer {forged}")
        assert (status, sorted(body)) == (200, ["status", "version"]), name
    assert "Traceback" not in server.log_path.read_text()


async def test_algorithm_confusion_and_mismatched_keys_are_a_401_on_a_jwks_server(
    jwks_server: tuple[ServerProcess, str],
) -> None:
    """An HS256 token signed with the JWKS text (public: the classic algorithm confusion),
    an RS256 token naming the EC key, an ES256 one naming the RSA key: each is refused
    like any bad token; they were 500s (PyJWT's ``TypeError`` on a key object)."""
    server, jwks_text = jwks_server
    payload = claims("confused")
    forged = {
        "HS256 with the JWKS text": hs256(payload, jwks_text, kid="rsa"),
        "RS256 naming the EC key": jwt.encode(
            payload, RSA_KEY, algorithm="RS256", headers={"kid": "ec"}
        ),
        "ES256 naming the RSA key": jwt.encode(
            payload, EC_KEY, algorithm="ES256", headers={"kid": "rsa"}
        ),
    }
    for name, bad in forged.items():
        assert await refused_everywhere(server, bad) == [], name
    good = jwt.encode(payload, EC_KEY, algorithm="ES256", headers={"kid": "ec"})
    assert http(server, HISTORY, Authorization=f"Bearer {good}")[0] == 200
    assert "Traceback" not in server.log_path.read_text()


@pytest.mark.parametrize(
    "bad",
    [
        "alg-none",
        "wrong-audience",
        "wrong-issuer",
        "expired",
        "not-yet-valid",
        "no-exp",
        "other-secret",
        "junk",
    ],
)
async def test_tokens_that_must_not_pass_are_a_401_on_every_route(
    server: ServerProcess, bad: str
) -> None:
    now = int(time.time())
    forged = {
        "alg-none": segment({"alg": "none", "typ": "JWT"}) + "." + segment(claims("n")) + ".",
        "wrong-audience": token("a", aud="someone-else"),
        "wrong-issuer": token("i", iss="https://evil.example"),
        "expired": token("e", exp=now - 120),
        "not-yet-valid": token("f", nbf=now + 3600),
        "no-exp": token("x", exp=None),
        "other-secret": jwt.encode(claims("o"), "x" * 40, algorithm="HS256"),
        "junk": "not.a.token",
    }[bad]
    assert await refused_everywhere(server, forged) == []


async def test_a_token_issued_by_a_clock_a_few_seconds_ahead_is_accepted(
    server: ServerProcess,
) -> None:
    """An identity provider's clock runs a few seconds ahead of the server's: its fresh
    token says ``iat`` / ``nbf`` "in 5 s". PyJWT, without leeway, refused it (401
    ``ImmatureSignatureError``) until the clocks agreed: every login failed for seconds."""
    ahead = int(time.time()) + 5
    fresh = token("skewed", iat=ahead, nbf=ahead)
    status, body = http(server, HISTORY, Authorization=f"Bearer {fresh}")
    assert status == 200, body
    assert await upgrade(server, f"/websocket/?token={fresh}") == 101


def test_the_issuer_matches_with_or_without_a_trailing_slash(server: ServerProcess) -> None:
    """Auth0 (and Authentik) issue ``iss: "https://tenant.auth0.com/"``, with a slash that
    their dashboards do not show: ``JWT_ISSUER`` set without it (or the other way round)
    refused every token with ``InvalidIssuerError``. Another issuer is still a 401."""
    for iss in (ISSUER + "/", ISSUER):
        status, body = http(server, HISTORY, Authorization=f"Bearer {token('slash', iss=iss)}")
        assert status == 200, (iss, body)
    for other in (ISSUER + "//", ISSUER + "/x", ISSUER + ".evil", ISSUER[:-1]):
        status, _ = http(server, HISTORY, Authorization=f"Bearer {token('slash', iss=other)}")
        assert status == 401, other


async def test_a_token_whose_subject_or_id_is_a_number_is_accepted(
    server: ServerProcess,
) -> None:
    """Issuers that put a numeric user id in ``sub`` (Django's simplejwt, MediaWiki OAuth)
    or ``jti``: PyJWT 2.10 refuses them ("Subject must be a string"), and every such login
    was a 401. The number names the client; a ``sub`` of another shape is still a 401."""
    numeric = jwt.encode({**claims("ignored"), "sub": 12345, "jti": 987}, SECRET)
    status, body = http(server, HISTORY, Authorization=f"Bearer {numeric}")
    assert status == 200, body
    assert await upgrade(server, f"/websocket/?token={numeric}") == 101
    for bad in ({"id": 1}, [1], True):
        shaped = jwt.encode({**claims("ignored"), "sub": bad}, SECRET)
        status, body = http(server, HISTORY, Authorization=f"Bearer {shaped}")
        assert (status, body.get("error")) == (401, "unauthorized"), bad


async def test_a_base64_api_key_pasted_raw_into_the_query_is_accepted(tmp_path: Path) -> None:
    """``openssl rand -base64 32`` makes keys with ``+``, ``/`` and ``=``; pasted into
    ``?token=`` without encoding (the README's ``ws://host:8000/websocket/?token=<token>``),
    its ``+`` was read as a space (form decoding) and the key was a 401. An encoded key
    (``%2B``) is read the same."""
    key = "q+Zx/9Kf2w+0lJ1uVb6T7nA8sD3eR4yH5gU2iO1pLkM="
    env = base_env(tmp_path, PROVIDERS="counting", AUTH="token", API_KEYS=key)
    assert populate(env).returncode == 0
    running = KeyedServer(env, tmp_path / "server.log")
    running.signer = lambda sub: key
    with running:
        assert http(running, f"{HISTORY}&token={key}")[0] == 200
        assert await upgrade(running, f"/websocket/?token={key}") == 101
        encoded = urllib.parse.quote(key, safe="")
        assert http(running, f"{HISTORY}&token={encoded}")[0] == 200
        assert await upgrade(running, f"/openbb/live_grid_ws?token={encoded}") == 101
        spaced = key.replace("+", "%20")  # a space is not a plus
        assert http(running, f"{HISTORY}&token={spaced}")[0] == 401


def keys_file_server(tmp_path: Path, text: str, key: str) -> tuple[Path, KeyedServer]:
    """A server (not started) with ``AUTH=token`` and ``API_KEYS_FILE`` holding ``text``,
    whose own requests (health checks) use ``key``; and the file."""
    keys = tmp_path / "keys.txt"
    keys.write_text(text)
    env = base_env(tmp_path, PROVIDERS="counting", AUTH="token", API_KEYS_FILE=str(keys))
    assert populate(env).returncode == 0
    running = KeyedServer(env, tmp_path / "server.log")
    running.signer = lambda sub: key
    return keys, running


async def test_a_key_added_to_or_revoked_from_the_keys_file_counts_without_a_restart(
    tmp_path: Path,
) -> None:
    """``API_KEYS_FILE`` was read once at the start: a key revoked from the file (leaked)
    kept working, and a key added to it was refused, until the server restarted."""
    old, new = "old-key-0123456789abcdef", "new-key-0123456789abcdefgh"
    keys, running = keys_file_server(tmp_path, f"# clients\n{old}\n", old)
    with running:
        assert http(running, HISTORY, Authorization=f"Bearer {old}")[0] == 200
        keys.write_text(f"# clients\n{new}\n")  # old revoked, new added
        assert http(running, HISTORY, Authorization=f"Bearer {new}")[0] == 200
        assert http(running, HISTORY, Authorization=f"Bearer {old}")[0] == 401
        assert await upgrade(running, f"/websocket/?token={new}") == 101
        keys.unlink()  # a file gone (being replaced): the keys read before stay
        assert http(running, HISTORY, Authorization=f"Bearer {new}")[0] == 200


async def test_a_jwks_file_rotated_while_the_server_runs_is_read_again(tmp_path: Path) -> None:
    """Identity providers rotate keys (Auth0, Okta, Keycloak, Cognito publish a JWKS that a
    cron job copies to a file): the file was read once, so tokens of the new ``kid`` were a
    401 until a restart. A file that cannot be read then keeps the keys read before."""
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(*pairs: tuple[str, Any]) -> str:
        keys = [{**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": n} for n, k in pairs]
        return json.dumps({"keys": keys})

    def signed(kid: str, key: Any) -> str:
        return jwt.encode(claims("rotated"), key, algorithm="RS256", headers={"kid": kid})

    path = tmp_path / "jwks.json"
    path.write_text(jwks(("old", RSA_KEY)))
    env = base_env(
        tmp_path, PROVIDERS="counting", AUTH="jwt", JWT_PUBLIC_KEY=str(path), JWT_AUDIENCE=AUDIENCE
    )
    assert populate(env).returncode == 0
    running = KeyedServer(env, tmp_path / "server.log")
    running.signer = lambda sub: signed("old", RSA_KEY)
    with running:
        assert http(running, HISTORY, Authorization=f"Bearer {signed('new', new_key)}")[0] == 401
        path.write_text(jwks(("old", RSA_KEY), ("new", new_key)))
        assert http(running, HISTORY, Authorization=f"Bearer {signed('new', new_key)}")[0] == 200
        assert await upgrade(running, f"/websocket/?token={signed('new', new_key)}") == 101
        path.write_text("{not json")  # half written: the keys read before stay
        assert http(running, HISTORY, Authorization=f"Bearer {signed('new', new_key)}")[0] == 200


async def test_an_open_socket_of_a_revoked_key_is_closed(tmp_path: Path) -> None:
    """A leaked key removed from ``API_KEYS_FILE``: new requests with it are refused, but
    the sockets it had opened kept streaming to whoever held it, for good. They are closed
    with 1008 "API key revoked"; a socket of a key still listed stays open."""
    leaked, kept = "leaked-key-0123456789abcdef", "kept-key-0123456789abcdef"
    keys, running = keys_file_server(tmp_path, f"{leaked}\n{kept}\n", kept)
    with running:
        url = running.ws_url
        sockets = {
            "leaked": await WsClient.open(url, additional_headers={"X-API-Key": leaked}),
            "kept": await WsClient.open(url, additional_headers={"X-API-Key": kept}),
            "grid": await WsClient.open(
                url.replace("/websocket/", "/openbb/live_grid_ws") + f"?token={leaked}"
            ),
        }
        keys.write_text(f"{kept}\n")
        for name in ("leaked", "grid"):
            closed = sockets[name].connection
            await eventually(lambda c=closed: c.close_code is not None, 10, f"{name} closed")
            assert (closed.close_code, closed.close_reason) == (1008, "API key revoked"), name
        await sockets["kept"].send({"type": "ping", "id": 1})
        await sockets["kept"].wait_for("pong")
        for client in sockets.values():
            await client.close()


def test_a_megabyte_token_is_refused_by_size_before_it_is_read(server: ServerProcess) -> None:
    huge = token("huge", padding="x" * 1_000_000)
    status, _ = http(server, HISTORY, Authorization=f"Bearer {huge}")
    assert status == 431


def test_the_header_token_wins_over_the_query_token(server: ServerProcess) -> None:
    """README names three places for a token and no order; the Authorization header is read
    first, so a page's stale ``?token=`` cannot override the header a client sets."""
    good, bad = token("both"), "garbage"
    assert http(server, f"{HISTORY}&token={bad}", Authorization=f"Bearer {good}")[0] == 200
    assert http(server, f"{HISTORY}&token={good}", Authorization=f"Bearer {bad}")[0] == 401


# ---------------------------------------------------------------------- restricted tokens


async def test_a_token_restricted_to_one_symbol_reads_no_other_by_any_spelling_or_route(
    server: ServerProcess,
) -> None:
    limited = token("restricted", symbols=["counting:AAA"])
    auth = {"Authorization": f"Bearer {limited}"}
    for path in (
        "/api/history?source=counting&name=BBB&interval=1h&count=2",
        "/api/history?source=counting&name=bbb&interval=1h&count=2",
        "/openbb/bars?symbol=COUNTING:bbb&interval=1h",
        "/openbb/interval_options?symbol=bbb",
    ):
        status, body = http(server, path, **auth)
        assert (status, body["error"]) == (403, "forbidden"), path
    for path in (
        "/udf/history?symbol=COUNTING:bbb&resolution=60&to=2000000000&countback=2",
        "/udf/symbols?symbol=bbb",
    ):
        status, body = http(server, path, **auth)
        assert body["s"] == "error" and "permission" in body["errmsg"], path
    _, quotes = http(server, "/udf/quotes?symbols=bbb,counting:AAA", **auth)
    assert [entry["s"] for entry in quotes["d"]] == ["error", "ok"]
    _, rows = http(server, "/openbb/live_grid?symbol=AAA,bbb&symbol=counting:CCC", **auth)
    assert [row["price"] is None for row in rows] == [False, True, True]
    for path in ("/api/symbols?q=", "/udf/search?query=&limit=50", "/openbb/symbol_options"):
        text = json.dumps(http(server, path, **auth)[1])
        assert "BBB" not in text and "CCC" not in text and "AAA" in text, path

    client = await WsClient.open(f"{server.ws_url}?token={limited}")
    series = {"source": "counting", "name": "BBB", "interval": "1h"}
    sma = {
        "id": "sma",
        "indicator": {"id": "talib.overlap.SMA"},
        "inputs": {"timeperiod": 3},
        "dataMap": {"close": {**series, "value": "counting-BBB-1h-close", "dataKey": "close"}},
    }
    rule = {
        "type1": "data",
        "source1": "counting",
        "name1": "BBB",
        "interval1": "1h",
        "key1": "close",
        "comparator": ">",
        "type2": "value",
        "value2": "0",
    }
    await client.send(
        {"type": "data", **series, "count": 2},
        {"type": "data", **series, "name": "bbb", "count": 2},
        {"type": "data_history", **series, "end": "2030-01-01 00:00:00", "count": 2},
        {"type": "indicator", **sma, "count": 5, "stream": True},
        {
            "type": "alert",
            "message": "m",
            "rules": [rule],
            "operators": [],
            "indicators": {},
            "subscription": None,
        },
    )
    await eventually(lambda: len(client.of_type("error")) >= 5, 15, "five refusals")
    assert {m["code"] for m in client.of_type("error")} == {"forbidden"}
    assert all(
        m["data"] == [] for m in client.of_type("data_init") + client.of_type("data_history")
    )
    assert client.of_type("indicator_init")[0]["data"] == []
    # a scan whose template is BBB: its universe holds only what the token may read
    await client.send(
        {
            "type": "scan",
            "search": "counting",
            "rules": [rule],
            "operators": [],
            "indicators": {},
            "dataProviderConfig": {"data": [series]},
        }
    )
    done = await client.wait_for("scan_done", timeout=20)
    assert done["total"] == 1
    assert [r["data"]["name"] for r in client.of_type("scan_result")] in ([], ["AAA"])
    await client.close()


# ---------------------------------------------------------------------- origins


async def test_only_the_listed_origin_and_non_browsers_open_either_socket(
    server: ServerProcess,
) -> None:
    auth = f"?token={token('origins')}"
    refused = (
        "https://evil.example",
        "null",
        "https://charts.example.com:8443",
        "https://charts.example.com.evil.example",
        "http://charts.example.com",
        "http://localhost:5173",  # a list replaces localhost
    )
    for path in SOCKETS:
        for origin in refused:
            assert await upgrade(server, path + auth, origin=origin) == 403, (path, origin)
        assert await upgrade(server, path + auth, origin=ALLOWED_ORIGIN) == 101, path
        assert await upgrade(server, path + auth) == 101, path  # no Origin: not a browser
        assert await upgrade(server, path, origin=ALLOWED_ORIGIN) == 401, path


# ---------------------------------------------------------------------- limits


async def test_the_live_grid_counts_against_the_callers_subscription_limit(
    server: ServerProcess,
) -> None:
    """``MAX_SUBSCRIPTIONS_PER_CALLER`` (here a tier's ``max_subscriptions``) is "streamed
    series per client over all its sockets": the live grid's rows are streamed series too.
    They were never counted: a token of the free tier (2) streamed every symbol of a grid
    (up to 500 a socket, 20 sockets), and its /websocket/ subscriptions did not see them."""
    free = token("free-grid", tier="free")
    grid_url = server.ws_url.replace("/websocket/", "/openbb/live_grid_ws")
    grid = await WsClient.open(f"{grid_url}?token={free}")
    await grid.send_raw(json.dumps({"params": {"symbol": ["AAA", "BBB", "CCC"]}}))
    await eventually(lambda: len({m.get("symbol") for m in grid.messages}) >= 3, 15, "3 rows")
    by_symbol: dict[str, list[dict[str, Any]]] = {}

    def rows_seen() -> int:  # how many rows got several updates of their own
        by_symbol.clear()
        for message in grid.messages:
            by_symbol.setdefault(message["symbol"], []).append(message)
        return sum(len(rows) >= 3 for rows in by_symbol.values())

    await eventually(lambda: rows_seen() >= 2, 15, "several updates of the rows streamed")
    refused = [s for s, rows in by_symbol.items() if any(r.get("error") for r in rows)]
    assert len(refused) == 1, by_symbol
    assert "subscriptions" in by_symbol[refused[0]][0]["error"]
    assert all(r.get("price") is None for r in by_symbol[refused[0]])

    chart = await WsClient.open(f"{server.ws_url}?token={free}")
    await chart.send({"type": "data", "source": "counting", "name": "AAA", "interval": "5m"})
    error = await chart.wait_for("error")
    assert error["code"] == "limit_reached"
    await grid.send_raw(
        json.dumps({"params": {"symbol": []}})
    )  # the grid lets its rows go: slots free up
    deadline = time.monotonic() + seconds(10)
    while True:  # until the grid's change is applied: a request refused meanwhile is asked again
        errors = len(chart.of_type("error"))
        asked = len(chart.messages)
        await chart.send({"type": "data", "source": "counting", "name": "BBB", "interval": "5m"})
        await chart.wait_for("data_init", lambda m: m["name"] == "BBB", after=asked)
        if len(chart.of_type("error")) == errors:  # a refusal comes before its data_init
            break
        assert time.monotonic() < deadline, "the grid's rows never freed their slots"
    await asyncio.sleep(seconds(0.5))  # and no refusal follows it
    assert len(chart.of_type("error")) == errors
    await chart.close()
    await grid.close()
