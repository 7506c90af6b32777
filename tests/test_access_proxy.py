"""Behind a reverse proxy or tunnel on the same machine (README, "Behind a reverse proxy"):
the real server is sent the headers a proxy adds, no proxy needed.

One server (``AUTH=none``, ``PUBLIC_URL`` under a path, two sockets per address) serves
every test; each test uses its own forwarded addresses, so the limits do not mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from backend.serving import uvicorn_config
from backend.settings import load_settings
from tests.harness import ServerProcess, WsClient, base_env, populate

PUBLIC_URL = "https://charts.example.com:443/candlewire/"
PUBLIC_ORIGIN = "https://charts.example.com"  # what a browser sends (no default port)
PER_ADDRESS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("proxy")
    env = base_env(
        tmp,
        PROVIDERS="counting",
        PUBLIC_URL=PUBLIC_URL,
        MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
    )
    env.pop("FORWARDED_ALLOW_IPS", None)  # uvicorn's default: the proxy is on 127.0.0.1
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


async def refused_status(url: str, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await WsClient.open(url, **kwargs)
    return refused.value.response.status_code


async def pong(client: WsClient, number: int) -> None:
    await client.send({"type": "ping", "id": number})
    assert (await client.wait_for("pong", lambda m: m.get("id") == number))["id"] == number


async def test_the_public_urls_origin_may_connect_when_the_proxy_rewrites_host(
    server: ServerProcess,
) -> None:
    # nginx sends Host: 127.0.0.1:8000 (proxy_pass's host) unless told `proxy_set_header
    # Host $host`; ngrok's --host-header=rewrite, cloudflared's httpHostHeader and Tailscale's
    # serve do the same. The page at PUBLIC_URL then opened no socket (403), though its
    # origin is the server's own. The websockets client sends Host: 127.0.0.1:<port>.
    for path in ("/websocket/", "/openbb/live_grid_ws"):
        url = server.ws_url.replace("/websocket/", path)
        client = await WsClient.open(url, origin=PUBLIC_ORIGIN)
        await client.close()
    client = await WsClient.open(server.ws_url, origin=PUBLIC_ORIGIN)
    await pong(client, 1)
    await client.close()
    # other origins stay refused: http:// and another port are other origins
    for foreign in ("https://evil.example", "http://charts.example.com", PUBLIC_ORIGIN + ":8443"):
        assert await refused_status(server.ws_url, origin=foreign) == 403, foreign


async def test_forwarded_for_from_the_local_proxy_is_the_address_limits_count(
    server: ServerProcess,
) -> None:
    # uvicorn's FORWARDED_ALLOW_IPS default (127.0.0.1) trusts a proxy on this machine: each
    # client behind it is its own address for the limits (loopback itself is exempt)
    def of(address: str) -> dict[str, object]:
        return {"additional_headers": {"X-Forwarded-For": address}}

    opened = [await WsClient.open(server.ws_url, **of("203.0.113.7")) for _ in range(PER_ADDRESS)]
    assert await refused_status(server.ws_url, **of("203.0.113.7")) == 429
    # a proxy appending to a chain the client sent: the proxy's entry (the last) counts
    assert await refused_status(server.ws_url, **of("198.51.100.1, 203.0.113.7")) == 429
    other = await WsClient.open(server.ws_url, **of("203.0.113.8"))
    await pong(other, 2)
    for client in (*opened, other):
        await client.close()


def test_forwarded_allow_ips_in_dot_env_reaches_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn reads ``FORWARDED_ALLOW_IPS`` from the process's environment only: a line in
    ``.env`` (where the README puts every setting) was ignored, and a proxy in a container
    was not believed. It is a setting now, handed to uvicorn."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSV_FOLDER_PATH", str(tmp_path))
    assert "172.17.0.1" not in uvicorn_config(load_settings()).forwarded_allow_ips
    (tmp_path / ".env").write_text("FORWARDED_ALLOW_IPS=172.17.0.1,10.0.0.0/8\n")
    trusted = uvicorn_config(load_settings()).forwarded_allow_ips
    assert "172.17.0.1" in trusted and "10.0.0.0/8" in trusted, trusted
