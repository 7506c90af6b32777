"""The web page behind a reverse proxy under a path prefix (``https://example.com/candlewire/``
proxied to the server's ``/``, as nginx's ``location /candlewire/ { proxy_pass
http://127.0.0.1:8000/; }`` or Caddy's ``handle_path /candlewire/*`` do).

The proxy here is a small one in a thread: it strips the prefix from each request line,
answers 404 for every path outside it (as a proxy serving only the prefix does), and pipes
a WebSocket upgrade through.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.browsing import browser, sized_page
from tests.harness import ServerProcess, base_env, populate

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["browser"]

pytestmark = pytest.mark.browser

PREFIX = "/candlewire"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class PrefixProxy(socketserver.ThreadingTCPServer):
    """``PREFIX/...`` on its port to ``/...`` at ``upstream``; anything else is 404."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.paths: list[str] = []  # every request path it was sent, as sent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}/"


class _Forward(socketserver.BaseRequestHandler):
    server: PrefixProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        line, *headers = head.split(b"\r\n")
        method, path, version = line.split(b" ")
        self.server.paths.append(path.decode())
        if not path.startswith(PREFIX.encode() + b"/"):
            client.sendall(NOT_FOUND)
            return
        upgrade = any(h.lower().startswith(b"upgrade:") for h in headers)
        if not upgrade:  # one request per connection: the next one's line is rewritten too
            headers = [h for h in headers if not h.lower().startswith(b"connection:")]
            headers.append(b"Connection: close")
        line = b" ".join((method, path[len(PREFIX) :], version))
        upstream = socket.create_connection(self.server.upstream)
        upstream.sendall(b"\r\n".join((line, *headers)) + b"\r\n\r\n" + rest)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefixProxy]:
    tmp = tmp_path_factory.mktemp("browser-proxy")
    env = base_env(tmp, PROVIDERS="counting", CANDLEWIRE_TEST_PERIOD="0.25")
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp / "server.log") as server:
        parts = urlsplit(server.url)
        running = PrefixProxy((parts.hostname or "127.0.0.1", parts.port or 0))
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield running
        running.shutdown()
        running.server_close()


def test_the_page_under_a_path_prefix_loads_and_streams_through_the_proxy(
    browser: Browser, proxy: PrefixProxy
) -> None:
    # Before, the page asked for /vendor/... (its chart library: no chart at all) and
    # /websocket/ at the proxy's root, outside the prefix.
    errors: list[str] = []
    with sized_page(browser, 1440, 900, False) as page:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{proxy.url}?source=counting&s=AAA&i=1m")
        page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
        page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    outside = [path for path in proxy.paths if not path.startswith(PREFIX + "/")]
    assert outside == [], outside
    assert any(path.startswith(PREFIX + "/websocket/") for path in proxy.paths), proxy.paths
    assert errors == [], errors
