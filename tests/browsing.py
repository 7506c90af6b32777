"""What every browser test module shares: headless Chromium (Debian's, through Playwright),
pages at desktop and phone sizes, console error collection, screenshots and a JS helper.

A module uses the fixtures by importing them (``from tests.browsing import browser, ...``)
and names them in ``__all__``; one browser runs per module.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness import ROOT, ServerProcess, base_env, populate, seconds

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
MS = 1000  # Playwright timeouts are in milliseconds
VIEWPORTS = {
    "desktop": {"width": 1440, "height": 900},
    "phone": {"width": 390, "height": 844},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def page_server(tmp: Path, **env: str) -> Iterator[ServerProcess]:
    """``populate.py`` then ``server.py`` with ``base_env(tmp, **env)`` on a free port
    of its own (fixed for the server's life, as a page reconnects to its URL); stopped at
    the end."""
    full_env = base_env(tmp, **env)
    result = populate(full_env)
    assert result.returncode == 0, result.stderr
    running = ServerProcess(full_env, tmp / "server.log", free_port()).start()
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """Headless Chromium with :data:`CHROMIUM_ARGS` and ``extra_args``; the test is skipped
    (failed under CI) where it is not installed."""
    if not Path(CHROMIUM).exists():
        message = f"chromium not found at {CHROMIUM}; install it with `make browser`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, *extra_args]
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(params=sorted(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    """Each test that asks for a ``page`` runs at desktop and at phone size."""
    name: str = request.param
    return name


@contextlib.contextmanager
def sized_page(
    browser: Browser, width: int, height: int, phone: bool, timezone: str | None = None
) -> Iterator[Page]:
    """A page in a context of its own at ``width`` x ``height`` (a phone: touch, mobile),
    in the browser time zone ``timezone`` (an IANA name; None: the machine's)."""
    context = browser.new_context(
        viewport={"width": width, "height": height},
        is_mobile=phone,
        has_touch=phone,
        device_scale_factor=1,
        **({} if timezone is None else {"timezone_id": timezone}),
    )
    context.set_default_timeout(seconds(10) * MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(browser: Browser, viewport: str) -> Iterator[Page]:
    size = VIEWPORTS[viewport]
    with sized_page(browser, size["width"], size["height"], viewport == "phone") as opened:
        yield opened


@pytest.fixture
def console(page: Page) -> list[str]:
    """The page's console errors and uncaught exceptions, as they happen."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return errors


def js(page: Page, expression: str, arg: Any = None) -> Any:
    """Evaluate ``expression`` in the page (a function source takes ``arg``)."""
    return page.evaluate(expression, arg)


def shot(page: Page, name: str) -> None:
    """Save a screenshot under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_page(page: Page, server: ServerProcess, query: str = "", charts: int = 1) -> None:
    """Open the page at ``query`` and wait until it is live with bars on ``charts`` charts."""
    page.goto(f"{server.url}/{query}")
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
    for chart in range(charts):
        page.wait_for_function(f"window.candlewire.charts[{chart}].bars().length > 0")


def text_once(locator: Locator, *parts: str) -> str:
    """The locator's text once it contains every one of ``parts`` (case-insensitive).

    An element can appear before its final text (a panel shows "Loading…" first), so reading
    ``inner_text()`` right after ``wait_for()`` races the page; this polls instead.
    """
    from playwright.sync_api import expect

    for part in parts:
        expect(locator).to_contain_text(part, ignore_case=True, timeout=seconds(10) * MS)
    return locator.inner_text()
