"""The web page in a real headless Chromium (Playwright), against the real server.

The server runs the ``counting`` test provider, here with a forming bar that moves on every
tick (``TickingProvider``) so that a live update visibly changes the last bar. It listens on
a fixed free port, so that the restart test can bring a new server up at the URL the page
already has. ``window.candlewire`` (frontend/js/test-hook.js) exposes the bars of each chart,
the connection state and the last error. A screenshot is kept in ``test-artifacts/``. One
test runs its own server with ``ShiftedProvider``, whose clock runs behind the wall clock by
an amount read at start, to restart a source with older bars than the page holds.

Chromium comes from the system (``make browser``); Playwright never downloads one. Without
it these tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browsing import ARTIFACTS, MS, browser, console, page_server, text_once
from tests.harness import ServerProcess, base_env, seconds
from tests.providers import STEP, CountingProvider, bar, parse

__all__ = ["browser", "console"]  # the shared fixtures

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser


class TickingProvider(CountingProvider):
    """``counting`` whose forming bar moves on every tick (its close follows the clock)."""

    shift = 0  # seconds the provider's clock runs behind the wall clock

    def stream(self) -> None:
        while not self.stop.wait(self.period):
            now = time.time() - self.shift
            with self.lock:
                keys = list(self.streams)
            for symbol, interval in keys:
                step = STEP[interval]
                start = int(now) - int(now) % step
                t, o, h, low, c, v = bar(start, interval, int(now), sum(map(ord, symbol)) % 7)
                c = round(c + 0.5 * math.sin(now * 3), 4)
                self.publish(symbol, interval, (t, o, max(h, c), min(low, c), c, v))


class ShiftedProvider(TickingProvider):
    """``TickingProvider`` whose clock runs ``CANDLEWIRE_TEST_SHIFT`` seconds behind the wall
    clock (as a replay can), kept in memory only: a restart with a larger shift serves a
    series whose newest bar is older than the one a page holds."""

    persist_history = False

    def init(self) -> None:
        self.shift = int(os.environ.get("CANDLEWIRE_TEST_SHIFT", "0"))
        super().init()
        wall = time.time()
        self.set_clock(None, wall - self.shift, 1.0, origin_wall=wall)

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        step = STEP[interval]
        now = int(time.time()) - self.shift
        start = max(parse(start_time_query), self.listed)
        end = min(parse(end_time_query), now)
        first = start - start % step + (step if start % step else 0)
        seed = sum(map(ord, symbol)) % 7
        return [bar(t, interval, now, seed) for t in range(first, end + 1, step)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser")
    with page_server(
        tmp,
        PROVIDERS="counting",
        EXTRA_PROVIDERS="counting=tests.test_browser:TickingProvider",
        CANDLEWIRE_TEST_PERIOD="0.25",
        STREAM_LINGER_SECONDS="0.5",
    ) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 820})
    context.set_default_timeout(seconds(10) * MS)
    yield context.new_page()
    context.close()


def open_page(page: Page, server: ServerProcess, query: str = "") -> None:
    page.goto(f"{server.url}/{query}")
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")


def bars(page: Page, chart: int = 0) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate(f"window.candlewire.charts[{chart}].bars()")
    return result


def wait_for_bars(page: Page, chart: int = 0, more_than: int = 0) -> None:
    page.wait_for_function(f"window.candlewire.charts[{chart}].bars().length > {more_than}")


def wait_for_the_last_bar_to_move(page: Page, timeout: float | None = None) -> dict[str, Any]:
    """Until chart 1's newest bar changes (a live update arrived after this call); the bar
    it was before."""
    last = bars(page)[-1]
    page.wait_for_function(
        "last => { const b = window.candlewire.charts[0].bars().at(-1);"
        " return b.time !== last.time || b.close !== last.close; }",
        arg=last,
        **({} if timeout is None else {"timeout": timeout}),
    )
    return last


def assert_ascending_unique(rows: list[dict[str, Any]]) -> None:
    times = [row["time"] for row in rows]
    assert times == sorted(times)
    assert len(set(times)) == len(times), "duplicate bar times"


def test_search_opens_a_symbol_and_draws_its_bars_without_console_errors(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=CCC&i=1h")
    wait_for_bars(page)
    search = page.locator("#search-input")
    search.click()
    search.press_sequentially("AAA", delay=30)
    results = page.locator("#search-results")
    first = results.locator("li[data-i]").first
    text_once(first, "AAA", "AAA test instrument", "counting")
    search.press("ArrowDown")
    search.press("ArrowUp")
    search.press("Enter")
    page.wait_for_function("window.candlewire.charts[0].name === 'AAA'")
    wait_for_bars(page)
    rows = bars(page)
    assert len(rows) == 300
    assert_ascending_unique(rows)
    assert set(rows[-1]) >= {"time", "open", "high", "low", "close"}
    assert all(r["low"] <= min(r["open"], r["close"]) for r in rows)
    assert results.is_hidden()
    assert "s=AAA" in page.url and "i=1h" in page.url
    page.wait_for_function("document.title.startsWith('AAA ')")
    text_once(page.locator(".legend"), "O")
    assert page.locator("#badge").get_attribute("data-state") == "live"
    page.locator(".wl-items li[data-id='counting:AAA']").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-chart.png"))
    assert console == []


def test_a_live_update_changes_the_last_bar_within_3_seconds(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=BBB&i=1m")
    wait_for_bars(page)
    last = wait_for_the_last_bar_to_move(page, seconds(3) * MS)
    rows = bars(page)
    assert rows[-1]["time"] >= last["time"]
    assert_ascending_unique(rows)
    assert console == []


def test_scrolling_to_the_left_edge_prepends_older_bars_without_duplicates(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=CCC&i=1h")
    wait_for_bars(page)
    before = bars(page)
    assert len(before) == 300
    box = page.locator(".chart-host").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    for _ in range(8):  # drag the chart to the right, towards older bars
        page.mouse.move(box["x"] + 150, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 150, y, steps=8)
        page.mouse.up()
        if len(bars(page)) > 300:
            break
        time.sleep(0.2)
    wait_for_bars(page, more_than=300)
    after = bars(page)
    assert_ascending_unique(after)
    assert after[0]["time"] < before[0]["time"]
    by_time = {row["time"]: row for row in after}
    assert all(by_time[row["time"]] == row for row in before[:-1])  # old bars untouched
    visible = page.evaluate(
        "window.candlewire.charts[0].chart.timeScale().getVisibleLogicalRange()"
    )
    assert visible["from"] > 100, "the view jumped to the new bars"
    # Keep going to the very first bar: the source then has nothing older.
    scroll = "window.candlewire.charts[0].chart.timeScale().scrollToPosition(-100000, false)"
    deadline = time.monotonic() + seconds(15)
    while not page.evaluate("window.candlewire.charts[0].historyDone"):
        assert time.monotonic() < deadline, "history never ran out"
        page.evaluate(scroll)
        time.sleep(0.2)
    assert_ascending_unique(bars(page))
    assert console == []


def test_an_unknown_symbol_in_the_url_shows_a_message(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=NOPE&i=1m")
    message = page.locator(".panel-message")
    text_once(message, "NOPE", "unknown symbol")
    page.locator(".toast").first.wait_for()
    assert page.evaluate("window.candlewire.lastError.code") == "unknown_symbol"
    assert bars(page) == []
    assert console == []


def test_the_grid_layout_theme_and_time_zone_live_in_the_url(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    open_page(
        page,
        server,
        "?source=counting&s=AAA&i=1h&layout=4&c2=counting:BBB:5m&c3=counting:CCC:1d&c4=counting:AAA:1m",
    )
    for chart in range(4):
        wait_for_bars(page, chart)
    charts = page.evaluate("window.candlewire.charts.map(c => [c.name, c.interval])")
    assert charts[:2] == [["AAA", "1h"], ["BBB", "5m"]]
    page.locator(".panel[data-index='1']").click()
    page.locator("#intervals button[data-interval='15m']").click()
    page.wait_for_function("window.candlewire.charts[1].interval === '15m'")
    wait_for_bars(page, 1)
    assert page.evaluate("window.candlewire.charts[1].name") == "BBB"
    page.locator("#theme").click()
    page.locator("#zone").click()
    url = page.url
    assert "layout=4" in url and "c2=counting:BBB:15m" in url
    assert "t=light" in url and "tz=local" in url
    page.goto(url)  # a shared link shows the same view
    page.wait_for_function("window.candlewire.charts.length === 4")
    wait_for_bars(page, 1)
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate("window.candlewire.charts[1].interval") == "15m"
    page.locator("[data-layout='1']").click()
    page.wait_for_function("window.candlewire.charts.length === 1")
    assert "layout=4" not in page.url
    assert console == []


def test_an_empty_symbol_database_says_how_to_fill_it(
    tmp_path: Path, page: Page, console: list[str]
) -> None:
    env = base_env(tmp_path, PROVIDERS="counting")  # populate.py never ran
    with ServerProcess(env, tmp_path / "server.log") as empty:
        page.goto(f"{empty.url}/")
        message = page.locator(".panel-message")
        page.wait_for_function(
            "(window.candlewire.charts[0].message || '').startsWith('No symbols yet')"
        )
        text_once(message, "python populate.py")
        page.locator("#search-input").click()
        page.locator("#search-results .sr-note").wait_for()
        text_once(page.locator("#search-results"), "python populate.py")
        assert console == []  # checked before the server goes away


def test_a_server_restart_reconnects_and_the_chart_keeps_updating(
    server: ServerProcess, page: Page
) -> None:
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    wait_for_bars(page)
    page.evaluate("window.notReloaded = true")
    count = len(bars(page))
    badge = page.locator("#badge")
    server.stop()
    page.wait_for_function("window.candlewire.connection === 'reconnecting'")
    assert badge.get_attribute("data-state") == "reconnecting"
    text_once(badge, "Reconnecting")
    server.start()
    page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(20) * MS)
    text_once(badge, "Live")
    wait_for_the_last_bar_to_move(page, seconds(5) * MS)
    assert page.evaluate("window.notReloaded") is True
    rows = bars(page)
    assert len(rows) >= count
    assert_ascending_unique(rows)


def test_a_network_drop_the_socket_outlives_shows_offline_then_live_again(
    server: ServerProcess, page: Page, console: list[str]
) -> None:
    """A short Wi-Fi drop: the browser says offline, then online, and the open WebSocket
    carries on. The badge must not stay "Offline".

    Chromium usually holds the socket's frames while offline, but a frame already on its way
    can still arrive, and a frame received means the socket lives: the page rightly says
    "Live" again at once. So the texts the badge showed are recorded as they change, and the
    drop must have shown "Offline" among them, however briefly."""
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    wait_for_bars(page)
    badge = page.locator("#badge")
    page.evaluate(
        """() => {
            const el = document.getElementById("badge");
            window.badgeTexts = [];
            new MutationObserver(() => window.badgeTexts.push(el.textContent.trim()))
              .observe(el, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.context.set_offline(True)
    page.wait_for_function("window.candlewire.connection === 'offline'")
    page.wait_for_function("window.badgeTexts.includes('Offline')")
    page.context.set_offline(False)
    page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(8) * MS)
    text_once(badge, "Live")
    wait_for_the_last_bar_to_move(page)
    assert_ascending_unique(bars(page))
    assert console == []


def test_a_search_typed_while_the_server_is_down_says_so_at_once_then_lists_its_matches(
    server: ServerProcess, page: Page
) -> None:
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    wait_for_bars(page)
    server.stop()
    try:
        page.wait_for_function("window.candlewire.connection === 'reconnecting'")
        search = page.locator("#search-input")
        search.click()
        search.press_sequentially("BBB", delay=20)
        note = page.locator("#search-results .sr-note")
        note.wait_for(timeout=seconds(2) * MS)  # not after the reconnect (the backoff: seconds)
        text_once(note, "Not connected")
        assert page.evaluate("window.candlewire.connection") != "live"
    finally:
        server.start()
    page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(20) * MS)
    page.wait_for_function(
        "document.querySelector('#search-results .sr-symbol')?.textContent === 'BBB'"
    )
    assert page.locator("#search-results .sr-note").count() == 0
    search.press("Enter")
    page.wait_for_function("window.candlewire.charts[0].name === 'BBB'")


