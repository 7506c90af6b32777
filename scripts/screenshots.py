"""Take the README's screenshots of the web page (docs/page-desktop.png, docs/page-phone.png).

Starts a server on the sample data in a temporary folder, opens BTCUSD 1h with Bollinger
Bands and RSI, adds a price alert from the page, and saves a desktop (1440x900) and a phone
(390x844) screenshot. Needs Debian's chromium (``make browser``):

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
QUERY = (
    "?source=csv&s=BTCUSD&i=1h"
    "&ind=talib.overlap.BBANDS:timeperiod:20&ind=talib.momentum.RSI:timeperiod:14"
)


def start_server(folder: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "DB": str(folder / "candlewire.sqlite3"), "PROVIDERS": "csv"}
    subprocess.run([sys.executable, "populate.py"], cwd=ROOT, env=env, check=True)
    server = subprocess.Popen(
        [sys.executable, "server.py", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if "listening on " in line:
            return server, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("the server did not start")


def show(page: Page, url: str) -> None:
    page.goto(url + "/" + QUERY)
    page.wait_for_function("window.candlewire && window.candlewire.connection === 'live'")
    page.wait_for_function("window.candlewire.charts[0].bars().length > 0")
    page.wait_for_timeout(1500)  # indicator panes and values


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                desktop = browser.new_page(viewport={"width": 1440, "height": 900})
                show(desktop, url)
                last = desktop.evaluate("window.candlewire.charts[0].bars().at(-1).close")
                desktop.locator("#alert-button").click()
                desktop.locator("#alert-level").fill(str(round(last * 1.01, 2)))
                desktop.locator("#alert-add").click()
                desktop.wait_for_function("window.candlewire.alerts.lines(0).length > 0")
                desktop.keyboard.press("Escape")
                desktop.wait_for_timeout(500)
                desktop.screenshot(path=str(ROOT / "docs" / "page-desktop.png"))
                phone = browser.new_page(viewport={"width": 390, "height": 844})
                show(phone, url)
                phone.screenshot(path=str(ROOT / "docs" / "page-phone.png"))
                browser.close()
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
