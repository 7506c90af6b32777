"""The toolbar at every width a trader uses, from a 360 px phone to a 1920 px desktop.

Each width must keep every interval reachable (all the buttons, or the menu when they do not
all fit), every other control on screen and the page without sideways scrolling; on a phone
the toolbar has its two rows and the dropdowns stay inside the screen. One server (the
bundled CSV sample data, replayed at 60x) and one browser serve the module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests import browsing
from tests.browsing import MS, browser, js, open_page, sized_page
from tests.harness import ROOT, ServerProcess, populated_server, seconds, until

__all__ = ["browser"]  # the shared fixture

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

INTERVALS = ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w", "1M"]
DESKTOP_WIDTHS = [1920, 1440, 1366, 1280, 1024, 900, 800, 700]
PHONES = {"phone-390": (390, 844), "phone-360": (360, 740)}
CONTROLS = [
    "#search-input",
    "#chart-type",
    "#price-scale",
    "#compare-button",
    "#indicator-button",
    "#alert-button",
    "#zone",
    "#theme",
    "#watchlist-toggle",
    "#badge",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-toolbar")
    with populated_server(
        tmp, PROVIDERS="csv", CSV_FOLDER_PATH=str(ROOT / "data"), CSV_REPLAY_SPEED="60"
    ) as running:
        yield running


@pytest.fixture
def phone(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page on the phone named by the test's ``phone`` parameter (touch, isMobile)."""
    width, height = PHONES[request.param]
    with sized_page(browser, width, height, phone=True) as opened:
        yield opened


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1920, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(seconds(10) * MS)
    yield context.new_page()
    context.close()


