"""Alerts from the web page, in headless Chromium at 1440x900 and at 390x844.

One server (the bundled CSV sample data, replayed at 60x) and one browser serve the module;
each test runs once per viewport in a fresh browser context (so with a fresh owner key in
localStorage). Headless Chromium cannot grant the push permission reliably, so the tests
check that the page asks for the VAPID key and that an alert is still created without a
subscription; every test fails on a console error or an uncaught exception and keeps a
screenshot in ``test-artifacts/``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests import browsing
from tests.browsing import MS, browser, console, js, page, page_server, viewport
from tests.harness import ROOT, ServerProcess, seconds, until

__all__ = ["browser", "console", "page", "viewport"]  # the shared fixtures

from playwright.sync_api import TimeoutError as PlaywrightTimeout

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

VIEWPORTS = {
    "desktop": {"width": 1440, "height": 900},
    "phone": {"width": 390, "height": 844},
}
QUERY = "?source=csv&s=BTCUSD&i=1h"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-alerts")
    with page_server(
        tmp,
        PROVIDERS="csv",
        CSV_FOLDER_PATH=str(ROOT / "data"),
        CSV_REPLAY_SPEED="60",
        STREAM_LINGER_SECONDS="0.5",
    ) as running:
        yield running


# ------------------------------------------------------------------------------ helpers


def open_page(page: Page, server: ServerProcess) -> None:
    browsing.open_page(page, server, QUERY)


def shot(page: Page, name: str, viewport: str) -> None:
    browsing.shot(page, f"alerts-{name}-{viewport}")


def alerts(page: Page) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = js(page, "window.candlewire.alerts.items")
    return items


def lines(page: Page) -> list[dict[str, Any]]:
    drawn: list[dict[str, Any]] = js(page, "window.candlewire.alerts.lines(0)")
    return drawn


def add_alert_at(page: Page, level: float) -> None:
    if page.locator("#alert-box").is_hidden():
        page.locator("#alert-button").click()
    page.locator("#alert-level").fill(str(level))
    page.locator("#alert-add").click()


def assert_no_horizontal_scroll(page: Page) -> None:
    sizes = js(page, "[document.scrollingElement.scrollWidth, innerWidth]")
    assert sizes[0] <= sizes[1], f"the page is {sizes[0]} px wide in a {sizes[1]} px window"


# ------------------------------------------------------------------------------ tests


def test_the_service_worker_is_served_at_the_site_root(server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{server.url}/service-worker.js", timeout=10) as answer:
        assert answer.status == 200
        assert "javascript" in answer.headers["content-type"]
        assert "showNotification" in answer.read().decode()


def test_the_page_asks_for_the_vapid_key_and_creates_an_alert_without_push_permission(
    page: Page, server: ServerProcess, console: list[str], viewport: str
) -> None:
    open_page(page, server)
    page.locator("#alert-button").click()
    page.wait_for_function("window.candlewire.alerts.vapidKey !== null")
    assert js(page, "window.candlewire.alerts.vapidAsked")
    assert page.locator("#alert-level").input_value() != "", "the level starts at the last price"
    last = js(page, "window.candlewire.charts[0].ownBars().at(-1).close")
    level = round(last * 1.5, 2)  # far away: it does not fire during the test
    add_alert_at(page, level)
    until(lambda: len(alerts(page)) == 1, timeout=20, what="the alert in the list")
    created = alerts(page)[0]
    assert created["push"] is False, "no push permission: the alert has no subscription"
    assert js(page, "window.candlewire.alerts.push") is None
    assert created["rules"] == [
        {
            "type1": "data",
            "source1": "csv",
            "name1": "BTCUSD",
            "interval1": "1h",
            "key1": "close",
            "comparator": "crosses",
            "type2": "value",
            # the level as the page writes a number (JavaScript's String: 98514, not
            # Python's 98514.0 for a level that rounds to a whole number)
            "value2": js(page, "(level) => String(level)", level),
        }
    ]
    assert created["owner"] == js(page, "window.candlewire.alerts.owner")
    assert_no_horizontal_scroll(page)
    shot(page, "created", viewport)
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the order only
def test_alerts_added_in_quick_succession_are_created_in_the_order_they_were_added(
    page: Page, server: ServerProcess, console: list[str], viewport: str
) -> None:
    """Each alert asked for the push subscription on its own, and was sent when its own
    answer came (the service worker registered, then a subscription asked for, three
    times): three added in a row were created 1, 3, 2. They now wait for one request."""
    page.context.grant_permissions(["notifications"], origin=server.url)
    page.add_init_script(COUNT_REGISTRATIONS)
    open_page(page, server)
    last = js(page, "window.candlewire.charts[0].ownBars().at(-1).close")
    levels = [round(last * factor, 2) for factor in (1.5, 1.6, 1.7)]  # far: none fires
    page.locator("#alert-button").click()
    page.evaluate(ADD_AT_ONCE, levels)  # three in one go, as fast as a user can tap
    until(lambda: len(alerts(page)) == 3, timeout=20, what="the three alerts")
    created = sorted(alerts(page), key=lambda alert: alert["id"])
    assert [float(alert["rules"][0]["value2"]) for alert in created] == levels
    assert js(page, "window.registrations") == 1
    # Chromium's own warning: a Playwright context is incognito, where push is unsupported
    assert [line for line in console if "Push API in incognito" not in line] == []


ADD_AT_ONCE = """(levels) => {
  for (const level of levels) {
    document.querySelector("#alert-level").value = String(level);
    document.querySelector("#alert-add").click();
  }
}"""
COUNT_REGISTRATIONS = """(() => {
  window.registrations = 0;
  const container = navigator.serviceWorker;
  if (!container) return;
  const register = container.register.bind(container);
  container.register = (...args) => { window.registrations += 1; return register(...args); };
})()"""


def test_an_alert_made_by_right_click_is_listed_with_its_line_and_deleted_from_the_list(
    page: Page, server: ServerProcess, console: list[str], viewport: str
) -> None:
    open_page(page, server)
    box = page.locator(".panel .chart-host").first.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.3
    page.mouse.click(x, y, button="right")
    item = page.locator(".alert-menu-item")
    item.wait_for(state="visible")
    browsing.text_once(item, "Alert when BTCUSD crosses")
    item.click()
    until(lambda: len(alerts(page)) == 1, timeout=20, what="the alert in the list")
    level_text = alerts(page)[0]["rules"][0]["value2"]
    level = float(level_text)
    until(lambda: [line["level"] for line in lines(page)] == [level], what="the price line")
    assert lines(page)[0]["price"] == level
    page.locator("#alert-button").click()
    rows = page.locator("#alert-items .alert-item")
    rows.first.wait_for(state="visible")
    assert rows.count() == 1
    browsing.text_once(rows.first, f"BTCUSD crosses {level_text}")
    assert browsing.text_once(page.locator("#alert-count"), "1") == "1"
    shot(page, "listed", viewport)
    rows.first.locator(".alert-delete").click()
    until(lambda: alerts(page) == [], timeout=20, what="the deletion")
    until(lambda: lines(page) == [], what="the line removed")
    page.locator("#alert-items .alert-empty").wait_for(state="visible")
    assert page.locator("#alert-count").is_hidden()
    assert_no_horizontal_scroll(page)
    assert console == []


def test_a_notification_from_an_alert_shows_a_toast(
    page: Page, server: ServerProcess, console: list[str], viewport: str
) -> None:
    open_page(page, server)
    bars = "window.candlewire.charts[0].ownBars()"

    def closes_differ() -> bool:
        moved: bool = js(page, f"{bars}.at(-1).close !== {bars}.at(-2).close")
        return moved

    toast = page.locator(".toast-info", has_text="crosses")

    def alert_at_previous_close() -> bool:
        """At the previous bar's close: "the previous bar was on the level and the forming
        one is not" holds while the forming bar's close differs, so the alert fires when it
        is made. A bar that opened meanwhile (an hour lasts 60 s at the replay's speed) can
        make one attempt miss: then another alert is made."""
        until(closes_differ, timeout=30, what="a forming bar away from the previous close")
        add_alert_at(page, js(page, f"{bars}.at(-2).close"))
        try:
            toast.first.wait_for(state="visible", timeout=seconds(8) * MS)
        except PlaywrightTimeout:
            return False
        return True

    assert any(alert_at_previous_close() for _ in range(3)), "no toast for a firing alert"
    browsing.text_once(toast.first, "BTCUSD crosses")
    notes = js(page, "window.candlewire.alerts.notifications")
    assert any(n.get("alert_id") is not None for n in notes)
    shot(page, "toast", viewport)
    assert console == []
