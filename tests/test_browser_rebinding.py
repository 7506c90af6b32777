"""DNS rebinding in a real browser: headless Chromium resolves an outside name to 127.0.0.1
(``--host-resolver-rules``), as it does once a rebinding site has flipped its DNS record,
so that name's pages are the open server's (``AUTH=none``) own origin to the browser. The
server refuses that name: the page, the data routes and the socket; this machine's names
keep the page working.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browsing import MS, chromium, page_server
from tests.harness import ServerProcess, seconds

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REBOUND = "rebind.attacker-site.net"  # a name in a public domain, as a rebinding site has
READ = """async (url) => {
    const reply = await fetch(url);
    return [reply.status, await reply.text()];
}"""
SOCKET = """(url) => new Promise((done) => {
    const socket = new WebSocket(url);
    socket.onopen = () => { socket.close(); done("open"); };
    socket.onerror = () => done("refused");
})"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with page_server(tmp_path_factory.mktemp("rebinding"), PROVIDERS="counting") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1") as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(seconds(10) * MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def origin(server: ServerProcess, host: str) -> str:
    return f"{host}:{server.url.rsplit(':', 1)[1]}"


def test_a_rebound_name_gets_no_page_no_data_and_no_socket(
    server: ServerProcess, page: Page
) -> None:
    rebound = origin(server, REBOUND)
    response = page.goto(f"http://{rebound}/")
    assert response is not None and response.status == 403
    assert "ALLOWED_HOSTS" in (page.text_content("body") or "")
    # script of that origin (what the rebinding site's page runs): same origin, refused
    status, body = page.evaluate(READ, "/api/history?source=counting&name=AAA&interval=1h")
    assert status == 403 and "ALLOWED_HOSTS" in body, body
    assert page.evaluate(SOCKET, f"ws://{rebound}/websocket/") == "refused"


def test_this_machines_name_still_gets_the_live_page(server: ServerProcess, page: Page) -> None:
    local = origin(server, "localhost")
    response = page.goto(f"http://{local}/")
    assert response is not None and response.status == 200
    status, body = page.evaluate(READ, "/api/symbols?q=AAA")
    assert status == 200 and "AAA" in body, body
    assert page.evaluate(SOCKET, f"ws://{local}/websocket/") == "open"


def test_the_rebound_name_is_served_once_allowed(tmp_path: Path, browser: Browser) -> None:
    """The operator who means that name (a tunnel's, a proxy's) lists it."""
    with page_server(tmp_path, PROVIDERS="counting", ALLOWED_HOSTS=REBOUND) as allowed:
        context = browser.new_context()
        try:
            page = context.new_page()
            rebound = origin(allowed, REBOUND)
            response = page.goto(f"http://{rebound}/")
            assert response is not None and response.status == 200
            assert page.evaluate(SOCKET, f"ws://{rebound}/websocket/") == "open"
        finally:
            context.close()
