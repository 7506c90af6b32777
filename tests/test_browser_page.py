"""The web page as a trader uses it, in headless Chromium at 1440x900 and at 390x844.

One server (the bundled CSV sample data, replayed at 60x, plus the ``counting`` test provider
whose bars follow the wall clock) and one browser serve every test of the module; each test
runs once per viewport in a fresh browser context. Every test fails on a console error or an
uncaught exception, and keeps a screenshot in ``test-artifacts/`` named after the test and
the viewport.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests import browsing
from tests.browsing import (
    MS,
    browser,
    console,
    js,
    open_page,
    page,
    page_server,
    viewport,
)
from tests.harness import ROOT, ServerProcess, seconds, until

__all__ = ["browser", "console", "page", "viewport"]  # the shared fixtures

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

VIEWPORTS = {
    "desktop": {"width": 1440, "height": 900},
    "phone": {"width": 390, "height": 844},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-page")
    with page_server(
        tmp,
        PROVIDERS="csv,counting",
        CSV_FOLDER_PATH=str(ROOT / "data"),
        CSV_REPLAY_SPEED="60",
        CANDLEWIRE_TEST_PERIOD="0.25",
        STREAM_LINGER_SECONDS="0.5",
    ) as running:
        yield running


# ------------------------------------------------------------------------------ helpers


def shot(page: Page, name: str, viewport: str) -> None:
    browsing.shot(page, f"page-{name}-{viewport}")


def visible_range(page: Page, chart: int = 0) -> dict[str, float]:
    result: dict[str, float] = js(
        page, f"window.candlewire.charts[{chart}].chart.timeScale().getVisibleLogicalRange()"
    )
    return result


def bar_count(page: Page, chart: int = 0) -> int:
    count: int = js(page, f"window.candlewire.charts[{chart}].bars().length")
    return count


def lower_bar_limit_until_dropped(page: Page) -> tuple[int, int, int]:
    """Lower the chart's BAR_LIMITS to just above the bars it holds (so that a test takes
    seconds) and wait until its oldest bars go: the limit, the bars kept at a drop and the
    time of the first bar before it."""
    held = bar_count(page)
    limit, keep = held + 2, held - 50
    js(
        page,
        """async ([max, keep]) => {
            const { BAR_LIMITS } = await import("/js/chart.js");
            Object.assign(BAR_LIMITS, { max, keep });
        }""",
        [limit, keep],
    )
    first = js(page, "window.candlewire.charts[0].bars()[0].time")
    until(
        lambda: js(page, "window.candlewire.charts[0].bars()[0].time") > first,
        timeout=15,
        what="the oldest bars to be dropped",
    )
    return limit, keep, first


ON_SCREEN = """sel => { const el = document.querySelector(sel);
    if (!el || !el.checkVisibility()) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.left >= 0 && r.top >= 0
        && r.right <= innerWidth && r.bottom <= innerHeight; }"""


def on_screen(page: Page, selector: str) -> bool:
    """The element is displayed and lies entirely inside the viewport."""
    inside: bool = js(page, ON_SCREEN, selector)
    return inside


def assert_no_horizontal_scroll(page: Page) -> None:
    sizes = js(page, "[document.scrollingElement.scrollWidth, innerWidth]")
    assert sizes[0] <= sizes[1], f"the page is {sizes[0]} px wide in a {sizes[1]} px window"


def pick_interval(page: Page, viewport: str, interval: str) -> None:
    if viewport == "phone":
        page.locator("#interval-menu").select_option(interval)
    else:
        page.locator(f"#intervals button[data-interval='{interval}']").click()


def scroll_back(page: Page, bars: int) -> None:
    """Scroll chart 1 `bars` bars back in time (the chart applies it on its next frame)."""
    js(page, f"window.candlewire.charts[0].chart.timeScale().scrollToPosition(-{bars}, false)")
    until(lambda: visible_range(page)["to"] < bar_count(page) - 1, what="the scroll back")


# What places chart 1's start mark (ViewEdges.place), for a failure message
EDGE_STATE = """() => { const c = window.candlewire.charts[0]; const ts = c.chart.timeScale();
    return { done: c.historyDone, pending: c.historyPending, bars: c.bars().length,
             message: c.message, range: ts.getVisibleLogicalRange(), width: ts.width(),
             first: ts.logicalToCoordinate(0), second: ts.logicalToCoordinate(1),
             hidden: document.querySelector('.start-mark').hidden }; }"""


def scroll_to_start(page: Page) -> None:
    """Scroll chart 1 left until the source has nothing older."""
    scroll = "window.candlewire.charts[0].chart.timeScale().scrollToPosition(-100000, false)"

    def done() -> bool:
        page.evaluate(scroll)
        finished: bool = js(page, "window.candlewire.charts[0].historyDone")
        return finished

    until(done, timeout=20, what="the start of the data")


# ------------------------------------------------------------------------------ layout


def test_the_page_fits_the_screen_and_keeps_its_controls_on_it(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    assert_no_horizontal_scroll(page)
    for control in ("#theme", "#badge", "#watchlist-toggle", "#search-input", "#chart-type"):
        assert on_screen(page, control), f"{control} is not on screen"
    if viewport == "phone":
        assert on_screen(page, "#interval-menu"), "no interval menu on a phone"
        assert not on_screen(page, "#intervals"), "the interval buttons should be in a menu"
        assert not on_screen(page, "[data-layout='4']"), "a phone shows one chart"
    else:
        assert on_screen(page, "#intervals button[data-interval='4h']")
    pick_interval(page, viewport, "4h")
    page.wait_for_function("window.candlewire.charts[0].interval === '4h'")
    page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    assert "i=4h" in page.url
    assert_no_horizontal_scroll(page)
    shot(page, "layout", viewport)
    assert console == []


def test_the_watchlist_opens_and_closes(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=ACME&i=1h")
    row = ".wl-items li[data-id='csv:ACME']"
    page.locator(row).wait_for(state="attached")
    toggle = page.locator("#watchlist-toggle")
    if viewport == "phone":
        assert not on_screen(page, ".watchlist"), "the drawer starts closed on a phone"
        toggle.click()
        until(lambda: on_screen(page, ".watchlist"), what="the drawer to open")
        assert toggle.get_attribute("aria-expanded") == "true"
        shot(page, "watchlist-open", viewport)
        page.locator("#watchlist-close").click()
        until(lambda: not on_screen(page, ".watchlist"), what="the drawer to close")
        toggle.click()
        until(lambda: on_screen(page, ".watchlist"), what="the drawer to open again")
        page.locator(row).click()  # picking a symbol gets the drawer out of the way
        until(lambda: not on_screen(page, ".watchlist"), what="the drawer to close on a pick")
    else:
        assert on_screen(page, ".watchlist")
        toggle.click()
        until(lambda: not on_screen(page, ".watchlist"), what="the watchlist to hide")
        assert toggle.get_attribute("aria-pressed") == "false"
        toggle.click()
        until(lambda: on_screen(page, ".watchlist"), what="the watchlist to come back")
        shot(page, "watchlist-open", viewport)
        # a row opens from the keyboard too: Tab to it, Enter
        open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
        page.locator(row).focus()
        page.keyboard.press("Enter")
        until(lambda: js(page, "window.candlewire.charts[0].name") == "ACME", what="ACME by key")
    assert_no_horizontal_scroll(page)
    assert console == []


def test_a_watchlist_row_is_removed_by_touch_on_a_phone_and_by_keyboard_on_a_desktop(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """The remove button of a row showed on mouse hover only: a phone (no hover) and the
    keyboard (Tab skips what is not visible) could not remove a symbol from the watchlist."""
    open_page(page, server, "?source=csv&s=ACME&i=1h")
    page.locator(".wl-items li[data-id='csv:ACME']").wait_for(state="attached")
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    page.locator(".wl-items li[data-id='csv:BTCUSD']").wait_for(state="attached")
    remove = page.locator(".wl-items li[data-id='csv:ACME'] .wl-remove")
    if viewport == "phone":
        page.locator("#watchlist-toggle").click()
        until(lambda: on_screen(page, ".watchlist"), what="the drawer to open")
        remove.tap(timeout=seconds(3) * MS)
    else:
        page.locator(".wl-items li[data-id='csv:ACME']").focus()
        page.keyboard.press("Tab")
        focused = js(page, "document.activeElement.className")
        assert focused == "wl-remove", "Tab reaches the remove button"
        page.keyboard.press("Enter")
    page.locator(".wl-items li[data-id='csv:ACME']").wait_for(state="detached")
    assert js(page, "window.candlewire.charts[0].name") == "BTCUSD", "no symbol was opened"
    assert [row["name"] for row in js(page, "window.candlewire.watchlist")] == ["BTCUSD"]
    assert console == []


def test_grid_charts_hidden_at_load_show_their_newest_bars_when_they_come_into_view(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A phone shows one chart of a grid link; rotated (or a window widened) it shows all:
    the hidden ones had no width, took every bar for "visible" and loaded page after page
    of history, then showed 900 bars zoomed out, off the newest."""
    if viewport == "desktop":
        page.set_viewport_size({"width": 500, "height": 800})
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h&layout=4&c2=csv:ACME:1d&a=2", 2)
    page.set_viewport_size({"width": 1280 if viewport == "desktop" else 844, "height": 390})
    views = """() => window.candlewire.charts.map((c) => {
        const r = c.chart.timeScale().getVisibleLogicalRange();
        return { bars: c.bars().length, from: r ? r.from : null, to: r ? r.to : null,
                 shown: c.chart.timeScale().width() > 0 };
    })"""
    until(lambda: all(v["shown"] and v["bars"] for v in js(page, views)), what="four charts")
    next_frames = "new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
    page.evaluate(next_frames)
    for view in js(page, views):
        assert view["bars"] <= 600, view  # no page after page of history while hidden
        assert view["to"] >= view["bars"] - 1, view  # the newest bar in view
        assert view["to"] - view["from"] <= 200, view  # the usual zoom, not every bar
    assert console == []


