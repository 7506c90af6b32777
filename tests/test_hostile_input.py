"""Hostile input never crashes a socket, floods the log or the client, on any socket route.

Every frame in ``HOSTILE`` is sent to ``/websocket/`` and to the OpenBB live-grid socket;
afterwards the same socket still answers (a ping on ``/websocket/``, a params message on
the grid), no reply is larger than about a kilobyte, and the server log has no traceback.
Unit tests cover the pieces: frame decoding and depth (:mod:`backend.wire.protocol`), the
bounded echo, and the traceback rate limit (:class:`backend.logs.RateLimitRepeats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from backend import logs
from backend.api import openbb_grid, openbb_widgets
from backend.errors import ProtocolError
from backend.settings import Settings
from backend.wire import protocol
from tests.harness import ServerProcess, WsClient, base_env, populate, seconds

MAX_REQUESTS = 100
MAX_COUNT = 10_000
REPLY_LIMIT = 1536  # bytes of any reply to a hostile frame (ECHO_LIMIT plus the envelope)
HUGE = 900_000


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def request(kind: str, **fields: Any) -> dict[str, Any]:
    base = {"type": kind, "source": "counting", "name": "AAA", "interval": "1m", "count": 1}
    return {**base, "stream": False, "end": "2026-01-01 00:00:00", "search": "a", **fields}


WRONG_VALUES: list[Any] = [None, True, -1, 1.5, 1e308, "", "x" * 5000, [], {}, [[[1]]], {"a": {}}]
KINDS = ("data", "data_history", "search_data", "unsubscribe", "ping")
FIELDS = ("type", "source", "name", "interval", "count", "stream", "end", "search", "id")


def wrong_types(field: str) -> str:
    """One frame: every request kind with ``field`` set to each wrong value."""
    return json.dumps([request(kind, **{field: value}) for kind in KINDS for value in WRONG_VALUES])


def count_literal(literal: str) -> str:
    return (
        '[{"type":"data","source":"counting","name":"AAA","interval":"1m","count":' + literal + "}]"
    )


HOSTILE: dict[str, str | bytes] = {
    "invalid UTF-8 in a binary frame": b"\xff\xfe\xfd[{]",
    "a binary frame of valid JSON": b'[{"type":"search_data","search":"AAA"}]',
    "an empty text frame": "",
    "an empty binary frame": b"",
    "null": "null",
    "a bare string": '"ping"',
    "a lone surrogate escape": '[{"type":"ping","id":"\\ud800"}]',
    "NUL and control characters": '[{"type":"search_data","search":"\\u0000\\u0001\\u001f"}]',
    "full-text search syntax": json.dumps([{"type": "search_data", "search": '"AND OR* NEAR(:'}]),
    "a 900 KB unknown type": json.dumps([{"type": "x" * HUGE}]),
    "a 900 KB symbol name": json.dumps([request("data", name="x" * HUGE)]),
    "a 900 KB search": json.dumps([{"type": "search_data", "search": "x" * HUGE}]),
    "a 900 KB ping id": json.dumps([{"type": "ping", "id": "x" * HUGE}]),
    "a 900 KB key": json.dumps([{"type": "ping", "x" * HUGE: 1}]),
    "a 900 KB end date": json.dumps([request("data_history", end="x" * HUGE)]),
    "100 unknown types of 9 KB": json.dumps([{"type": "x" * 9000}] * 100),
    "a ping id nested 300 deep": '[{"type":"ping","id":' + nested(300) + "}]",
    "a ping id nested 33 deep": '[{"type":"ping","id":' + nested(33) + "}]",
    "arrays nested 2,000 deep": nested(2000),
    "objects nested 1,000 deep": '{"a":' * 1000 + "1" + "}" * 1000,
    "an unclosed array 500,000 deep": "[" * 500_000,
    "NaN": count_literal("NaN"),
    "Infinity": count_literal("Infinity"),
    "-Infinity": count_literal("-Infinity"),
    "1e400": count_literal("1e400"),
    "a 40-digit integer": count_literal("1" + "0" * 40),
    "1,000 requests in a frame": json.dumps([{"type": "ping"}] * 1000),
    "1,000 unknown requests in a frame": json.dumps([{"type": "dance"}] * 1000),
    **{f"wrong types for {field!r}": wrong_types(field) for field in FIELDS},
    # Live-grid shapes (on /websocket/ they are requests without a known type).
    "params with a symbol nested 300 deep": '{"params":{"symbol":' + nested(300, '"AAA"') + "}}",
    "params with a 900 KB symbol": json.dumps({"params": {"symbol": "x" * HUGE}}),
    "params with 1,000 symbols": json.dumps(
        {"params": {"symbol": [f"{i:0200d}" for i in range(1000)]}}
    ),
    "params of wrong types": json.dumps({"type": 5, "params": {"symbol": [{"a": 1}, 5, None]}}),
    "params that are a list": json.dumps({"params": ["AAA"]}),
    "params with hostile symbols": json.dumps(
        {"params": {"symbol": ['"', "*", ":", "a:b:c", "NEAR(", "\u0000", "\U0001f600", " "]}}
    ),
}


# ---------------------------------------------------------------- units


def parse(text: str | bytes) -> list[protocol.Request]:
    return protocol.parse_frame(text, MAX_REQUESTS, MAX_COUNT)


@pytest.mark.parametrize("depth", [33, 300, 1100, 15_000])
def test_nesting_deeper_than_the_limit_is_a_bad_request(depth: int) -> None:
    [bad] = parse('[{"type":"ping","id":' + nested(depth) + "}]")
    assert isinstance(bad, protocol.BadRequest)
    assert (bad.code, bad.raw) == ("bad_request", None)
    assert "nested deeper than 32" in bad.message


EIGHT_MIB = 8 * 1024 * 1024


def empty_objects(size: int) -> str:
    """A frame of ``size`` bytes: an array of empty objects (2.8 million in 8 MiB)."""
    return "[" + ",".join(["{}"] * ((size - 2) // 3)) + "]"


@pytest.mark.parametrize("as_bytes", [False, True])
@pytest.mark.parametrize(
    "frame",
    [
        empty_objects(EIGHT_MIB),
        '[{"type":"ping","x":' + empty_objects(EIGHT_MIB - 40) + "}]",
        "[" + ",".join(['{"":""}'] * (EIGHT_MIB // 8)) + "]",
        "[" + ",".join(['""'] * (EIGHT_MIB // 3)) + "]",
        nested(4 * protocol.MAX_VALUES),
    ],
    ids=["empty objects", "inside one request", "small objects", "empty strings", "deep"],
)
def test_a_frame_of_millions_of_values_is_refused_before_it_is_decoded(
    frame: str, as_bytes: bool
) -> None:
    """An 8 MiB frame (the default MAX_FRAME_BYTES) of small values decoded to millions of
    objects: 350 MB and seconds of the event loop's time per frame. It is refused first."""
    tracemalloc.start()
    try:
        [bad] = parse(frame.encode() if as_bytes else frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(bad, protocol.BadRequest)
    assert bad.code == "limit_reached" and bad.raw is None
    assert f"more than {protocol.MAX_VALUES} JSON values" in bad.message
    assert peak < 3 * len(frame) + 2**20, f"decoding took {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_separators_inside_strings_are_not_values(as_bytes: bool) -> None:
    """A large frame whose size is a string (a chat prompt's image, a pasted text with
    commas, brackets and escaped quotes) is decoded as before."""
    text = '[,{"\\"' * (EIGHT_MIB // 10)
    frame = json.dumps([{"type": "prompt", "prompt": text, "img": "data:image/png;base64,AAAA"}])
    [chat] = parse(frame.encode() if as_bytes else frame)
    assert isinstance(chat, protocol.ChatRequest) and chat.raw["prompt"] == text
    many = json.dumps([{"type": "ping", "id": 1, "x": list(range(protocol.MAX_VALUES - 10))}])
    [ping] = parse(many.encode() if as_bytes else many)
    assert isinstance(ping, protocol.PingRequest)


def test_nesting_up_to_the_limit_and_brackets_inside_strings_are_fine() -> None:
    [ping] = parse('[{"type":"ping","id":1,"x":' + nested(30) + "}]")
    assert isinstance(ping, protocol.PingRequest)
    [search] = parse(json.dumps([{"type": "search_data", "search": "[" * 5000}]))
    assert isinstance(search, protocol.SearchRequest)


@pytest.mark.parametrize("text", [b"\xff\xfe", "NaN", "[Infinity]", "[1e400]", '"\\ud800"', ""])
def test_what_is_not_strict_json_is_bad_json(text: str | bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.load_frame(text)
    assert caught.value.code == "bad_json"


def test_an_error_reply_echoes_at_most_about_a_kilobyte() -> None:
    [bad] = parse(json.dumps([{"type": "x" * HUGE, "source": "csv", "count": 5}]))
    assert isinstance(bad, protocol.BadRequest) and bad.code == "unknown_type"
    reply = protocol.error_message(bad.code, bad.message, bad.raw)
    assert len(reply) <= REPLY_LIMIT
    body = orjson.loads(reply)
    assert body["request"]["source"] == "csv" and body["request"]["count"] == 5
    assert body["request"]["type"].endswith("\u2026")
    assert len(body["message"]) < 200


def test_a_small_request_is_echoed_unchanged() -> None:
    raw = {"type": "data", "source": "csv", "name": "BTCUSD", "interval": "7m", "x": [1, {}]}
    assert orjson.loads(protocol.error_message("unknown_interval", "m", raw))["request"] == raw


@pytest.mark.parametrize(
    "raw",
    [
        ["x" * 5000] * 3,
        "y" * 5000,
        {f"k{i}": "v" * 200 for i in range(50)},
        {"big": 10**30, "x": "y" * 5000},
        10**30,
    ],
)
def test_every_shape_of_large_request_is_shortened(raw: Any) -> None:
    assert len(protocol.error_message("bad_request", "m" * 5000, raw)) <= REPLY_LIMIT


def test_a_ping_id_must_be_a_scalar() -> None:
    [bad, ok] = parse(json.dumps([{"type": "ping", "id": [1]}, {"type": "ping", "id": "a"}]))
    assert isinstance(bad, protocol.BadRequest) and bad.code == "invalid_field"
    assert isinstance(ok, protocol.PingRequest)


def test_the_live_grid_reads_deep_or_broken_frames_as_no_params_message() -> None:
    for text in (nested(300), '{"params":{"symbol":' + nested(5000) + "}}", b"\xff", "[" * 99_999):
        assert openbb_grid.parse_params_message(text) is None


def records(
    handler_filter: logging.Filter, count: int, line: int = 1, traceback: bool = True
) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(handler_filter)
    for _ in range(count):
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            record = logging.LogRecord(
                "x",
                logging.ERROR if traceback else logging.WARNING,
                "f.py",
                line,
                "request failed: %r",
                ("a",),
                (RuntimeError, exc, None) if traceback else None,
            )
            handler.handle(record)
    return [line for line in stream.getvalue().splitlines() if "request failed" in line]


def test_repeated_tracebacks_from_one_place_are_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = logs.RateLimitRepeats(interval=60)
    assert len(records(limiter, 500)) == 1
    assert len(records(limiter, 1, line=2)) == 1  # another place is not held back
    now[0] += 61
    [line] = records(limiter, 1)
    assert "(499 more like this in the last 61 s were not logged)" in line


def test_repeated_warnings_from_one_place_are_logged_a_few_times_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream that sends 3,000 unreadable frames gets 10 lines, not 3,000."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = logs.RateLimitRepeats(interval=60, burst=10)
    assert len(records(limiter, 3000, traceback=False)) == 10
    assert len(records(limiter, 5, line=2, traceback=False)) == 5
    now[0] += 60
    lines = records(limiter, 3, traceback=False)
    assert len(lines) == 3
    assert "(2990 more like this in the last 60 s were not logged)" in lines[0]
    assert "not logged" not in lines[1]
    info = logging.LogRecord("x", logging.INFO, "f.py", 3, "request failed: %r", ("a",), None)
    assert all(limiter.filter(info) for _ in range(100))  # below WARNING: never held


def test_a_flood_of_connections_writes_a_bounded_number_of_lines_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each WebSocket upgrade wrote INFO lines (uvicorn's, and the hub's "connected" and
    "disconnected"): 2,000 refused upgrades a second wrote 4,000 log lines a second."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = logs.RateLimitRepeats(interval=60)

    def refused_upgrade() -> logging.LogRecord:
        args = ("203.0.113.9:4000", "/websocket/", 401)
        return logging.LogRecord(
            "uvicorn.error", logging.INFO, "impl.py", 486, '%s - "WebSocket %s" %d', args, None
        )

    passed = [limiter.filter(refused_upgrade()) for _ in range(2000)]
    assert passed.count(True) == logs.CONNECTION_BURST
    other = logging.LogRecord("uvicorn.error", logging.INFO, "s.py", 1, "started", None, None)
    assert all(limiter.filter(other) for _ in range(1000))  # other INFO lines: never held
    now[0] += 60
    line = refused_upgrade()
    assert limiter.filter(line)
    assert "(1700 more like this in the last 60 s were not logged)" in line.getMessage()


def test_a_scan_and_scan_stop_churn_writes_a_bounded_number_of_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each scan, stopped or not, ends with an INFO line: 200 scan / scan_stop pairs a
    socket (loopback has no frame rate limit) wrote 800 lines in 13 s from four sockets."""
    from backend.hub import scanning

    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    limiter = logs.RateLimitRepeats(interval=60)
    args = (7, "SYM", 0, 400, 0, ", stopped")
    passed = [
        limiter.filter(
            logging.LogRecord(
                scanning.logger.name, logging.INFO, "s.py", 120, scanning.SCAN_DONE_LINE, args, None
            )
        )
        for _ in range(2000)
    ]
    assert passed.count(True) == logs.CONNECTION_BURST


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    env = base_env(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5", STREAM_LINGER_SECONDS="0.5")
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


def url_of(server: ServerProcess, endpoint: str) -> str:
    base = server.url.replace("http://", "ws://")
    return server.ws_url if endpoint == "hub" else base + openbb_widgets.GRID_WS_PATH


@pytest.fixture(params=["hub", "grid"])
def endpoint(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def socket(server: ServerProcess, endpoint: str) -> AsyncIterator[WsClient]:
    client = await WsClient.open(url_of(server, endpoint), max_size=None)
    yield client
    await client.close()


class LogMark:
    """The server log from a point on."""

    def __init__(self, server: ServerProcess) -> None:
        self.path = server.log_path
        self.start = self.path.stat().st_size

    def since(self) -> str:
        with open(self.path, "rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")


async def answers(client: WsClient, endpoint: str, tag: str) -> None:
    """The socket still answers: a pong on ``/websocket/``, a row on the live grid."""
    mark = len(client.messages)
    if endpoint == "hub":
        await client.send({"type": "ping", "id": tag})
        await client.wait_for("pong", lambda m: m.get("id") == tag, timeout=30, after=mark)
        return
    await client.send_raw(json.dumps({"params": {"symbol": "AAA"}}))
    deadline = time.monotonic() + seconds(30)
    while not any(m.get("symbol") == "AAA" for m in client.messages[mark:]):
        assert time.monotonic() < deadline, "the live grid sent no row after the frame"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("frame", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_hostile_frame_is_answered_briefly_and_the_socket_keeps_working(
    server: ServerProcess, socket: WsClient, endpoint: str, frame: str | bytes
) -> None:
    log = LogMark(server)
    mark = len(socket.messages)
    await socket.send_raw(frame)
    await answers(socket, endpoint, "after")
    for message in socket.messages[mark:]:
        if message.get("type") in ("error", "pong", None):  # None: a live-grid row
            assert len(orjson.dumps(message)) <= REPLY_LIMIT, str(message)[:300]
    assert "Traceback" not in log.since()
    assert server.get("/health")["status"] == "ok"


async def test_a_flood_of_deep_pings_is_answered_without_logging(server: ServerProcess) -> None:
    log = LogMark(server)
    client = await WsClient.open(server.ws_url)
    frame = '[{"type":"ping","id":' + nested(300) + "}]"
    for _ in range(2000):
        await client.send_raw(frame)
    await client.wait_for("error", timeout=60, after=1999)
    await client.close()
    assert {m["code"] for m in client.messages} == {"bad_request"}
    assert len(log.since()) < 5000  # the connect and disconnect lines; no traceback


@pytest.mark.parametrize("endpoint", ["hub", "grid"])
async def test_invalid_utf8_in_a_text_frame_closes_with_1007_and_others_go_on(
    server: ServerProcess, endpoint: str
) -> None:
    log = LogMark(server)
    client = await WsClient.open(url_of(server, endpoint))
    with contextlib.suppress(ConnectionClosed):
        await client.connection.send(b'[{"type":"ping","id":"\xff"}]', text=True)
    await asyncio.wait_for(client.connection.wait_closed(), seconds(10))
    assert client.connection.close_code == 1007  # RFC 6455 section 8.1
    await client.close()
    other = await WsClient.open(url_of(server, endpoint))
    await answers(other, endpoint, "other")
    await other.close()
    assert "Traceback" not in log.since()


@pytest.mark.parametrize("endpoint", ["hub", "grid"])
async def test_an_oversize_frame_closes_with_1009_and_others_go_on(
    server: ServerProcess, endpoint: str
) -> None:
    log = LogMark(server)
    client = await WsClient.open(url_of(server, endpoint), max_size=None)
    with contextlib.suppress(ConnectionClosed):
        oversize = Settings.model_fields["MAX_FRAME_BYTES"].default + 1
        await client.send_raw(json.dumps({"params": {"symbol": "x" * oversize}}))
    await asyncio.wait_for(client.connection.wait_closed(), seconds(10))
    assert client.connection.close_code == 1009
    await client.close()
    other = await WsClient.open(url_of(server, endpoint))
    await answers(other, endpoint, "other")
    await other.close()
    assert "Traceback" not in log.since()


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory of process ``pid`` (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_an_8_mib_frame_of_empty_objects_costs_the_hub_little_memory(
    server: ServerProcess,
) -> None:
    """Three frames of 2.8 million empty objects took the hub's peak memory up by 400 MB
    and held its event loop for seconds; now each is refused before it is decoded."""
    assert server.proc is not None
    before = peak_rss_mib(server.proc.pid)
    client = await WsClient.open(server.ws_url, max_size=None)
    try:
        frame = empty_objects(EIGHT_MIB)
        for _ in range(3):
            await client.send_raw(frame)
        await client.wait_for("error", timeout=60, after=2)
        assert {m["code"] for m in client.messages} == {"limit_reached"}
        await answers(client, "hub", "after")
    finally:
        await client.close()
    grown = peak_rss_mib(server.proc.pid) - before
    assert grown < 100, f"the hub's peak memory grew by {grown:.0f} MiB"


def test_the_whole_run_left_no_traceback_in_the_server_log(server: ServerProcess) -> None:
    text = Path(server.log_path).read_text(errors="replace")
    assert "Traceback" not in text


@pytest.mark.parametrize("kind", ["data", "data_history"])
@pytest.mark.parametrize(
    ("field", "value"), [("name", ""), ("name", None), ("interval", 5), ("source", "x" * 300)]
)
async def test_a_request_with_an_unusable_series_field_still_gets_its_empty_reply(
    server: ServerProcess, kind: str, field: str, value: Any
) -> None:
    """The error, then the empty data_init / data_history the client waits for, the fields
    echoed when they are strings (clipped) and null otherwise."""
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(request(kind, **{field: value}))
        error = await client.wait_for("error")
        assert error["code"] in ("missing_field", "invalid_field"), error
        reply_type = "data_init" if kind == "data" else "data_history"
        reply = await client.wait_for(reply_type)
        assert reply["data"] == [] and reply["metadata"] is None
        echoed = value[:200] if isinstance(value, str) else None
        assert reply[field] == echoed
        assert reply["name" if field != "name" else "source"] in ("AAA", "counting")
    finally:
        await client.close()
