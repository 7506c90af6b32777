"""gzip on the real server: a large JSON answer is compressed for a client that sends
``Accept-Encoding: gzip`` (``Content-Length`` that of the compressed body, ``Vary``), sent as
it is to others; small answers, ``/metrics`` and sockets are left alone, and ``HEAD`` says
what the ``GET`` would send.

The series is the sample ``csv:BTCUSD`` (1-minute bars) up to a fixed past ``end``, so two
requests get the same bars.
"""

from __future__ import annotations

import calendar
import gzip
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ServerProcess, WsClient, base_env, eventually, populate, seconds

END = "2026-10-10%2000:00:00"
HISTORY = f"/api/history?source=csv&name=BTCUSD&interval=1m&count=5000&end={END}"
GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("compression")
    env = base_env(tmp, PROVIDERS="csv")
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def get(server: ServerProcess, path: str, method: str = "GET", **headers: str) -> Any:
    """(headers, raw body) of one request; urllib decompresses nothing."""
    request = urllib.request.Request(server.url + path, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=seconds(30)) as response:
        return response.headers, response.read()


def test_a_5000_bar_history_is_gzipped_for_a_client_that_accepts_it(
    server: ServerProcess,
) -> None:
    """It was sent as 900 KB of JSON to every client, whatever it accepted."""
    plain_headers, plain = get(server, HISTORY)
    assert plain_headers.get("Content-Encoding") is None
    assert int(plain_headers["Content-Length"]) == len(plain) > 500_000
    headers, packed = get(server, HISTORY, **GZIP)
    assert headers["Content-Encoding"] == "gzip"
    assert "accept-encoding" in headers["Vary"].lower()
    assert int(headers["Content-Length"]) == len(packed) < len(plain) / 4
    assert gzip.decompress(packed) == plain
    assert len(json.loads(plain)["data"]) == 5000


@pytest.mark.parametrize(
    "path",
    [
        "/udf/history?symbol=csv:BTCUSD&resolution=1&to={to}&countback=5000",
        "/openbb/bars?symbol=csv:BTCUSD&interval=1d&count=30",
        "/api/symbols?q=",
    ],
)
def test_other_large_json_answers_are_gzipped_too(server: ServerProcess, path: str) -> None:
    to = calendar.timegm((2026, 10, 10, 0, 0, 0))
    headers, packed = get(server, path.format(to=to), **GZIP)
    assert headers["Content-Encoding"] == "gzip", path
    assert int(headers["Content-Length"]) == len(packed)
    body = gzip.decompress(packed)
    assert len(body) > len(packed) and json.loads(body)


def test_head_has_the_headers_of_the_get_and_no_body(server: ServerProcess) -> None:
    got, packed = get(server, HISTORY, **GZIP)
    headers, body = get(server, HISTORY, method="HEAD", **GZIP)
    assert body == b""
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Length"] == got["Content-Length"] == str(len(packed))
    headers, body = get(server, HISTORY, method="HEAD")
    assert body == b"" and headers.get("Content-Encoding") is None
    assert int(headers["Content-Length"]) > 500_000


@pytest.mark.parametrize("refusal", ["gzip;q=0", "br, GZIP ; q=0.0, identity", "x-gzip;q=0"])
def test_a_client_that_refuses_gzip_gets_it_plain(server: ServerProcess, refusal: str) -> None:
    headers, body = get(server, HISTORY, **{"Accept-Encoding": refusal})
    assert headers.get("Content-Encoding") is None and json.loads(body)


def test_small_answers_and_metrics_are_sent_as_they_are(server: ServerProcess) -> None:
    for path in ("/health", "/udf/time", "/api/symbols?q=NOPE", "/metrics"):
        headers, body = get(server, path, **GZIP)
        assert headers.get("Content-Encoding") is None, path
        assert int(headers["Content-Length"]) == len(body), path
    headers, body = get(server, "/metrics", **GZIP)
    assert len(body) > 1024 and body.startswith(b"#")  # large, but scraped as text


async def test_sockets_through_the_app_are_untouched(server: ServerProcess) -> None:
    """The live-grid socket (served through the app's middleware) opens and answers with
    ``Accept-Encoding: gzip`` on its upgrade; so does ``/websocket/``."""
    grid_url = server.ws_url.replace("/websocket/", "/openbb/live_grid_ws")
    grid = await WsClient.open(grid_url, additional_headers=GZIP)
    try:
        await grid.send_raw(json.dumps({"params": {"symbol": "csv:BTCUSD"}}))
        await eventually(lambda: any(m.get("symbol") == "csv:BTCUSD" for m in grid.messages))
    finally:
        await grid.close()
    hub = await WsClient.open(server.ws_url, additional_headers=GZIP)
    try:
        await hub.send({"type": "ping", "id": int(time.time())})
        await hub.wait_for("pong")
    finally:
        await hub.close()


def test_a_static_file_is_gzipped_with_a_weak_etag_that_still_revalidates(
    server: ServerProcess,
) -> None:
    """The page's script is streamed gzipped; its ``ETag`` names the file, so the gzipped
    answer's is weak (no ``If-Range`` resume can splice plain bytes into it), and
    ``If-None-Match`` with it still gets 304."""
    plain_headers, plain = get(server, "/js/chart.js")
    assert plain_headers["ETag"].startswith('"')
    headers, packed = get(server, "/js/chart.js", **GZIP)
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(packed) == plain
    assert headers["ETag"] == "W/" + plain_headers["ETag"]
    request = urllib.request.Request(
        server.url + "/js/chart.js", headers={**GZIP, "If-None-Match": headers["ETag"]}
    )
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request, timeout=seconds(30))
    not_modified.value.close()
    assert not_modified.value.code == 304


def test_a_304_to_a_gzipped_static_file_keeps_its_weak_etag_and_vary(
    server: ServerProcess,
) -> None:
    """Revalidating the gzipped script with its weak ``ETag`` got a 304 with the file's
    strong one and no ``Vary: Accept-Encoding``: a browser updates the headers it keeps
    with a 304's, so the gzipped body it held got the strong tag that an ``If-Range``
    resume with plain bytes matches (what the weak tag is for)."""
    headers, _ = get(server, "/js/chart.js", **GZIP)
    request = urllib.request.Request(
        server.url + "/js/chart.js", headers={**GZIP, "If-None-Match": headers["ETag"]}
    )
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request, timeout=seconds(30))
    not_modified.value.close()
    assert not_modified.value.code == 304
    assert not_modified.value.headers["ETag"] == headers["ETag"]
    assert "accept-encoding" in not_modified.value.headers["Vary"].lower()
    plain_headers, _ = get(server, "/js/chart.js")
    plain = urllib.request.Request(
        server.url + "/js/chart.js", headers={"If-None-Match": plain_headers["ETag"]}
    )
    with pytest.raises(urllib.error.HTTPError) as plain_not_modified:
        urllib.request.urlopen(plain, timeout=seconds(30))
    plain_not_modified.value.close()
    assert plain_not_modified.value.headers["ETag"] == plain_headers["ETag"]  # strong