def test_a_link_with_the_interval_as_the_buttons_say_it_or_an_overlong_symbol_answers(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """``i=1D`` is the daily chart (the button says 1D); a 20,000-letter symbol gets its
    error shown, not "Loading..." for ever (the server's answer names it clipped)."""
    open_page(page, server, "?source=csv&s=BTCUSD&i=1D")
    assert js(page, "window.candlewire.charts[0].interval") == "1d"
    page.goto(f"{server.url}/?source=csv&s={'A' * 20_000}&i=1h")
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
    until(
        lambda: "nknown symbol" in (js(page, "window.candlewire.charts[0].message") or ""),
        what="the unknown symbol said",
    )
    errors = [e for e in console if "unknown symbol" not in e.lower()]
    assert errors == []


def test_a_link_with_overlong_names_or_interval_opens_a_chart_on_the_screen(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A 300-letter interval was sent as it was (the server refused it as malformed and the
    chart stayed empty): it is an unknown one, so the symbol's own opens. Names of 200
    letters (the longest the server takes) widened the page past the screen: the header and
    the "Unknown symbol" message drew them on one line."""
    open_page(page, server, f"?source=csv&s=BTCUSD&i={'h' * 300}")
    assert js(page, "window.candlewire.charts[0].message") in (None, "")
    page.goto(f"{server.url}/?source=csv&s={'A' * 200}&i=1h&layout=4&c2=csv:{'B' * 200}:1h")
    until(
        lambda: "nknown symbol" in (js(page, "window.candlewire.charts[1].message") or ""),
        what="the unknown symbol said",
    )
    assert_no_horizontal_scroll(page)
    shot(page, "overlong-names", viewport)
    assert [e for e in console if "unknown symbol" not in e.lower()] == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL, not the screen
def test_a_link_with_an_interval_the_symbol_lacks_opens_the_nearest_one_it_offers(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """The macro line series start at 1h: a link (or a grid chart) asking for their 1m chart
    opens 1h, as picking the symbol from the search box at 1m does, not an error that says
    to pick another symbol."""
    grid = "&layout=4&c2=csv:macro__policy_rate:5m&c3=csv:ACME:1d&c4=csv:BTCUSD:1h"
    open_page(page, server, f"?source=csv&s=macro__dollar_index&i=1m{grid}", charts=4)
    assert js(page, "window.candlewire.charts.map(c => c.interval)") == ["1h", "1h", "1d", "1h"]
    assert js(page, "window.candlewire.charts[0].message") in (None, "")
    until(lambda: "i=1h" in page.url, what="the URL names the interval shown")
    assert "macro__policy_rate:1h" in urllib.parse.unquote(page.url)
    shot(page, "nearest-interval", viewport)
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL, not the screen
def test_a_link_naming_the_symbol_in_another_case_opens_it(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """``?s=btcusd`` said "Unknown symbol" although search finds BTCUSD ignoring case (and
    the UDF endpoints take any case): the chart opens the symbol so spelled in that source."""
    open_page(page, server, "?source=csv&s=btcusd&i=1h")
    assert js(page, "window.candlewire.charts[0].name") == "BTCUSD"
    assert js(page, "window.candlewire.charts[0].message") in (None, "")
    until(lambda: "s=BTCUSD" in page.url, what="the URL names the symbol shown")
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL, not the screen
def test_a_bare_link_naming_the_symbol_in_another_case_opens_it(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """``?s=btcusd`` without a source (README, "The web page") said "Unknown symbol btcusd":
    the page looked for a search result spelled exactly so, although search finds BTCUSD
    ignoring case. It opens the symbol so spelled, as a link that names the source does."""
    open_page(page, server, "?s=btcusd&i=1h")
    assert js(page, "window.candlewire.charts[0].name") == "BTCUSD"
    assert js(page, "window.candlewire.charts[0].message") in (None, "")
    until(lambda: "s=BTCUSD" in page.url, what="the URL names the symbol shown")
    assert console == []


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("?source=csv&s=btcusd&i=1h", "csv:BTCUSD:1h"),
        ("?source=csv&s=macro__dollar_index&i=1m", "csv:macro__dollar_index:1h"),
    ],
    ids=["case", "interval"],
)
@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL, not the screen
def test_a_link_the_page_corrects_shows_no_error_toast(
    server: ServerProcess, page: Page, viewport: str, console: list[str], query: str, shown: str
) -> None:
    """A link naming the symbol in another case, or an interval the symbol lacks, opens the
    symbol so spelled at its nearest interval; the server's refusal of the link's own
    request ("Unknown symbol csv:btcusd", "unknown interval '1m'") showed as an error toast
    beside the chart that opened fine. The refusal is the page's business, not news."""
    open_page(page, server, query)
    chart = "window.candlewire.charts[0]"
    assert js(page, f"[{chart}.source, {chart}.name, {chart}.interval].join(':')") == shown
    assert js(page, "document.querySelector('#toasts').innerText").strip() == ""
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # no layout involved
def test_leaving_a_symbol_the_server_refused_shows_no_second_error(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """An unknown symbol in a link is refused (one toast says so); picking another symbol
    then unsubscribes the refused one, which the server answers ``not_subscribed``: that
    answer to the page's own bookkeeping is no news to the user and shows no toast."""
    page.goto(f"{server.url}/?source=csv&s=NOPE&i=1h")
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
    until(
        lambda: "nknown symbol" in (js(page, "window.candlewire.charts[0].message") or ""),
        what="the unknown symbol said",
    )
    page.locator("#search-input").fill("ACME")
    page.locator("#search-input").press("Enter")
    page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    until(
        lambda: (js(page, "window.candlewire.lastError") or {}).get("code") == "not_subscribed",
        what="the server's answer to the unsubscribe",
    )
    toasts = js(page, "document.querySelector('#toasts').innerText")
    assert "nknown symbol" in toasts
    assert "subscribed" not in toasts.lower()
    assert [e for e in console if "unknown symbol" not in e.lower()] == []


COUNT_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.sockets = 0;
  window.frames = 0;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.sockets += 1;
      this.addEventListener("message", () => {
        window.frames += 1;
        window.lastFrame = performance.now();
      });
    }
  };
})()"""


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the socket only
def test_a_background_tab_whose_timers_wake_once_a_minute_keeps_its_socket(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Chrome wakes a hidden tab's repeating timers once a minute (intensive throttling): the
    15 s keep-alive then runs a minute after its last ping, whose pong came long ago. That
    healthy socket must be kept, not replaced at every wake-up as one silent for 40 s.
    The page's clock is Playwright's: each minute is jumped at once, as a throttled tab
    sees it, and the test waits (in real time) for a frame after the ping it sent."""
    page.add_init_script(COUNT_SOCKETS)
    page.clock.install()
    open_page(page, server, "?source=csv&s=macro__policy_rate&i=1M")
    for _ in range(3):
        frames = js(page, "window.frames")
        page.clock.fast_forward(60 * MS)  # fires the keep-alive (and any due timer) once
        page.clock.run_for(MS)  # a reconnect's first retry is 0.5 s away
        page.wait_for_function(f"window.frames > {frames}")
    assert js(page, "window.sockets") == 1
    assert js(page, "window.candlewire.connection") == "live"
    # A hung server (its pongs never come) is still left for a new socket.
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(5):  # frames already on their way may answer one ping
            page.clock.fast_forward(60 * MS)
            page.clock.run_for(MS)
            if js(page, "window.sockets") > 1:
                break
        assert js(page, "window.sockets") == 2
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    page.wait_for_function("window.candlewire.connection === 'live'")
    assert console == []


