"""DNS rebinding against the default, open server (``AUTH=none`` on 127.0.0.1).

A web page whose site resolves its own name to 127.0.0.1 is, to the browser, the server's
own origin: its requests carry ``Host: <its name>`` and, on a socket, a matching ``Origin``.
The real server refuses every route and socket for such a ``Host`` (403 naming
``ALLOWED_HOSTS``) and serves this machine's names and IP addresses as before. The requests
here are what a browser sends after the rebinding: plain HTTP with that ``Host``, and a
socket upgrade written byte for byte.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.access.hosts import PRIVATE_SUFFIXES, HostPolicy, host_name
from tests.harness import ServerProcess, base_env, populate, seconds

REBOUND = "rebind.attacker-site.net"  # a name in a public domain, as a rebinding site has
ROUTES = (
    "/",
    "/health",
    "/api/symbols?q=AAA",
    "/api/history?source=counting&name=AAA&interval=1h&count=2",
    "/api/alerts",
    "/udf/config",
    "/udf/history?symbol=AAA&resolution=60&to=2000000000&countback=2",
    "/openbb/bars?symbol=AAA&interval=1h",
    "/widgets.json",
    "/apps.json",
    "/metrics",
)
SOCKETS = ("/websocket/", "/openbb/live_grid_ws")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("rebinding")
    env = base_env(
        tmp, PROVIDERS="counting", ALLOWED_HOSTS="charts.mycompany.com,*.tail1234.ts.net"
    )
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def http(server: ServerProcess, path: str, host: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    text = body.decode()
    return status, json.loads(text) if text[:1] in ("{", "[") else text


def upgrade(server: ServerProcess, path: str, host: str, origin: str) -> int:
    """The status a browser's socket upgrade from ``origin`` to ``host`` gets."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port_of(server)), seconds(10)) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_host_the_server_does_not_have(
    server: ServerProcess, path: str
) -> None:
    status, body = http(server, path, f"{REBOUND}:{port_of(server)}")
    assert status == 403, body
    assert body["error"] == "forbidden" and "ALLOWED_HOSTS" in body["message"], body
    assert REBOUND in body["message"], body
    if path.startswith("/udf/"):  # the datafeed's own error shape, as for every refusal
        assert body["s"] == "error", body


@pytest.mark.parametrize("path", SOCKETS)
def test_a_rebound_page_cannot_open_a_socket(server: ServerProcess, path: str) -> None:
    rebound = f"{REBOUND}:{port_of(server)}"
    assert upgrade(server, path, rebound, f"http://{rebound}") == 403
    local = f"localhost:{port_of(server)}"
    assert upgrade(server, path, local, f"http://{local}") == 101


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "charts.localhost",
        "mybox.local",  # mDNS
        "mybox.lan",
        "hub.default.svc.cluster.local",  # Kubernetes' service names
        "db.internal",
        "LOCALHOST.",
        socket.gethostname(),
        "192.168.1.20",  # the machine's LAN address (HOST=0.0.0.0): an address is no DNS name
        "x",  # a single label (no web site can make one resolve), as scripts write
        "candlewire.test",  # RFC 6761's .test
        "charts.mycompany.com",  # ALLOWED_HOSTS
        "mybox.tail1234.ts.net",  # ALLOWED_HOSTS' *.tail1234.ts.net
    ],
)
def test_this_machines_names_and_addresses_are_served(server: ServerProcess, host: str) -> None:
    status, body = http(server, "/api/symbols?q=AAA", f"{host}:{port_of(server)}")
    assert status == 200, body
    assert body["results"], body


def test_refusals_are_logged_naming_the_host_without_a_line_each(server: ServerProcess) -> None:
    def lines() -> int:
        return server.log_path.read_text().count("is not a name of this server")

    before = lines()
    for _ in range(20):
        assert http(server, "/health", f"{REBOUND}:1")[0] == 403
    assert lines() - before <= 1
    assert f"refused: the Host '{REBOUND}:" in server.log_path.read_text()


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM:8000", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8000", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1", None),
        ("host:port", None),
        ("a:b:c", None),
        ("", None),
        (":80", None),
    ],
)
def test_host_name_reads_a_host_header(header: str, name: str | None) -> None:
    assert host_name(header) == name


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@given(st.one_of(st.text(max_size=60), st.from_regex(r"\[?[0-9a-f:.]{1,20}\]?(:[0-9]{1,5})?")))
def test_the_policy_decides_any_header_without_failing(header: str) -> None:
    policy = HostPolicy(["*.example.com"], "https://charts.example.org/md", enforce=True)
    name = host_name(header)
    assert policy.allows(header) == (
        name is not None
        and (
            "." not in name
            or name in policy.names
            or name.endswith((*PRIVATE_SUFFIXES, ".example.com"))
            or is_ip(name)
        )
    )
    assert "charts.example.org" in policy.names and "localhost" in policy.names


def test_the_policy_is_off_with_credentials_unless_hosts_are_listed() -> None:
    assert HostPolicy([], "", enforce=False).allows(f"{REBOUND}:80")
    assert not HostPolicy(["charts.lan"], "", enforce=False).allows(f"{REBOUND}:80")
    assert HostPolicy(["*"], "", enforce=True).allows(f"{REBOUND}:80")
    public = HostPolicy([], "https://charts.example.org/md", enforce=True)
    assert public.allows("charts.example.org") and not public.allows("example.org")
    assert HostPolicy([], "", enforce=True).allows(None)  # HTTP/1.0: no Host at all
