"""The web page when a symbol cannot be shown as asked: a compare at an interval the compared
symbol lacks, or of a symbol with no bars at the chart's times or none at all, and watchlist
rows whose symbol is gone, is closed to the token, has no bars or whose source is down.

One server for the module, with ``AUTH=jwt`` (the page's token may not read ``csv:SECRET``):
a CSV folder written here and served as history (``CSV_REPLAY_SPEED=0``: fixed dates), a
1-minute symbol ``MINUTE`` spanning midnight, the daily-only ``DAILY`` (and ``SECRET``) over
the same days, ``OLD`` years before, and the ``polled`` provider (no stream: prices only from
history), down while its flag file exists, whose ``NONE`` never has a bar. Each test runs at
desktop and phone size, fails on a console error, and sees no error toast.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import browsing
from tests.browsing import MS, browser, console, free_port, js, page, viewport
from tests.harness import ServerProcess, base_env, populate, seconds, until
from tests.test_access_e2e import AUDIENCE, SECRET, token

__all__ = ["browser", "console", "page", "viewport"]  # the shared fixtures

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

DAY = 86400
MINUTE_START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 420 minutes to 03:00
READABLE = [  # what the page's token may read (of the CSV folder: all but SECRET)
    *(f"csv:{name}" for name in ("MINUTE", "DAILY", "OLD", "GONE", "NOPE")),
    *(f"polled:{name}" for name in ("AAA", "BBB", "NONE")),
]


def write_csv(path: Path, rows: list[tuple[str, float]]) -> None:
    lines = ["date,open,high,low,close,volume"]
    lines += [f"{date},{c},{c + 1},{c - 1},{c},10" for date, c in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def days(first: datetime, count: int, base: float) -> list[tuple[str, float]]:
    return [
        ((first + timedelta(days=i)).strftime("%Y-%m-%d"), round(base + 3 * i + 0.25, 2))
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def down_flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("polled") / "down"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, down_flag: Path) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("browser-unserved")
    folder = tmp / "csv"
    folder.mkdir()
    minutes = [
        ((MINUTE_START + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S"), 100 + i / 100)
        for i in range(420)
    ]
    write_csv(folder / "MINUTE.csv", minutes)
    write_csv(folder / "DAILY.csv", days(datetime(2026, 2, 1, tzinfo=UTC), 31, 50))
    write_csv(folder / "SECRET.csv", days(datetime(2026, 2, 1, tzinfo=UTC), 31, 70))
    write_csv(folder / "OLD.csv", days(datetime(2020, 1, 1, tzinfo=UTC), 31, 10))
    env = base_env(
        tmp,
        PROVIDERS="csv,polled",
        EXTRA_PROVIDERS="polled=tests.providers:PolledProvider",
        CSV_FOLDER_PATH=str(folder),
        CSV_REPLAY_SPEED="0",
        CANDLEWIRE_TEST_DOWN=str(down_flag),
        AUTH="jwt",
        JWT_SECRET=SECRET,
        JWT_AUDIENCE=AUDIENCE,
        STREAM_LINGER_SECONDS="0.5",
    )
    result = populate(env)
    assert result.returncode == 0, result.stderr
    running = Keyed(env, tmp / "server.log", free_port()).start()
    yield running
    running.stop()


class Keyed(ServerProcess):
    """The harness's server, its own requests carrying a token that reads everything."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {token('harness')}"}
        )
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def closes(server: ServerProcess, source: str, name: str, interval: str) -> dict[int, float]:
    """{bar time: close} of ``/api/history``."""
    query = urllib.parse.urlencode(
        {"source": source, "name": name, "interval": interval, "count": 1000}
    )
    answer = server.get(f"/api/history?{query}")
    close = f"{source}-{name}-{interval}-close"
    return {
        int(datetime.fromisoformat(bar["date"]).replace(tzinfo=UTC).timestamp()): bar[close]
        for bar in answer["data"]
    }


def open_page(page: Page, server: ServerProcess, query: str) -> None:
    browsing.open_page(page, server, f"?token={token('trader', symbols=READABLE)}&{query}")


def toasts(page: Page) -> list[str]:
    texts: list[str] = js(page, "[...document.querySelectorAll('.toast')].map(t => t.textContent)")
    return texts


COMPARE = "window.candlewire.charts[0].compare"