def test_latest_bars_continue_a_series_only_from_its_newest_bar_onwards(
    server: ServerProcess, page: Page
) -> None:
    open_page(page, server)
    verdicts = page.evaluate(
        """async () => {
          const { continues } = await import("/js/bars.js");
          const bars = (...times) => times.map((time) => ({ time }));
          const held = bars(1, 2, 3);
          return [
            continues(held, bars(2, 3, 4)), continues(held, bars(3)),
            continues(held, bars(1, 2, 3)), continues(held, bars(5, 6)),
            continues(held, bars(0, 1, 2)), continues([], bars(1)),
          ];
        }"""
    )
    assert verdicts == [True, True, True, False, False, False]


SHIFT = 7200  # after the restart the source is two hours behind the bars the page holds


def test_a_restarted_source_with_older_bars_replaces_the_chart_and_keeps_it_updating(
    tmp_path: Path, page: Page
) -> None:
    with page_server(
        tmp_path,
        PROVIDERS="counting",
        EXTRA_PROVIDERS="counting=tests.test_browser:ShiftedProvider",
        CANDLEWIRE_TEST_PERIOD="0.25",
        STREAM_LINGER_SECONDS="0.5",
    ) as server:
        open_page(page, server, "?source=counting&s=AAA&i=1m")
        wait_for_bars(page)
        held = bars(page)[-1]["time"]
        server.stop()
        page.wait_for_function("window.candlewire.connection === 'reconnecting'")
        server.env["CANDLEWIRE_TEST_SHIFT"] = str(SHIFT)
        server.start()
        page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(20) * MS)
        page.wait_for_function(
            "held => window.candlewire.charts[0].bars().at(-1).time < held",
            arg=held,
            timeout=seconds(5) * MS,
        )
        rows = bars(page)
        newest = int(time.time()) - SHIFT
        assert newest - 120 <= rows[-1]["time"] <= newest, "the chart shows the source's bars"
        assert all(row["time"] <= rows[-1]["time"] for row in rows), "no bar of the old series"
        assert_ascending_unique(rows)
        last = rows[-1]
        page.wait_for_function(  # and the live updates of the new series are drawn
            "last => { const b = window.candlewire.charts[0].bars().at(-1);"
            " return b.time !== last.time || b.close !== last.close; }",
            arg=last,
            timeout=seconds(5) * MS,
        )
        assert page.evaluate("window.candlewire.charts[0].bars().at(-1).time") < held