def errors_of(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return errors


# An element a tap or click reaches: displayed, inside the window, not covered, and (for a
# button of the interval strip) not clipped by the strip nor squeezed below its own text.
REACHABLE = """(selectors) => {
    const reachable = (el) => {
        if (!el || !el.checkVisibility()) return false;
        const r = el.getBoundingClientRect();
        if (r.width < 1 || r.left < 0 || r.top < 0 || r.right > innerWidth + 0.5
            || r.bottom > innerHeight) return false;
        return el.contains(document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2));
    };
    const strip = document.querySelector('#intervals');
    const box = strip.getBoundingClientRect();
    const buttons = [...strip.querySelectorAll('button')].filter((b) => {
        const r = b.getBoundingClientRect();
        return reachable(b) && r.left >= box.left - 0.5 && r.right <= box.right + 0.5
            && b.scrollWidth <= b.clientWidth;
    }).map((b) => b.dataset.interval);
    const menu = document.querySelector('#interval-menu');
    const options = reachable(menu) ? [...menu.options].map((o) => o.value) : [];
    const controls = {};
    for (const sel of selectors) controls[sel] = reachable(document.querySelector(sel));
    return { buttons, options, controls,
             width: document.scrollingElement.scrollWidth, inner: innerWidth };
}"""


def toolbar_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = js(page, REACHABLE, CONTROLS)
    return state


def out_of_reach(state: dict[str, Any]) -> str:
    """What cannot be reached in ``state`` ("" when everything can)."""
    if state["width"] > state["inner"]:
        return f"the page scrolls sideways: {state}"
    hidden = [sel for sel, shown in state["controls"].items() if not shown]
    if hidden:
        return f"controls off screen or covered: {hidden}"
    if INTERVALS not in (state["buttons"], state["options"]):
        return f"intervals out of reach: buttons {state['buttons']}, menu {state['options']}"
    return ""


def assert_everything_reachable(page: Page, where: str) -> str:
    """Every interval and every control can be reached (once a transition, such as the
    watchlist becoming a drawer, has ended); returns "buttons" or "menu"."""
    with contextlib.suppress(AssertionError):
        until(lambda: not out_of_reach(toolbar_state(page)), timeout=2)
    state = toolbar_state(page)
    assert not out_of_reach(state), f"{where}: {out_of_reach(state)}"
    return "buttons" if state["buttons"] == INTERVALS else "menu"


def next_frames(page: Page) -> None:
    """Wait until the page has drawn twice (its resize observers ran)."""
    js(page, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def pick(page: Page, how: str, interval: str) -> None:
    if how == "menu":
        page.locator("#interval-menu").select_option(interval)
    else:
        page.locator(f"#intervals button[data-interval='{interval}']").click()
    page.wait_for_function(f"window.candlewire.charts[0].interval === '{interval}'")
    page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    next_frames(page)


def test_every_interval_is_reachable_at_every_desktop_width(
    server: ServerProcess, desktop: Page
) -> None:
    errors = errors_of(desktop)
    open_page(desktop, server, "?source=csv&s=BTCUSD&i=1h")
    shown = {}
    for i, width in enumerate(DESKTOP_WIDTHS):
        desktop.set_viewport_size({"width": width, "height": 800})
        until(
            lambda w=width: toolbar_state(desktop)["width"] == w,
            what=f"the page to take the {width} px window",
        )
        next_frames(desktop)
        where = f"{width} px"
        shown[width] = assert_everything_reachable(desktop, where)
        browsing.shot(desktop, f"toolbar-{width}")
        pick(desktop, shown[width], "1d" if i % 2 == 0 else "4h")
        assert_everything_reachable(desktop, f"{where}, after a pick")
    # A trader's usual screens show the buttons; the menu stands in only where they cannot fit.
    assert shown[1920] == shown[1440] == shown[1366] == shown[1280] == "buttons", shown
    assert errors == []


@pytest.mark.parametrize("phone", sorted(PHONES), indirect=True)
def test_every_interval_is_reachable_on_a_phone(server: ServerProcess, phone: Page) -> None:
    errors = errors_of(phone)
    open_page(phone, server, "?source=csv&s=BTCUSD&i=1h")
    assert assert_everything_reachable(phone, "phone") == "menu"
    pick(phone, "menu", "1d")
    assert errors == []


ROWS = """() => {
    const rows = new Map(); // top of the row -> the items on it
    for (const el of document.querySelector('.toolbar').children) {
        if (!el.checkVisibility() || el.classList.contains('row-break')) continue;
        const r = el.getBoundingClientRect();
        const row = [...rows.keys()].find((top) => Math.abs(top - (r.top + r.height / 2)) < 10);
        const key = row ?? r.top + r.height / 2;
        rows.set(key, [...(rows.get(key) || []), el.id || el.className]);
    }
    return [...rows.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
}"""

# Where an open box lies: inside the window, and below the whole toolbar (over no row of it).
BOX = """(sel) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    const bar = document.querySelector('.toolbar').getBoundingClientRect();
    return { left: r.left, right: r.right, top: r.top, bottom: bar.bottom, inner: innerWidth,
             scroll: document.scrollingElement.scrollWidth,
             panned: visualViewport.pageLeft, shown: r.width > 0 && r.height > 0 };
}"""


def assert_box_on_screen(page: Page, selector: str, below_toolbar: bool) -> None:
    box = js(page, BOX, selector)
    assert box["shown"], f"{selector} is not open"
    assert box["left"] >= 0 and box["right"] <= box["inner"], f"{selector} leaves the screen: {box}"
    assert box["scroll"] <= box["inner"] and box["panned"] == 0, f"the page widens: {box}"
    if below_toolbar:
        assert box["top"] >= box["bottom"] - 0.5, f"{selector} covers the toolbar: {box}"


@pytest.mark.parametrize("phone", sorted(PHONES), indirect=True)
def test_a_phone_toolbar_has_two_rows_and_its_boxes_stay_on_the_screen(
    server: ServerProcess, phone: Page
) -> None:
    errors = errors_of(phone)
    open_page(phone, server, "?source=csv&s=BTCUSD&i=1h")
    rows = js(phone, ROWS)
    assert len(rows) == 2, f"toolbar rows: {rows}"
    assert {"search", "theme", "watchlist-toggle", "badge"} <= set(rows[0]), rows
    second = {"interval-menu", "chart-type", "price-scale", "compare", "alerts", "zone"}
    assert second <= set(rows[1]), rows
    search = phone.locator("#search-input")
    search.tap()
    search.press_sequentially("a", delay=20)
    phone.locator("#search-results li[data-i]").first.wait_for()
    next_frames(phone)
    assert_box_on_screen(phone, "#search-results", below_toolbar=False)
    # the open list is on top: a tap where the indicator button lies under it picks a row
    on_top = js(
        phone,
        """() => {
        const r = document.querySelector('#indicator-button').getBoundingClientRect();
        const list = document.querySelector('#search-results').getBoundingClientRect();
        if (r.bottom <= list.top || r.top >= list.bottom) return true;  // not under it
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return document.querySelector('#search-results').contains(hit);
    }""",
    )
    assert on_top, "the indicator button shows through the symbol list"
    browsing.shot(phone, f"toolbar-search-{phone.viewport_size['width']}")  # type: ignore[index]
    search.press("Escape")
    for button, box in (
        ("#compare-button", "#compare-box"),
        ("#indicator-button", "#indicator-box"),
        ("#alert-button", "#alert-box"),
    ):
        phone.locator(button).tap()
        phone.locator(box).wait_for()
        next_frames(phone)
        assert_box_on_screen(phone, box, below_toolbar=True)
        phone.locator(button).tap()
        phone.locator(box).wait_for(state="hidden")
    assert errors == []