def chip(page: Page) -> dict[str, str]:
    found: dict[str, str] = js(
        page,
        """() => { const el = document.querySelector('.panel-compare');
            const note = el.querySelector('.compare-note');
            return {text: el.textContent, note: note ? note.textContent : '',
                    title: note ? note.title : ''}; }""",
    )
    return found


def test_a_compare_at_an_interval_the_symbol_lacks_is_drawn_from_its_nearest_one(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """A daily-only symbol compared on a 1-minute chart drew an empty line (its 1m `data`
    was refused, shown only as a passing toast). Now it is drawn from its daily bars: each
    minute shows the close of its day (as /api/history gives it), the chip says "1D" and why,
    whether picked in the Compare box or opened from a link."""
    daily = closes(server, "csv", "DAILY", "1d")
    open_page(page, server, "source=csv&s=MINUTE&i=1m")
    page.locator("#compare-button").click()
    page.locator("#compare-input").fill("DAILY")
    page.wait_for_function(
        "document.querySelector('#compare-results li.selected .sr-symbol')?.textContent === 'DAILY'"
    )
    page.keyboard.press("Enter")
    for opened in ("picked", "linked"):
        if opened == "linked":
            open_page(page, server, "source=csv&s=MINUTE&i=1m&cmp=csv:DAILY")
        page.wait_for_function(f"{COMPARE}?.bars().length > 0")
        times = [b["time"] for b in js(page, "window.candlewire.charts[0].ownBars()")]
        page.wait_for_function(f"{COMPARE}.bars().length === {len(times)}")  # every minute
        points = js(page, f"{COMPARE}.bars()")
        assert [p["time"] for p in points] == times, opened
        spans_midnight = {t // DAY for t in times}
        assert len(spans_midnight) == 2, "the chart's minutes span two days"
        for p in points:
            assert p["value"] == daily[p["time"] // DAY * DAY], (opened, p)
        assert js(page, f"{COMPARE}.interval") == "1d"
        shown = chip(page)
        assert "vs DAILY" in shown["text"] and shown["note"] == "1D", shown
        assert "no 1 minute bars" in shown["title"], shown
        assert toasts(page) == [], opened
    browsing.shot(page, f"unserved-compare-1d-on-1m-{viewport}")
    # At an interval the symbol offers, the line is its own bars again, without a note.
    page.locator("#interval-menu" if viewport == "phone" else "#intervals").wait_for()
    if viewport == "phone":
        page.locator("#interval-menu").select_option("1d")
    else:
        page.locator("#intervals button[data-interval='1d']").click()
    page.wait_for_function(f"{COMPARE}?.interval === '1d' && {COMPARE}.bars().length > 0")
    assert chip(page)["note"] == ""
    assert console == []


@pytest.mark.parametrize(
    ("name", "note", "why"),
    [
        ("OLD", "no bars here", "no bars at the times this chart shows"),
        ("NOPE", "not found", "Unknown symbol csv:NOPE"),
    ],
)
def test_a_compare_that_cannot_be_drawn_says_why_on_its_chip(
    server: ServerProcess,
    page: Page,
    viewport: str,
    console: list[str],
    name: str,
    note: str,
    why: str,
) -> None:
    """A compared symbol whose bars are all years before the chart's, or that does not
    exist, left an empty chip ("vs OLD") with nothing drawn and nothing said (or a toast that
    passed); the chip now says why."""
    open_page(page, server, f"source=csv&s=MINUTE&i=1m&cmp=csv:{name}")
    until(lambda: chip(page)["note"] == note, what=f"the chip to say {note!r}")
    assert why in chip(page)["title"]
    assert js(page, f"{COMPARE}.bars().length") == 0
    assert toasts(page) == []
    browsing.shot(page, f"unserved-compare-{name}-{viewport}")
    assert console == []


ROWS = "window.candlewire.watchlist"


def row_text(page: Page, name: str) -> dict[str, str]:
    found: dict[str, str] = js(
        page,
        """name => { const li = [...document.querySelectorAll('#watchlist-items li')]
              .find(l => l.querySelector('.wl-symbol')?.textContent === name);
            return li ? {last: li.querySelector('.wl-last').textContent,
                         title: li.title, state: li.dataset.state} : null; }""",
        name,
    )
    return found


def test_watchlist_rows_without_a_price_say_why_and_a_source_back_up_fills_its_row(
    server: ServerProcess, page: Page, viewport: str, console: list[str], down_flag: Path
) -> None:
    """Rows of a symbol gone since (after a repopulate), one the token may not read, one
    with no bars and one of a source that is down showed "n/a" (or "…" forever, for the
    symbol without bars), each with an error toast on every load, and the row of the source
    that came back stayed "n/a" until a reload. Each row now says why, in a word and in its
    tooltip, without a toast, and the row of the source fills once the source answers."""
    polled = "AAA" if viewport == "desktop" else "BBB"  # not in the server's cache yet
    details = {"intervals": ["1m", "1h", "1d"], "type": "candlestick"}
    saved = [
        {"source": source, "name": name, "details": {"source": source, "name": name, **details}}
        for source, name in [
            ("csv", "GONE"),
            ("csv", "SECRET"),
            ("polled", "NONE"),
            ("polled", polled),
        ]
    ]
    page.context.add_init_script(
        f"localStorage.setItem('candlewire.watchlist', {json.dumps(json.dumps(saved))})"
    )
    down_flag.touch()
    try:
        open_page(page, server, "source=csv&s=MINUTE&i=1m")
        if viewport == "phone":
            page.locator("#watchlist-toggle").tap()
        expected = {
            "GONE": ("not found", "Unknown symbol csv:GONE"),
            "SECRET": ("no access", "No permission to read csv:SECRET"),
            "NONE": ("no data", ""),
            polled: ("unavailable", "ConnectionError"),
        }
        for name, (text, why) in expected.items():
            until(lambda n=name, t=text: (row_text(page, n) or {}).get("last") == t, what=name)
            assert why in row_text(page, name)["title"], row_text(page, name)
        browsing.shot(page, f"unserved-watchlist-{viewport}")
        assert toasts(page) == []
    finally:
        down_flag.unlink()
    # The source is back: the row is asked again and shows the price /api/history gives.
    until(lambda: row_text(page, polled)["state"] == "ok", timeout=20, what="the price")
    quote = next(r["quote"] for r in js(page, ROWS) if r["name"] == polled)
    daily = closes(server, "polled", polled, "1d")
    assert quote["value"] == daily[max(daily)]
    assert row_text(page, "GONE")["last"] == "not found", "a refusal is not asked again"
    assert console == []


def test_a_chart_and_a_row_of_a_symbol_gone_after_a_repopulate_say_so_after_the_restart(
    tmp_path: Path, page: Page, viewport: str, console: list[str]
) -> None:
    """A symbol removed (its file deleted, populate.py run, the server restarted) while a
    page showed it: on the reconnect the chart kept its old bars under a Live badge (only a
    toast said "Unknown symbol", for six seconds); now the chart says it is no longer
    served, and so does its watchlist row ("not found")."""
    folder = tmp_path / "csv"
    folder.mkdir()
    write_csv(folder / "GONE.csv", days(datetime(2026, 2, 1, tzinfo=UTC), 31, 50))
    write_csv(folder / "KEPT.csv", days(datetime(2026, 2, 1, tzinfo=UTC), 31, 70))
    env = base_env(tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(folder), CSV_REPLAY_SPEED="0")
    assert populate(env).returncode == 0
    running = ServerProcess(env, tmp_path / "server.log", free_port()).start()
    try:
        browsing.open_page(page, running, "?source=csv&s=GONE&i=1d")
        page.wait_for_function("window.candlewire.watchlist[0]?.quote?.state === 'ok'")
        running.stop()
        page.wait_for_function("window.candlewire.connection !== 'live'")
        (folder / "GONE.csv").unlink()
        assert populate(env).returncode == 0
        running.start()
        page.wait_for_function("window.candlewire.charts[0].message", timeout=seconds(20) * MS)
        message = page.locator(".panel-message").inner_text()
        assert "GONE is no longer served" in message and "Unknown symbol csv:GONE" in message
        until(lambda: row_text(page, "GONE")["last"] == "not found", what="the row")
        assert toasts(page) == []
        browsing.shot(page, f"unserved-gone-after-repopulate-{viewport}")
    finally:
        running.stop()
    errors = [e for e in console if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e]
    assert errors == []  # but the refused reconnect attempts while the server was down
