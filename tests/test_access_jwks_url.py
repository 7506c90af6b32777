"""``JWT_PUBLIC_KEY`` as a JWKS URL, against the real server and a fake identity provider
on 127.0.0.1 that serves its keys as Auth0, Keycloak and Okta do (``GET .../jwks.json``, a
``{"keys": [...]}`` of RSA and EC public JWKs with ``kid``), counts the fetches, and can
rotate, remove a key, or fail.

What a user of an identity provider meets: a rotation (tokens signed with a new key work at
once), a key removed (refused after ``JWKS_REFRESH_SECONDS``), tokens with made-up ``kid``
values (no fetch storm), the provider down (the keys fetched before stay) and a URL that
gives no keys (the start stops naming ``JWT_PUBLIC_KEY``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.exceptions import InvalidStatus

from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    populate,
    refused_start,
    seconds,
    until,
)

KEYS: dict[str, Any] = {
    "a": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "b": ec.generate_private_key(ec.SECP256R1()),
    "c": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(kid: str) -> dict[str, Any]:
    key = KEYS[kid]
    family = RSAAlgorithm if kid != "b" else ECAlgorithm
    return {**json.loads(family.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def token(kid: str, signer: Any = None, sub: str = "alice") -> str:
    key = KEYS[kid] if signer is None else signer
    algorithm = "ES256" if kid == "b" and signer is None else "RS256"
    claims = {"sub": sub, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


class IdentityProvider:
    """The fake identity provider: its JWKS at ``url``, ``fetches`` counted, ``status``
    other than 200 answered as an error."""

    def __init__(self) -> None:
        self.kids = ["a"]
        self.status = 200
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                listed = {"keys": [jwk(kid) for kid in provider.kids]}
                body = json.dumps(listed).encode() if provider.status == 200 else b"{}"
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyedServer(ServerProcess):
    """The harness's server, its health checks carrying a token of key ``a``."""

    def get(self, path: str) -> Any:
        status, body = call(self, path, token("a", sub="harness"))
        assert status == 200, body
        return body


def call(server: ServerProcess, path: str, bearer: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.url + path, headers={"Authorization": f"Bearer {bearer}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body)


def start(tmp: Path, provider: IdentityProvider, **env: str) -> KeyedServer:
    full = base_env(tmp, PROVIDERS="counting", AUTH="jwt", JWT_PUBLIC_KEY=provider.url, **env)
    assert populate(full).returncode == 0
    return KeyedServer(full, tmp / "server.log")


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider) -> Iterator[Any]:
    with start(tmp_path_factory.mktemp("jwks-url"), idp) as running:
        yield running


SYMBOLS = "/api/symbols?q=AAA"


def test_a_token_of_a_listed_key_is_served_and_others_are_not(server: KeyedServer) -> None:
    status, body = call(server, SYMBOLS, token("a"))
    assert status == 200 and body["results"], body
    status, body = call(server, SYMBOLS, token("a", signer=STRANGER))
    assert status == 401 and body["error"] == "unauthorized", body


def test_a_rotated_key_works_with_its_first_token(
    server: KeyedServer, idp: IdentityProvider
) -> None:
    idp.kids = ["a", "b"]  # the provider publishes a new key and signs with it
    before = idp.fetches
    status, body = call(server, SYMBOLS, token("b"))
    assert status == 200 and body["results"], body
    assert idp.fetches == before + 1
    assert call(server, SYMBOLS, token("b", sub="again"))[0] == 200
    assert idp.fetches == before + 1  # known now: no fetch


def test_made_up_key_ids_cost_the_provider_one_fetch_per_cooldown(
    server: KeyedServer, idp: IdentityProvider
) -> None:
    before = idp.fetches
    began = time.monotonic()
    for n in range(30):
        status, body = call(server, SYMBOLS, token(f"made-up-{n}", signer=STRANGER))
        assert status == 401, body
    took = time.monotonic() - began
    assert idp.fetches - before <= 1 + int(took // 10), (idp.fetches - before, took)
    assert call(server, SYMBOLS, token("a"))[0] == 200


async def test_a_socket_of_a_new_key_opens_a_removed_key_is_refused_an_outage_keeps_keys(
    tmp_path: Path,
) -> None:
    provider = IdentityProvider()
    try:
        with start(tmp_path, provider, JWKS_REFRESH_SECONDS="1") as running:
            provider.kids = ["a", "c"]  # a new key, first used by a socket's token
            opened: list[WsClient] = []

            async def opens() -> bool:
                try:
                    opened.append(await WsClient.open(running.ws_url + f"?token={token('c')}"))
                except InvalidStatus as refused:  # within the cooldown of the last fetch
                    assert refused.response.status_code == 401
                return bool(opened)

            deadline = time.monotonic() + seconds(15)
            while not await opens():  # polled: a refusal within the cooldown, then the fetch
                assert time.monotonic() < deadline, "the socket of the new key did not open"
                await asyncio.sleep(0.1)
            await opened[0].send({"type": "ping", "id": 1})
            await opened[0].wait_for("pong")
            await opened[0].close()
            provider.kids = ["a"]  # c revoked (leaked): gone from the JWKS

            def refused() -> bool:
                return call(running, SYMBOLS, token("c"))[0] == 401

            until(refused, 15, "the removed key refused")
            provider.status = 500  # the identity provider fails from now on
            fetches = provider.fetches

            def fetched_in_vain() -> bool:  # each request past the refresh age fetches again
                assert call(running, SYMBOLS, token("a"))[0] == 200  # the keys fetched before
                return provider.fetches > fetches + 1

            until(fetched_in_vain, 15, "fetches that fail")
            log = running.log_path.read_text()
            assert "the 1 keys fetched before stay" in log and "500" in log, log[-2000:]
    finally:
        provider.close()


@pytest.mark.parametrize("fault", ["unreachable", "an HTTP error", "no keys"])
def test_a_jwks_url_that_gives_no_keys_stops_the_start_naming_it(
    tmp_path: Path, fault: str
) -> None:
    provider = IdentityProvider()
    if fault == "an HTTP error":
        provider.status = 404
    elif fault == "no keys":
        provider.kids = []
    url = provider.url
    if fault == "unreachable":
        provider.close()
    try:
        env = base_env(tmp_path, PROVIDERS="counting", AUTH="jwt", JWT_PUBLIC_KEY=url)
        done = refused_start(env)
        assert done.stderr.startswith("candlewire: JWT_PUBLIC_KEY: cannot fetch the JWKS at ")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    finally:
        if fault != "unreachable":
            provider.close()
