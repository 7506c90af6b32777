"""Indicators on the web page, in headless Chromium at 1440x900 and at 390x844.

The server's catalogue is searched from the toolbar; an overlay (SMA) is drawn on the price
pane and an oscillator (RSI) in a pane of its own; inputs are edited in a dialog; indicators
are removed with their chip's x; they live (indicator_update), stay in the URL, survive a
reload and are asked for again after a server restart. One server (the ``counting`` test
provider, whose bars follow the wall clock, on a fixed port so it can be restarted) and one
browser serve the module; every test fails on a console error and keeps a screenshot in
``test-artifacts/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests import browsing
from tests.browsing import MS, browser, console, free_port, page, viewport
from tests.harness import ServerProcess, base_env, populate, seconds, until

__all__ = ["browser", "console", "page", "viewport"]  # the shared fixtures

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


RSI = "talib.momentum.RSI"
SMA = "talib.overlap.SMA"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-indicators")
    env = base_env(
        tmp, PROVIDERS="counting", CANDLEWIRE_TEST_PERIOD="0.25", STREAM_LINGER_SECONDS="0.5"
    )
    result = populate(env)
    assert result.returncode == 0, result.stderr
    running = ServerProcess(env, tmp / "server.log", free_port()).start()
    yield running
    running.stop()


def open_page(page: Page, server: ServerProcess, query: str) -> None:
    browsing.open_page(page, server, query)


def shot(page: Page, name: str, viewport: str) -> None:
    browsing.shot(page, f"indicators-{name}-{viewport}")


def indicators(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate("window.candlewire.charts[0].indicators")
    return found


def panes(page: Page) -> int:
    count: int = page.evaluate("window.candlewire.charts[0].panes")
    return count


def drawn(page: Page, count: int) -> list[dict[str, Any]]:
    """Wait until `count` indicators have values on the chart; return them."""

    def ready() -> bool:
        shown = indicators(page)
        return len(shown) == count and all(
            i["outputs"] and min(i["outputs"].values()) > 0 for i in shown
        )

    until(ready, what=f"{count} indicators drawn")
    return indicators(page)


def url_indicators(page: Page) -> list[str]:
    return parse_qs(urlparse(page.url).query).get("ind", [])


def add(page: Page, text: str) -> None:
    page.locator("#indicator-button").click()
    box = page.locator("#indicator-input")
    box.fill(text)
    symbol = page.locator(".sr-symbol", has_text=re.compile(f"^{text.upper()}$"))
    page.locator("#indicator-results li[data-i]", has=symbol).first.click()


def live_point(page: Page, index: int, output: str) -> Any:
    return page.evaluate(
        "([i, o]) => window.candlewire.charts[0].indicators[i].last[o]", [index, output]
    )


def test_indicators_from_the_catalogue_overlay_the_price_or_get_their_own_pane(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    add(page, "rsi")
    add(page, "sma")
    rsi, sma = drawn(page, 2)
    assert (rsi["id"], sma["id"]) == (RSI, SMA)
    assert rsi["overlay"] is False and rsi["pane"] == 1  # an oscillator: its own pane
    assert sma["overlay"] is True and sma["pane"] == 0  # on the price pane
    assert panes(page) == 2
    assert rsi["inputs"] == {"timeperiod": 14}
    assert url_indicators(page) == [f"{RSI}:timeperiod:14", f"{SMA}:timeperiod:30"]
    chips = page.locator(".indicator-chip .indicator-name")
    assert chips.all_inner_texts() == ["RSI 14", "SMA 30"]
    # Live: the values follow the forming bar.
    updates = indicators(page)[0]["received"]
    until(lambda: indicators(page)[0]["received"] > updates + 2, what="live RSI updates")
    value = live_point(page, 0, "RSI")["value"]
    assert 0 <= value <= 100
    sizes = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    assert sizes[0] <= sizes[1]
    shot(page, "added", viewport)
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a keyboard
def test_the_indicator_compare_and_alert_boxes_hand_the_keyboard_back_to_their_buttons(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Keyboard only: after a pick with Enter or a close with Escape, focus was left on the
    page's body, so the next Tab started again from the top of the page."""
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    focused = "document.activeElement.id"
    page.locator("#indicator-button").focus()
    page.keyboard.press("Enter")
    until(lambda: page.evaluate(focused) == "indicator-input", what="focus in the box")
    page.keyboard.type("RSI")
    page.wait_for_function(
        "document.querySelector('#indicator-results li.selected .sr-symbol')?.textContent === 'RSI'"
    )
    page.keyboard.press("Enter")
    until(lambda: len(indicators(page)) == 1, what="RSI added")
    assert page.evaluate(focused) == "indicator-button"
    page.keyboard.press("Enter")
    until(lambda: page.evaluate(focused) == "indicator-input", what="the box open again")
    page.keyboard.press("Escape")
    assert page.evaluate("document.querySelector('#indicator-box').hidden")
    assert page.evaluate(focused) == "indicator-button"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused) == "compare-button"
    page.keyboard.press("Enter")
    until(lambda: page.evaluate(focused) == "compare-input", what="focus in the compare box")
    page.keyboard.type("BBB")
    page.wait_for_function(
        "document.querySelector('#compare-results li.selected .sr-symbol')?.textContent === 'BBB'"
    )
    page.keyboard.press("Enter")
    page.wait_for_function("window.candlewire.charts[0].compare?.name === 'BBB'")
    assert page.evaluate(focused) == "compare-button"
    page.keyboard.press("Enter")
    until(lambda: page.evaluate(focused) == "compare-input", what="the compare box again")
    page.keyboard.press("Escape")
    assert page.evaluate(focused) == "compare-button"
    page.locator("#alert-button").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "alert-level"
    page.keyboard.press("Escape")
    assert page.evaluate("document.querySelector('#alert-box').hidden")
    assert page.evaluate(focused) == "alert-button"
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a keyboard
def test_an_indicator_typed_and_entered_at_once_is_the_one_typed(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Typing "macd" and Enter at once (before the debounced search of "macd" answered)
    added the first row of the list still shown, the catalogue's first entries for the
    empty box (RSI): the symbol search waits for the typed text's results, the indicator
    box did not."""
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    page.locator("#indicator-button").click()
    page.wait_for_function("document.querySelectorAll('#indicator-results li[data-i]').length")
    first = page.evaluate("document.querySelector('#indicator-results li .sr-symbol').textContent")
    assert first != "MACD", "the empty box lists another entry first"
    page.keyboard.type("macd")
    page.keyboard.press("Enter")
    until(lambda: len(indicators(page)) == 1, what="an indicator added")
    assert indicators(page)[0]["id"].endswith(".MACD"), indicators(page)
    assert page.evaluate("document.activeElement.id") == "indicator-button"
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a keyboard
def test_a_compare_typed_and_entered_at_once_is_the_one_typed_and_the_keyboard_stays(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Typing "bbb" and Enter at once: the compare box searches "bbb" and picks when its
    results arrive. That late pick left focus on the page's body (the Enter had found the
    box still open), so the next Tab started again from the top of the page."""
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    page.locator("#compare-button").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#compare-results').dataset.text === ''")
    page.keyboard.type("bbb")
    page.keyboard.press("Enter")
    page.wait_for_function("window.candlewire.charts[0].compare?.name === 'BBB'")
    until(lambda: page.evaluate("document.activeElement.id") == "compare-button", what="focus")
    assert page.evaluate("document.querySelector('#compare-box').hidden")
    assert console == []


# Reads whether a picker's box is still open, and where focus is, once the 150 ms close
# delay that a blur of its input starts has run out.
AFTER_THE_CLOSE_DELAY = """(box) => new Promise((done) => setTimeout(() => done({
  open: !document.querySelector(box).hidden,
  focused: document.activeElement?.id,
}), 400))"""


@pytest.mark.parametrize("picker", ["indicator", "compare"])
@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a keyboard
def test_a_box_opened_again_at_once_after_a_pick_stays_open_with_the_keyboard_in_it(
    server: ServerProcess, page: Page, picker: str, console: list[str]
) -> None:
    """A pick blurs the box's input, which closes the box 150 ms later; the compare box ran
    that late close even when the box had been opened again meanwhile, so the reopened box
    vanished under the keyboard (focus fell to the page body; a CI run met it)."""
    open_page(page, server, "?source=counting&s=AAA&i=1m")
    focused = "document.activeElement.id"
    page.locator(f"#{picker}-button").focus()
    page.keyboard.press("Enter")
    until(lambda: page.evaluate(focused) == f"{picker}-input", what="focus in the box")
    name = "RSI" if picker == "indicator" else "BBB"
    page.keyboard.type(name)
    page.wait_for_function(
        f"document.querySelector('#{picker}-results li.selected .sr-symbol')?.textContent"
        f" === '{name}'"
    )
    # RSI also heads the list of the empty box, BBB that of "B": wait for the list of the
    # whole name (an Enter before it searches first and picks when the results arrive).
    page.wait_for_function(f"document.querySelector('#{picker}-results').dataset.text === '{name}'")
    page.keyboard.press("Enter")  # the pick: focus back on the button, the late close pending
    page.keyboard.press("Enter")  # the box again, before that close has run
    after = page.evaluate(AFTER_THE_CLOSE_DELAY, f"#{picker}-box")
    assert after == {"open": True, "focused": f"{picker}-input"}
    assert console == []


def test_inputs_are_edited_in_a_dialog_and_an_indicator_is_removed_with_its_chip(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    query = f"?source=counting&s=BBB&i=1m&ind={SMA}:timeperiod:5&ind={RSI}:timeperiod:14"
    open_page(page, server, query)
    drawn(page, 2)
    page.locator(".indicator-chip[data-id='talib.momentum.RSI'] .indicator-edit").click()
    field = page.locator("#indicator-dialog input[name='timeperiod']")
    assert field.input_value() == "14"
    field.fill("7")
    shot(page, "edit", viewport)
    page.locator("#indicator-dialog-ok").click()
    until(lambda: indicators(page)[1]["inputs"] == {"timeperiod": 7}, what="the new inputs")
    until(lambda: "_timeperiod-7_" in (indicators(page)[1]["key"] or ""), what="the new key")
    drawn(page, 2)
    assert url_indicators(page) == [f"{SMA}:timeperiod:5", f"{RSI}:timeperiod:7"]
    page.locator(".indicator-chip[data-id='talib.momentum.RSI'] .indicator-remove").click()
    until(lambda: len(indicators(page)) == 1, what="the RSI removed")
    assert panes(page) == 1  # its pane went with it
    assert url_indicators(page) == [f"{SMA}:timeperiod:5"]
    shot(page, "removed", viewport)
    assert console == []


FOCUSED = "document.activeElement.getAttribute('aria-label') || document.activeElement.id"


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # a keyboard
def test_the_keyboard_stays_on_the_chips_after_an_edit_or_a_removal(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """Enter on a chip's x removes it and the keyboard moves to the next chip's x (the last
    one gone: to the Indicators button); applying an edit keeps it on the chip's edit. It
    must not fall back to the page's start, where the next Tab begins again from the top."""
    query = f"?source=counting&s=BBB&i=1m&ind={SMA}:timeperiod:5&ind={RSI}:timeperiod:14"
    open_page(page, server, query)
    drawn(page, 2)
    page.locator(".indicator-chip[data-id='talib.momentum.RSI'] .indicator-edit").focus()
    page.keyboard.press("Enter")
    page.locator("#indicator-dialog input[name='timeperiod']").fill("7")
    page.locator("#indicator-dialog-ok").focus()
    page.keyboard.press("Enter")
    until(lambda: indicators(page)[1]["inputs"] == {"timeperiod": 7}, what="the new inputs")
    assert page.evaluate(FOCUSED) == "Edit RSI 7"
    page.locator(".indicator-chip[data-id='talib.overlap.SMA'] .indicator-remove").focus()
    page.keyboard.press("Enter")
    until(lambda: len(indicators(page)) == 1, what="the SMA removed")
    assert page.evaluate(FOCUSED) == "Remove RSI 7"
    page.keyboard.press("Enter")
    until(lambda: not indicators(page), what="the RSI removed")
    assert page.evaluate(FOCUSED) == "indicator-button"
    assert console == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)  # no layout involved
def test_indicators_survive_a_reload_and_are_asked_again_after_a_server_restart(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(page, server, f"?source=counting&s=CCC&i=1m&ind={RSI}:timeperiod:9")
    drawn(page, 1)
    page.reload()
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
    (rsi,) = drawn(page, 1)
    assert rsi["inputs"] == {"timeperiod": 9}
    server.stop()
    page.wait_for_function("window.candlewire.connection === 'reconnecting'")
    received = indicators(page)[0]["received"]
    server.start()
    page.wait_for_function("window.candlewire.connection === 'live'", timeout=seconds(20) * MS)
    # A new indicator_init, then live updates again.
    until(lambda: indicators(page)[0]["received"] > received + 2, what="updates after restart")
    assert live_point(page, 0, "RSI")["value"] is not None
    # The refused reconnect attempts, and the page's /health asks between them.
    errors = [e for e in console if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e]
    assert errors == []


def scale_modes(page: Page) -> list[int]:
    """The price scale mode of each pane's right scale (0 linear, 1 log, 2 percent)."""
    modes: list[int] = page.evaluate(
        """() => {
          const chart = window.candlewire.charts[0].chart;
          return chart.panes().map((_, i) => chart.priceScale("right", i).options().mode);
        }"""
    )
    return modes


def test_an_oscillator_pane_keeps_a_linear_scale_whatever_the_price_pane_uses(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A new pane's scale starts from the chart's last "right" options: a log or percent
    price pane made the RSI pane log or percent (MACD's negative values collapsed)."""
    open_page(page, server, f"?source=counting&s=AAA&i=1m&ps=log&ind={RSI}:timeperiod:14")
    drawn(page, 1)
    assert scale_modes(page) == [1, 0]
    add(page, "macd")
    drawn(page, 2)
    assert scale_modes(page) == [1, 0, 0]
    shot(page, "log-price-linear-oscillators", viewport)
    assert console == []


def test_an_indicator_the_server_refuses_keeps_its_chip_but_leaves_no_blank_pane(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    open_page(
        page, server, f"?source=counting&s=BBB&i=1m&ind={RSI}:timeperiod:-5&ind={SMA}:timeperiod:5"
    )
    until(lambda: indicators(page)[0]["error"], what="the RSI refused")
    until(lambda: indicators(page)[1]["outputs"], what="the SMA drawn")
    assert panes(page) == 1  # no pane for the refused oscillator
    assert page.locator(".indicator-chip.failed").count() == 1
    shot(page, "refused", viewport)
    errors = [e for e in console if "timeperiod" not in e]  # the refusal, if logged
    assert errors == []


def test_an_indicator_with_an_overlong_input_says_why_it_is_refused_on_a_chip_on_the_screen(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A link's input of 1,200 digits went into the request's id: the server refused an id
    over 1,000 characters, and quoted it clipped, so the error reached no chip (empty and
    silent), whose label widened the page to some 10,000 px. The id is kept short (cut, and
    its hash), the input's own refusal marks the chip, and the label is cut."""
    open_page(page, server, f"?source=counting&s=BBB&i=1m&ind={RSI}:timeperiod:{'9' * 1200}")
    until(lambda: "timeperiod" in (indicators(page)[0]["error"] or ""), what="the RSI refused")
    assert page.locator(".indicator-chip.failed").count() == 1
    sizes = browsing.js(page, "[document.scrollingElement.scrollWidth, innerWidth]")
    assert sizes[0] <= sizes[1], f"the page is {sizes[0]} px wide in a {sizes[1]} px window"
    assert [e for e in console if "timeperiod" not in e and "'id'" not in e] == []