COUNT_SOCKETS = """(() => {
  const Original = window.WebSocket;
  window.socketsOpened = [];
  window.WebSocket = class extends Original {
    constructor(...args) { super(...args); window.socketsOpened.push(performance.now()); }
  };
})()"""


def test_a_full_server_is_asked_again_less_and_less_often_until_a_place_frees(
    tmp_path: Path, browser: Browser, page: Page
) -> None:
    """A server at MAX_CLIENTS accepts the socket, says "Max simultaneous connections
    reached" and closes it with 1013. The backoff was reset by every open, so the page asked
    again twice a second for as long as it stayed open; its delay now grows until a socket
    stays open, and it gets in once a place frees."""
    with (
        page_server(
            tmp_path,
            PROVIDERS="counting",
            CANDLEWIRE_TEST_PERIOD="0.25",
            STREAM_LINGER_SECONDS="0.5",
            MAX_CLIENTS="1",
        ) as server,
        contextlib.closing(browser.new_context(viewport={"width": 1400, "height": 820})) as holder,
    ):
        open_page(holder.new_page(), server, "?source=counting&s=AAA&i=1m")
        page.add_init_script(COUNT_SOCKETS)
        page.goto(f"{server.url}/?source=counting&s=BBB&i=1m")
        page.wait_for_function(
            "window.socketsOpened.length >= 5", timeout=seconds(30) * MS, polling=100
        )
        opened = page.evaluate("window.socketsOpened")
        gaps = [b - a for a, b in itertools.pairwise(opened)]
        assert gaps[3] >= 2000, f"sockets {[round(g) for g in gaps]} ms apart"
        # Each refused socket opens (the badge says "live" until the server's close
        # arrives, a few ms later): the page is not live between two of them.
        page.wait_for_function(
            "window.candlewire.connection !== 'live'", timeout=seconds(5) * MS, polling=50
        )
        assert page.evaluate("window.socketsOpened.length") == len(opened)
        holder.close()  # its place frees
        page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(20) * MS)
        wait_for_bars(page)