# Each event at one size: what the page does with its socket does not depend on the screen.
@pytest.mark.parametrize(
    ("viewport", "event"),
    [("desktop", "visibilitychange"), ("phone", "resume")],
    indirect=["viewport"],
)
def test_a_tab_shown_again_checks_its_socket_and_leaves_a_hung_server_within_seconds(
    server: ServerProcess, page: Page, viewport: str, console: list[str], event: str
) -> None:
    """The user comes back to the tab of a server that hung meanwhile: the badge said Live
    over a frozen chart until the keep-alive noticed, 40-55 s later. Shown again, the page
    asks its socket for a frame, as after a network drop, and leaves it within 5 s. So does
    a page the browser froze (no script ran) when it is resumed, shown or not: only the
    keep-alive noticed, 40-55 s after the resume."""
    page.add_init_script(COUNT_SOCKETS)
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        # the frames sent before the hang are read first (the user comes back minutes later)
        page.wait_for_function("performance.now() - window.lastFrame > 1000")
        page.evaluate(f"document.dispatchEvent(new Event('{event}'))")  # shown again
        page.wait_for_function("window.sockets > 1", timeout=seconds(12) * MS)
        assert js(page, "window.candlewire.connection") != "live"
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    page.wait_for_function("window.candlewire.connection === 'live'")
    assert console == []


