"""The web page with access control on: a token in the page URL goes with its socket.

Sync Playwright runs its own event loop for the whole module, so this lives apart from the
asyncio tests of ``test_access_e2e``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser

from tests.browsing import browser
from tests.harness import ServerProcess, base_env, populate, seconds, until
from tests.test_access_e2e import server, token
from tests.test_browser import wait_for_bars

__all__ = ["browser", "server"]  # module-scoped fixtures, shared


def test_the_page_opened_with_a_token_streams_and_without_one_cannot(
    server: ServerProcess, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/?token={token('browser')}&source=counting&s=AAA&i=1m")
        wait_for_bars(page)
        page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
        badge = page.locator("#badge")
        badge.wait_for()
        page.wait_for_function("document.querySelector('#badge').textContent.includes('Live')")
        # Another browser (this one keeps the token it was given, for a reload).
        elsewhere = browser.new_context(viewport={"width": 1200, "height": 800})
        try:
            refused = elsewhere.new_page()
            refused.goto(f"{server.url}/?source=counting&s=AAA&i=1m")
            refused.wait_for_function(  # the upgrade was refused: the page retries
                "/Reconnecting|Offline/.test(document.querySelector('#badge').textContent)"
            )
            assert refused.evaluate("window.candlewire.charts[0].bars().length") == 0
        finally:
            elsewhere.close()
    finally:
        context.close()


def test_the_page_opened_with_a_token_opens_again_on_a_reload_and_from_a_bookmark(
    server: ServerProcess, browser: Browser
) -> None:
    """The page rewrites its URL with the view only (a shared link must not carry the key),
    which dropped the token: a reload, or the address bar bookmarked, left the page
    "Reconnecting" with an empty chart for good. The page keeps the token for the next
    load."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/?token={token('browser')}&source=counting&s=AAA&i=1m")
        wait_for_bars(page)
        until(lambda: "token=" not in page.url, what="the view's URL")
        bookmark = page.url
        assert "s=AAA" in bookmark
        page.reload()
        wait_for_bars(page)
        page.wait_for_function("window.candlewire.connection === 'live'")
        other = context.new_page()
        other.goto(bookmark)
        wait_for_bars(other)
        # A new token in a link replaces the kept one: an expired one is not kept for good.
        page.goto(f"{server.url}/?token={token('browser', seconds_left=-60)}&s=AAA")
        page.wait_for_function(
            "/Reconnecting|Offline/.test(document.querySelector('#badge').textContent)"
        )
        page.goto(bookmark)
        page.wait_for_function(
            "/Reconnecting|Offline/.test(document.querySelector('#badge').textContent)"
        )
        assert page.evaluate("window.candlewire.charts[0].bars().length") == 0
    finally:
        context.close()


def test_a_page_the_server_refuses_says_so_and_connects_once_given_a_token(
    server: ServerProcess, browser: Browser
) -> None:
    """Opened without a token (or with a wrong or expired one), the page said
    "Reconnecting", then "Offline", over a chart "Loading…" for good, though the network
    and the server were up. It now says the server refuses it and how to open it; given a
    token in another tab, it connects with it at its next attempt."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/?source=counting&s=AAA&i=1m")
        page.wait_for_function("window.candlewire.connection === 'refused'")
        assert page.locator("#badge").inner_text().strip() == "Refused"
        message = page.locator(".panel-message").inner_text()
        assert "refuses this page's connection" in message and "/?token=" in message, message
        other = context.new_page()
        other.goto(f"{server.url}/?token={token('browser')}&source=counting&s=BBB&i=1m")
        wait_for_bars(other)
        page.wait_for_function("window.candlewire.connection === 'live'", timeout=30_000)
        wait_for_bars(page)
        assert page.locator(".panel-message").is_hidden()
    finally:
        context.close()


BASE64_KEY = "q+Zx/9Kf2w+0lJ1uVb6T7nA8sD3eR4yH5gU2iO1pLkM="


class KeyedServer(ServerProcess):
    """The harness's server, its health checks carrying the key."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"X-API-Key": BASE64_KEY})
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            return json.loads(response.read())


def test_the_page_opened_with_a_base64_key_keeps_its_plus_signs(
    browser: Browser, tmp_path: Path
) -> None:
    """``AUTH=token`` with a key made by ``openssl rand -base64``: the page opened as
    ``/?token=<key>`` read it with ``URLSearchParams``, which makes each ``+`` a space, so
    its socket sent another key and was refused for good ("Reconnecting")."""
    key = BASE64_KEY
    env = base_env(tmp_path, PROVIDERS="counting", AUTH="token", API_KEYS=key)
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp_path / "server.log") as running:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        try:
            page = context.new_page()
            page.goto(f"{running.url}/?token={key}&source=counting&s=AAA&i=1m")
            wait_for_bars(page)
        finally:
            context.close()
