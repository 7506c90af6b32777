"""The web page with access control on: a token in the page URL goes with its socket.

Sync Playwright runs its own event loop for the whole module, so this lives apart from the
asyncio tests of ``test_access_e2e``.
"""

from __future__ import annotations

from playwright.sync_api import Browser

from tests.browsing import browser
from tests.harness import ServerProcess
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
        refused = context.new_page()
        refused.goto(f"{server.url}/?source=counting&s=AAA&i=1m")
        refused.wait_for_function(  # the upgrade was refused: the page retries
            "/Reconnecting|Offline/.test(document.querySelector('#badge').textContent)"
        )
        assert refused.evaluate("window.candlewire.charts[0].bars().length") == 0
    finally:
        context.close()