SMALL_BUTTONS = """() => [...document.querySelectorAll("button")]
  .filter((b) => b.checkVisibility({ visibilityProperty: true }))
  .map((b) => [b.className || b.id, b.getBoundingClientRect()])
  .filter(([, r]) => r.width < 24 || r.height < 24)
  .map(([name, r]) => `${name} ${Math.round(r.width)}x${Math.round(r.height)}`)"""


def test_on_a_touch_screen_every_button_is_at_least_24_px_square(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """The x of the compare, the edit and x of an indicator chip and the x of a watchlist
    row are tapped with a finger on a phone: each at least 24x24 CSS px (WCAG 2.5.8), not a
    14-16 px glyph. A desktop (a mouse) keeps them small."""
    query = "?source=csv&s=BTCUSD&i=1h&cmp=csv:ACME&ind=talib.momentum.RSI:timeperiod:14"
    open_page(page, server, query)
    page.locator(".indicator-remove").wait_for()
    page.locator(".compare-remove").wait_for()
    if viewport == "phone":
        page.locator("#watchlist-toggle").tap()
        page.locator(".wl-remove").first.wait_for()
        assert js(page, SMALL_BUTTONS) == []
    assert on_screen(page, ".compare-remove")
    assert on_screen(page, ".indicator-remove")
    shot(page, "touch-targets", viewport)
    assert console == []


FOCUSED = "document.activeElement.getAttribute('aria-label') || document.activeElement.id"


def test_the_keyboard_stays_in_place_after_removing_a_compare_a_watchlist_row_or_an_alert(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Enter on an x removes its item and rebuilds the list: the keyboard goes on to the
    next x (the watchlist's, the alerts'), or to the toolbar's Compare button, not to the
    page's start, where the next Tab begins again at the top of the toolbar."""
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    open_page(page, server, "?source=csv&s=ACME&i=1h&cmp=csv:BTCUSD")
    page.locator(".compare-remove").focus()
    page.keyboard.press("Enter")
    until(lambda: js(page, "window.candlewire.charts[0].compare") is None, what="no compare")
    assert js(page, FOCUSED) == "compare-button"
    if viewport == "phone":
        page.locator("#watchlist-toggle").tap()
    page.locator(".wl-items li[data-id]").first.wait_for()  # the drawer slid in (phone)
    page.locator(".wl-items li[data-id]").first.focus()
    page.keyboard.press("Tab")  # to its x, shown on the focused row
    page.keyboard.press("Enter")
    until(
        lambda: js(page, "document.querySelectorAll('.wl-items li[data-id]').length") == 1,
        what="one row left",
    )
    assert js(page, "document.activeElement.dataset.id") == "csv:ACME"  # the next row
    if viewport == "phone":
        page.keyboard.press("Escape")
    page.locator("#alert-button").click()
    for level in ("1", "2"):
        page.locator("#alert-level").fill(level)
        page.locator("#alert-level").press("Enter")
        count = int(level)
        until(
            lambda n=count: js(page, "window.candlewire.alerts.items.length") == n,
            what=f"{count} alerts",
        )
    page.locator(".alert-delete").first.focus()
    page.keyboard.press("Enter")
    until(lambda: js(page, "window.candlewire.alerts.items.length") == 1, what="one alert left")
    until(
        lambda: js(page, "document.querySelectorAll('.alert-item').length") == 1,
        what="one alert listed",
    )
    assert (js(page, FOCUSED) or "").startswith("Delete alert")
    page.keyboard.press("Enter")
    until(
        lambda: js(page, "document.querySelectorAll('.alert-item').length") == 0,
        what="no alert listed",
    )
    assert js(page, FOCUSED) == "Alert level"
    assert console == []


def test_the_grid_fills_new_charts_with_other_symbols_and_legends_leave_candles_free(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    if viewport == "phone":
        # A phone shows one chart: a shared grid link shows only its active chart.
        open_page(page, server, "?source=csv&s=BTCUSD&i=1h&layout=4&c2=csv:ACME:1h&a=2", 2)
        shown = js(page, "[...document.querySelectorAll('.panel')].map(p => p.checkVisibility())")
        assert shown.count(True) == 1 and shown[1] is True
    else:
        page.locator("[data-layout='4']").click()
        for chart in range(4):
            page.wait_for_function(f"window.candlewire.charts[{chart}].bars().length > 0")
        names = js(page, "window.candlewire.charts.map(c => c.name)")
        assert names[0] == "BTCUSD"
        assert "BTCUSD" not in names[1:], f"the grid repeats chart 1's symbol: {names}"
        assert len(set(names)) == 4
    overlaps = js(
        page,
        """() => window.candlewire.charts.map((c, i) => {
            const panel = document.querySelector(`.panel[data-index="${i}"]`);
            if (!panel.checkVisibility()) return null;
            const legend = panel.querySelector('.legend').getBoundingClientRect();
            const area = panel.querySelector('.chart-area').getBoundingClientRect();
            const range = c.chart.timeScale().getVisibleLogicalRange();
            const bars = c.bars().slice(Math.max(0, Math.floor(range.from)),
                                        Math.ceil(range.to) + 1);
            const top = Math.max(...bars.map(b => b.high ?? b.value));
            const y = area.top + c.series.priceToCoordinate(top);
            return legend.bottom > y ? `${c.name}: legend ${legend.bottom} > candle ${y}` : '';
        })""",
    )
    assert [o for o in overlaps if o] == []
    assert_no_horizontal_scroll(page)
    shot(page, "grid", viewport)
    assert console == []


# ------------------------------------------------------------------------------ scroll-back


def test_scroll_back_shows_loading_then_the_start_of_data_and_stops_at_it(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    js(
        page,
        """() => { window.sawLoading = false;
            const el = document.querySelector('.history-loading');
            new MutationObserver(() => { if (!el.hidden) window.sawLoading = true; })
                .observe(el, { attributes: true }); }""",
    )
    assert page.locator(".start-mark").is_hidden()
    scroll_to_start(page)
    assert js(page, "window.sawLoading"), "no loading indicator while history loaded"
    page.locator(".history-loading").wait_for(state="hidden")
    mark = page.locator(".start-mark")
    try:
        mark.wait_for()
    except PlaywrightTimeout as exc:  # seen once under load, not reproduced: say the state
        raise AssertionError(f"no start mark: {js(page, EDGE_STATE)}") from exc
    browsing.text_once(mark, "Start of data")
    # The first bar stays at the left edge: dragging further shows no empty space.
    box = page.locator(".chart-area").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 50, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 80, y, steps=6)
    page.mouse.up()
    assert visible_range(page)["from"] > -1.5
    shot(page, "start-of-data", viewport)
    assert console == []


def test_the_view_cannot_be_dragged_off_its_bars_and_jump_to_latest_returns(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=ACME&i=1h")
    ts = "window.candlewire.charts[0].chart.timeScale()"
    js(page, f"{ts}.scrollToPosition(100000, false)")  # far into the future
    page.wait_for_function(f"{ts}.getVisibleLogicalRange().to > 320")

    def shown() -> float:
        """The part of the view that has bars."""
        view = visible_range(page)
        return (bar_count(page) - 1 - view["from"]) / (view["to"] - view["from"])

    until(lambda: shown() >= 0.3, what="the view to come back to the bars")
    js(page, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert shown() >= 0.3
    jump = page.locator(".jump-latest")
    scroll_back(page, 120)
    jump.wait_for()
    assert on_screen(page, ".jump-latest")
    shot(page, "jump-to-latest", viewport)
    jump.click()
    page.wait_for_function(
        f"{ts}.getVisibleLogicalRange().to >= window.candlewire.charts[0].bars().length - 1"
    )
    jump.wait_for(state="hidden")
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # memory
def test_a_chart_streaming_for_hours_keeps_a_bounded_number_of_bars_and_indicator_values(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A 1m chart of the 60x replay gains 3,600 bars an hour, each with its indicator values:
    the page kept them all. Past BAR_LIMITS.max (lowered here so that the test takes seconds)
    the oldest go, while the view is on the newest bars; scrolling back loads them again."""
    open_page(page, server, "?source=csv&s=BTCUSD&i=1m&ind=talib.momentum.RSI:timeperiod:14")
    page.wait_for_function("window.candlewire.charts[0].indicators[0]?.outputs.RSI > 0")
    limit, keep, first = lower_bar_limit_until_dropped(page)
    until(lambda: bar_count(page) > keep + 2, what="more live bars after the drop")
    times = [b["time"] for b in js(page, "window.candlewire.charts[0].bars()")]
    assert len(times) <= limit and times == sorted(set(times)), "bounded, ascending, unique"
    assert js(page, "window.candlewire.charts[0].ownBars().length") == len(times)
    indicator = js(page, "window.candlewire.charts[0].indicators[0]")
    assert indicator["outputs"]["RSI"] <= limit, indicator
    assert indicator["last"]["RSI"]["time"] == times[-1], "the indicator follows the bars"
    assert not js(page, "window.candlewire.charts[0].historyDone")
    js(page, "(async () => (await import('/js/chart.js')).BAR_LIMITS.max = 1e9)()")
    scroll_back(page, 200)
    until(lambda: bar_count(page) > limit + 100, what="the dropped bars to load again")
    times = [b["time"] for b in js(page, "window.candlewire.charts[0].bars()")]
    assert times[0] < first + 60 * 60 and times == sorted(set(times))
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # memory
def test_a_compare_line_streaming_for_hours_keeps_a_bounded_number_of_bars(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """The chart drops its oldest bars past BAR_LIMITS.max (lowered here), but its compare
    line kept every bar of the compared symbol it ever got, drawn or not, and copied them
    all at each update."""
    open_page(page, server, "?source=csv&s=BTCUSD&i=1m&cmp=csv:ACME")
    page.wait_for_function("window.candlewire.charts[0].compare?.state === 'ready'")
    _, keep, _ = lower_bar_limit_until_dropped(page)
    until(lambda: bar_count(page) > keep + 5, what="more live bars after the drop")
    compare = js(page, "window.candlewire.charts[0].compare")
    assert compare["held"] <= bar_count(page) + 1, f"{compare['held']} compared bars kept"
    drawn = js(page, "window.candlewire.charts[0].compare.bars()")
    assert drawn and drawn[-1]["time"] == js(page, "window.candlewire.charts[0].bars().at(-1).time")
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a phone shows one chart
def test_two_charts_of_one_symbol_each_take_only_their_own_older_bars(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=5m&layout=4&c2=csv:BTCUSD:5m", 2)
    charts = "window.candlewire.charts"
    for _ in range(2):  # chart 2 two pages further back than chart 1
        count = js(page, f"{charts}[1].ownBars().length")
        js(page, f"{charts}[1].chart.timeScale().scrollToPosition(-{count}, false)")
        page.wait_for_function(
            f"{charts}[1].ownBars().length > {count} && !{charts}[1].historyPending"
        )
    first = js(page, f"[0, 1].map(i => {charts}[i].ownBars()[0].time)")
    # Both charts reach their left edge at once: chart 1 asks first, chart 2 right after.
    js(
        page,
        f"""() => {{ for (const i of [0, 1]) {{
            const ts = {charts}[i].chart.timeScale();
            const r = ts.getVisibleLogicalRange();
            ts.setVisibleLogicalRange({{ from: 2, to: 2 + r.to - r.from }}); }} }}""",
    )
    page.wait_for_function(
        f"[0, 1].every(i => !{charts}[i].historyPending && ({charts}[i].historyDone"
        f" || {charts}[i].ownBars()[0].time < {first}[i]))"
    )
    for chart in range(2):
        assert js(page, f"{charts}[{chart}].historyDone") is False, f"chart {chart + 1} stopped"
        times = js(page, f"{charts}[{chart}].ownBars().map(b => b.time)")
        steps = {b - a for a, b in itertools.pairwise(times)}
        assert steps == {300}, f"chart {chart + 1}: bars missing or repeated: {sorted(steps)}"
    assert page.locator(".start-mark").evaluate_all("ms => ms.every(m => m.hidden)")
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a phone has one layout
def test_after_switching_layouts_the_charts_show_their_latest_bars(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    scroll_back(page, 150)
    page.locator("[data-layout='4']").click()
    page.wait_for_function("window.candlewire.charts.length === 4")
    until(lambda: visible_range(page)["to"] >= bar_count(page) - 1, what="chart 1 at the latest")
    scroll_back(page, 150)
    page.locator("[data-layout='1']").click()
    page.wait_for_function("window.candlewire.charts.length === 1")
    until(lambda: visible_range(page)["to"] >= bar_count(page) - 1, what="back at the latest")
    assert console == []


# ------------------------------------------------------------------------------ figures and names


def test_the_header_and_the_watchlist_show_the_same_change_for_a_symbol(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    figures = """() => {
        const head = document.querySelector('.panel .quote-change').textContent;
        const row = document.querySelector(".wl-items li[data-id='csv:BTCUSD'] .wl-change");
        return [head, row ? row.textContent : ''];
    }"""
    page.wait_for_function(f"(({figures})()).every(t => t !== '')")
    head, row = js(page, figures)
    assert re.search(r"\(([^)]*%)\)", head)
    assert re.search(r"\(([^)]*%)\)", head).group(1) == row  # type: ignore[union-attr]
    assert "previous daily close" in (page.locator(".panel .quote").get_attribute("title") or "")
    assert "prev. daily close" in page.locator(".wl-note").text_content()  # type: ignore[operator]
    shot(page, "change", viewport)
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # not about the screen
def test_a_watchlist_price_that_moves_takes_its_colour_for_a_moment_without_an_animation(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    """The flash of a moved price is a class set and removed, not a CSS animation: one
    restyled and repainted the page at every frame it ran, a fifth of a core for a
    watchlist ticking a few times a second."""
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    js(
        page,
        """() => { window.flashes = [];
            const row = document.querySelector(".wl-items li[data-id='csv:BTCUSD']");
            new MutationObserver(() => window.flashes.push(row.className))
                .observe(row, { attributes: true, attributeFilter: ['class'] }); }""",
    )
    page.wait_for_function("window.flashes.some(c => /flash-(up|down)/.test(c))")
    assert js(page, "document.getAnimations().length") == 0
    # each flash ends: the class goes again (the rows tick about every 0.3 s, so wait for a
    # moment without one rather than for a fixed time)
    page.wait_for_function("window.flashes.some(c => !/flash-/.test(c))")
    assert console == []


def test_search_rows_say_each_thing_once_and_line_series_have_readable_names(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=ACME&i=1h")
    search = page.locator("#search-input")
    search.click()
    search.press_sequentially("BTCUSD", delay=20)
    first = page.locator("#search-results li[data-i]").first
    page.wait_for_function(
        "document.querySelector('#search-results .sr-symbol')?.textContent === 'BTCUSD'"
    )
    text = first.text_content() or ""
    assert text.count("BTCUSD") == 1, text
    assert text.lower().count("csv") == 1, text
    search.fill("")
    search.press_sequentially("dollar", delay=20)
    page.wait_for_function(
        "document.querySelector('#search-results .sr-symbol')?.textContent === 'macro dollar_index'"
    )
    shot(page, "search", viewport)
    search.press("Enter")
    page.wait_for_function("window.candlewire.charts[0].name === 'macro__dollar_index'")
    page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    assert browsing.text_once(page.locator(".panel-symbol"), "macro dollar_index") == (
        "macro dollar_index"
    )
    assert "macro__" not in page.locator(".panel-head").inner_text()
    page.wait_for_function("document.title.startsWith('macro dollar_index')")
    page.locator(".wl-items li[data-id='csv:macro__dollar_index']").wait_for(state="attached")
    wl = page.locator(".wl-items li[data-id='csv:macro__dollar_index'] .wl-symbol")
    assert wl.text_content() == "macro dollar_index"
    assert console == []


def test_the_header_shows_a_countdown_the_source_and_the_description(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    countdown = page.locator(".panel .countdown")
    page.wait_for_function(
        "/^\\d\\d:\\d\\d$/.test(document.querySelector('.panel .countdown').textContent)"
    )
    first = countdown.text_content()
    page.wait_for_function(
        "t => document.querySelector('.panel .countdown').textContent !== t",
        arg=first,
        timeout=seconds(5) * MS,
    )
    browsing.text_once(page.locator(".panel-label"), "AAA test instrument", "counting")
    # on screen; from a bar's close until the next bar comes it is empty (of no width)
    page.wait_for_function(ON_SCREEN, arg=".panel .countdown", timeout=seconds(5) * MS)
    shot(page, "countdown", viewport)
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    browsing.text_once(page.locator(".panel-label"), "csv")
    assert console == []


# ------------------------------------------------------------------------------ chart types


SERIES_TYPE = {
    "candles": "Candlestick",
    "hollow": "Candlestick",
    "bars": "Bar",
    "line": "Line",
    "area": "Area",
    "heikin": "Candlestick",
}


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL
def test_chart_types_and_price_scales_live_in_the_url_and_survive_a_reload(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    chart = "window.candlewire.charts[0]"
    for kind, series_type in SERIES_TYPE.items():
        page.locator("#chart-type").select_option(kind)
        page.wait_for_function(f"{chart}.type === '{kind}'")
        assert js(page, f"{chart}.series.seriesType()") == series_type
        assert js(page, f"{chart}.bars().length") == js(page, f"{chart}.ownBars().length")
    hollow = "(() => { const o = window.candlewire.charts[0].series.options(); return o; })()"
    page.locator("#chart-type").select_option("hollow")
    assert js(page, hollow)["upColor"] == "rgba(0, 0, 0, 0)"
    page.locator("#chart-type").select_option("heikin")
    page.wait_for_function(f"{chart}.type === 'heikin'")
    drawn, own = js(page, f"[{chart}.bars().slice(-3, -1), {chart}.ownBars().slice(-3, -1)]")
    for ha, bar in zip(drawn, own, strict=True):
        assert ha["time"] == bar["time"]
        ohlc = (bar["open"] + bar["high"] + bar["low"] + bar["close"]) / 4
        assert ha["close"] == pytest.approx(ohlc)
    assert drawn[1]["open"] == pytest.approx((drawn[0]["open"] + drawn[0]["close"]) / 2)
    for scale, mode in (("log", 1), ("percent", 2)):
        page.locator("#price-scale").select_option(scale)
        assert js(page, f"{chart}.chart.priceScale('right').options().mode") == mode
    page.locator("#price-scale").select_option("log")
    assert "ct=heikin" in page.url and "ps=log" in page.url
    shot(page, "heikin-log", viewport)
    page.reload()
    page.wait_for_function(f"window.candlewire && {chart}.bars().length > 0")
    page.wait_for_function(f"{chart}.type === 'heikin'")
    assert js(page, f"{chart}.chart.priceScale('right').options().mode") == 1
    assert page.locator("#chart-type").input_value() == "heikin"
    assert page.locator("#price-scale").input_value() == "log"
    assert console == []


def test_compare_draws_another_symbol_as_a_line_on_the_same_pane(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    page.locator("#compare-button").click()
    box = page.locator("#compare-input")
    box.press_sequentially("ACME", delay=20)
    page.wait_for_function(
        "document.querySelector('#compare-results .sr-symbol')?.textContent === 'ACME'"
    )
    box.press("Enter")
    chart = "window.candlewire.charts[0]"
    page.wait_for_function(f"{chart}.compare && {chart}.compare.bars().length > 0")
    assert js(page, f"{chart}.compare.name") == "ACME"
    assert js(page, f"{chart}.chart.panes().length") == 1
    assert js(page, f"{chart}.scale") == "percent"  # prices of two symbols meet in percent
    assert "cmp=csv:ACME" in page.url
    browsing.text_once(page.locator(".panel-compare"), "vs ACME")
    assert_no_horizontal_scroll(page)
    shot(page, "compare", viewport)
    page.reload()
    page.wait_for_function(f"window.candlewire && {chart}.compare?.bars().length > 0")
    page.locator(".compare-remove").click()
    page.wait_for_function(f"{chart}.compare === null")
    assert "cmp=" not in page.url
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # no screen-size matter
def test_the_compare_line_reaches_back_as_far_as_the_chart_after_scroll_back(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    # ACME trades some hours of weekdays, BTCUSD all day: 300 of its hourly bars cover far
    # less time than ACME's 300, so the compared line needs older bars from the start.
    open_page(page, server, "?source=csv&s=ACME&i=1h&cmp=csv:BTCUSD")
    chart = "window.candlewire.charts[0]"
    covered = f"{chart}.compare?.bars()[0]?.time === {chart}.ownBars()[0].time"
    page.wait_for_function(covered)
    for _ in range(2):
        count = bar_count(page)
        js(page, f"{chart}.chart.timeScale().scrollToPosition(-{count}, false)")
        page.wait_for_function(f"{chart}.ownBars().length > {count} && !{chart}.historyPending")
        page.wait_for_function(covered)
    # At each of the chart's bar times since the compared symbol's own first one, a point.
    points, times = js(page, f"[{chart}.compare.bars().length, {chart}.ownBars().length]")
    assert points == times
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL, not the screen
def test_a_compare_opened_from_the_url_is_on_the_percent_scale_unless_the_url_says_otherwise(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    readme = "?source=csv&s=BTCUSD&i=1h&ct=heikin&ps=log&layout=4&c2=csv:ACME:1d&cmp2=csv:BTCUSD"
    chart = "window.candlewire.charts[1]"
    mode = f"{chart}.chart.priceScale('right').options().mode"
    open_page(page, server, f"{readme}&t=light&a=2", 2)
    page.wait_for_function(f"{chart}.compare?.bars().length > 0")
    assert js(page, f"{chart}.scale") == "percent"
    assert js(page, mode) == 2
    assert js(page, "window.candlewire.charts[0].scale") == "log"  # chart 1 keeps its own
    assert "ps2=percent" in page.url
    # The trader's own choice of scale beside a compare survives a reload.
    page.locator("#price-scale").select_option("normal")
    page.wait_for_function("location.search.includes('ps2=normal')")
    page.reload()
    page.wait_for_function(f"window.candlewire && {chart}.compare?.bars().length > 0")
    assert js(page, f"{chart}.scale") == "normal"
    assert js(page, mode) == 0
    assert console == []


# ------------------------------------------------------------------------------ upgrades


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # no layout involved
def test_a_page_opened_again_asks_the_server_for_its_scripts(
    server: ServerProcess, page: Page, viewport: str
) -> None:
    """The page's files had no Cache-Control: a browser kept using its copies for a tenth of
    their age (Chromium's heuristic freshness; a release 30 days old: 3 days) without asking,
    so after an upgrade a user ran the old scripts against the new server, reload or not, or
    old and new modules mixed. Each file is now revalidated (a 304 when unchanged)."""
    files = [f for f in (ROOT / "frontend").rglob("*") if f.is_file()]
    times = {f: f.stat().st_mtime for f in files}
    released = times[files[0]] - 30 * 86400  # a release deployed 30 days ago
    cached: list[str] = []
    try:
        for f in files:
            os.utime(f, (released, released))
        open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
        cdp = page.context.new_cdp_session(page)
        urls: dict[str, str] = {}
        cdp.on(
            "Network.requestWillBeSent",
            lambda e: urls.update({e["requestId"]: e["request"]["url"]}),
        )
        cdp.on(
            "Network.requestServedFromCache", lambda e: cached.append(urls.get(e["requestId"], "?"))
        )
        cdp.send("Network.enable")
        page.goto(f"{server.url}/health")
        open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    finally:
        for f, mtime in times.items():
            os.utime(f, (mtime, mtime))
    scripts = [url for url in cached if "/js/" in url or "/vendor/" in url]
    assert scripts == [], f"{len(scripts)} scripts taken from the cache unasked: {scripts[:3]}"


# ------------------------------------------------------------------------------ time zones

# Every tick mark the chart draws from now on, as {time, type, label, day, before}: `day` is
# the browser's local date of the bar the tick sits on, `before` that of the bar before it.
SPY_TICKS = """() => {
    const view = window.candlewire.charts[0];
    const format = view.chart.options().timeScale.tickMarkFormatter;
    const day = (bar) => bar && new Date(bar.time * 1000).toDateString();
    window.ticks = [];
    view.chart.applyOptions({ timeScale: { tickMarkFormatter: (time, type) => {
        const label = format(time, type);
        const index = view.chart.timeScale().timeToIndex(time, false);
        const bars = view.ownBars();
        if (index !== null && index > 0) {
            window.ticks.push({ time, type, label, day: day(bars[index]),
                before: day(bars[index - 1]) });
        }
        return label;
    } } });
}"""
DAY_TICK = 2  # lightweight-charts TickMarkType.DayOfMonth (Year 0 and Month 1 start a day too)


@pytest.mark.parametrize("zone", ["America/New_York", "Pacific/Chatham", "Europe/Berlin"])
def test_in_local_time_the_day_marks_of_an_intraday_chart_sit_where_local_days_begin(
    server: ServerProcess, browser: Browser, viewport: str, zone: str
) -> None:
    """The chart places its day, month and year marks at UTC midnights; labelled in local
    time, New York's read the day before (and "Oct" where November began) five hours before
    the day they stood for, so the axis said 2 under a legend saying Wed 3 Nov."""
    size = VIEWPORTS[viewport]
    with browsing.sized_page(
        browser, size["width"], size["height"], viewport == "phone", timezone=zone
    ) as page:
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        open_page(page, server, "?source=csv&s=BTCUSD&i=1h&tz=local")
        js(page, SPY_TICKS)
        page.set_viewport_size({"width": size["width"] - 1, "height": size["height"]})
        page.wait_for_function("window.ticks.some((t) => t.type <= 2)")
        days = [t for t in js(page, "window.ticks") if t["type"] <= DAY_TICK]
        for tick in days:
            assert tick["day"] != tick["before"], f"a day mark within a local day: {tick}"
            if tick["type"] == DAY_TICK:
                assert tick["day"].split()[2].lstrip("0") == tick["label"], tick
        shot(page, f"zone-{zone.replace('/', '-')}", viewport)
        assert errors == []


# The chart times of every `step`-second bar from `from` for `hours` hours (UTC seconds), and
# each one's local wall clock read as UTC (Date.UTC of the local fields).
WALL_CLOCK = """async ([from, hours, step]) => {
    const { localWallClock } = await import("/js/wall-clock.js");
    const out = [];
    for (let t = from; t < from + hours * 3600; t += step) {
        const d = new Date(t * 1000);
        const wall = Date.UTC(d.getFullYear(), d.getMonth(), d.getDate(), d.getHours(),
            d.getMinutes(), d.getSeconds()) / 1000;
        out.push([t, localWallClock(t), wall]);
    }
    return out;
}"""


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # no layout involved
@pytest.mark.parametrize("zone", ["America/New_York", "Australia/Lord_Howe"])
def test_local_chart_times_stay_ascending_where_clocks_go_back(
    server: ServerProcess, browser: Browser, viewport: str, zone: str
) -> None:
    """Where summer time ends the local clock repeats an hour (half an hour at Lord Howe):
    local times given as they are would repeat, which lightweight-charts draws wrongly.
    The two real hours around the change share the local hour; elsewhere a chart time is
    the local wall clock."""
    with browsing.sized_page(browser, 1440, 900, False, timezone=zone) as page:
        open_page(page, server)
        # New York: 2027-11-07 06:00 UTC; Lord Howe: 2027-04-03 15:00 UTC (02:00 local)
        start = 1825567200 - 6 * 3600 if zone == "America/New_York" else 1806764400 - 6 * 3600
        for step in (60, 3600):
            rows = js(page, WALL_CLOCK, [start, 12, step])
            times = [chart for _, chart, _ in rows]
            assert all(a < b for a, b in itertools.pairwise(times)), f"{step} s bars: {times}"
            exact = [t for t, chart, wall in rows if chart == wall]
            assert len(exact) >= len(rows) - 2 * 3600 // step, "the wall clock elsewhere"
            assert rows[0][1] == rows[0][2] and rows[-1][1] == rows[-1][2]


# ------------------------------------------------------------------------------ touch and mouse


def test_the_chart_pans_and_zooms_by_touch_on_a_phone_and_by_mouse_on_a_desktop(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=csv&s=BTCUSD&i=1h")
    scroll_back(page, 60)
    box = page.locator(".chart-area").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = visible_range(page)
    if viewport == "phone":
        cdp = page.context.new_cdp_session(page)

        def touch(kind: str, *points: tuple[float, float]) -> None:
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]},
            )

        touch("touchStart", (cx - 80, cy))
        for step in range(1, 9):
            touch("touchMove", (cx - 80 + step * 20, cy))
        touch("touchEnd")
        panned = visible_range(page)
        touch("touchStart", (cx - 30, cy), (cx + 30, cy))
        for step in range(1, 9):
            touch("touchMove", (cx - 30 - step * 12, cy), (cx + 30 + step * 12, cy))
        touch("touchEnd")
    else:
        page.mouse.move(cx - 200, cy)
        page.mouse.down()
        page.mouse.move(cx + 200, cy, steps=8)
        page.mouse.up()
        panned = visible_range(page)
        page.mouse.move(cx, cy)
        for _ in range(4):
            page.mouse.wheel(0, -300)
    until(
        lambda: (
            visible_range(page)["to"] - visible_range(page)["from"]
            < 0.9 * (panned["to"] - panned["from"])
        ),
        what="the chart to zoom in",
    )
    assert panned["from"] < before["from"] - 5, f"no pan: {before} -> {panned}"
    assert panned["to"] - panned["from"] == pytest.approx(before["to"] - before["from"], rel=0.05)
    shot(page, "zoomed", viewport)
    assert console == []


@pytest.fixture(scope="module")
def intraday_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-page-intraday")
    with page_server(
        tmp,
        PROVIDERS="intraday",
        EXTRA_PROVIDERS="intraday=tests.providers:IntradayOnlyProvider",
        CANDLEWIRE_TEST_PERIOD="0.25",
    ) as running:
        yield running


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # the URL
def test_a_link_to_a_symbol_without_daily_bars_quotes_it_from_its_longest_interval(
    intraday_server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Opened from a link (its intervals not known yet), the header's quote asked for a 1d
    series the symbol does not offer: "Unknown interval" as a toast, and no change shown."""
    open_page(page, intraday_server, "?source=intraday&s=AAA&i=1m")
    page.wait_for_function("document.querySelector('.panel .quote-change')?.textContent")
    assert js(page, "window.candlewire.errors") == []
    assert page.locator(".toast").count() == 0
    assert console == []
