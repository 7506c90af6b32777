"""Secrets never reach a log, at any level, in any process.

End to end: ``populate.py`` and ``server.py`` at ``LOG_LEVEL=DEBUG`` with dummy keys for
every provider that takes one, against the fake Binance and the fake Polygon; after a
subscription to each, no key appears in anything the processes printed. Unit tests cover
the filter itself (:class:`backend.logs.RedactSecrets`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from backend import logs
from backend.settings import load_settings
from tests.fakes.binance import FakeBinance
from tests.fakes.polygon import FakePolygon
from tests.harness import ServerProcess, WsClient, base_env, populate, same_key, seconds

MINUTE_MS = 60_000
SECRETS = {
    "BINANCE_API_KEY": "binance-key-5c1d9e7a",
    "BINANCE_API_SECRET": "binance-secret-0b4f2a68",
    "POLYGON_API_KEY": "polygon-key-93e6d1f4",
}


# ---------------------------------------------------------------- the filter


def capture(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactSecrets(secrets))
    logger = logging.getLogger(f"test.redact.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_a_secret_is_masked_in_the_message_its_arguments_and_the_traceback() -> None:
    logger, stream = capture(["s3cr3t-value"])
    logger.debug("sent %s", {"action": "auth", "params": "s3cr3t-value"})
    logger.info("key=s3cr3t-value in the message itself")
    try:
        raise ValueError("rejected s3cr3t-value")
    except ValueError:
        logger.exception("auth failed for %r", "s3cr3t-value")
    text = stream.getvalue()
    assert "s3cr3t-value" not in text
    assert "sent {'action': 'auth', 'params': '***'}" in text
    assert "key=*** in the message" in text and "auth failed for '***'" in text
    assert "ValueError: rejected ***" in text


def test_a_credential_in_a_query_string_is_masked_even_when_it_is_not_configured() -> None:
    """uvicorn's access log shows the query: a refused token may be a near miss of a real
    one, so every ``token=`` / ``apiKey=`` value is masked, valid or not."""
    logger, stream = capture([])
    logger.info('%s - "%s %s HTTP/1.1" %d', "127.0.0.1:5", "GET", "/websocket/?token=abc.def", 403)
    logger.info("GET /v2/aggs?limit=5&apiKey=POLY-123#x and /udf/history?symbol=A&to=1")
    text = stream.getvalue()
    assert "abc.def" not in text and "POLY-123" not in text
    assert "/websocket/?token=*** HTTP/1.1" in text and "&apiKey=***#x" in text
    assert "?symbol=A&to=1" in text


def test_a_client_text_with_line_breaks_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.EscapeControls())
    logger = logging.getLogger(f"test.escape.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    forged = "X\n2026-01-01 00:00:00,000 ERROR   [hub] backend.app: forged\r\x1b[2K\u2028"
    logger.warning("csv: unknown symbol %r", forged)
    logger.warning("unknown symbol " + forged)  # in the message itself, too
    try:
        raise ValueError("two\nlines")
    except ValueError:
        logger.exception("failed: %s", "tab\tkept")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "csv: unknown symbol " + repr(forged)  # %r escapes already
    assert lines[1].startswith("unknown symbol X\\n2026-01-01") and "\\x1b[2K\\u2028" in lines[1]
    assert lines[2] == "failed: tab\tkept"
    assert lines[-2:] == ["ValueError: two", "lines"]  # the traceback as it is


def test_short_values_are_not_treated_as_secrets() -> None:
    logger, stream = capture(["k", "ab"])
    logger.info("keep a b k ab")
    assert stream.getvalue() == "keep a b k ab\n"


def test_every_secret_field_of_the_settings_is_collected() -> None:
    settings = load_settings(
        PROVIDERS="csv", BINANCE_API_KEY="aaaa1111", POLYGON_API_KEY="bbbb2222,cccc3333"
    )
    found = set(logs.secrets_of(settings))
    assert {"aaaa1111", "bbbb2222", "cccc3333", "bbbb2222,cccc3333"} <= found
    assert isinstance(settings.BINANCE_API_KEY, SecretStr)  # unwrapped by secrets_of


def test_configure_masks_secrets_for_every_logger_and_quiets_frame_dumps(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-from-the-environment")
    root = logging.getLogger()
    uvicorn_error = logging.getLogger("uvicorn.error")  # another test may have set its level
    saved = (root.handlers[:], root.level, logging.getLogger("websockets").level)
    saved_uvicorn = uvicorn_error.level
    try:
        logs.configure("DEBUG", "test", ["configured-secret"])
        uvicorn_error.setLevel(logging.NOTSET)  # it follows the root, as in the server
        logging.getLogger("websockets.client").debug("> TEXT configured-secret")
        # uvicorn hands the websockets protocol its own logger: frames and upgrade headers
        logging.getLogger("uvicorn.error").debug("< %s", "TEXT 'my chat prompt' [15 bytes]")
        logging.getLogger("uvicorn.error").debug("< %s: %s", "Authorization", "Bearer eyJ.x.y")
        logging.getLogger("uvicorn.error").debug("= connection is %s", "OPEN")
        logging.getLogger("backend.x").debug("a configured-secret and tok-from-the-environment")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("websockets").setLevel(saved[2])
        uvicorn_error.setLevel(saved_uvicorn)
    err = capsys.readouterr().err
    assert "> TEXT" not in err  # websockets' frame dump stays below its INFO floor
    assert "my chat prompt" not in err and "eyJ.x.y" not in err
    assert "connection is OPEN" in err  # what carries no payload stays
    assert "a *** and ***" in err
    assert "configured-secret" not in err and "tok-from-the-environment" not in err


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def binance() -> Iterator[FakeBinance]:
    frozen = (int(time.time()) // 60 - 6) * MINUTE_MS + 20_000
    with FakeBinance(now_ms=frozen, push_interval=0.2) as exchange:
        yield exchange


@pytest.fixture(scope="module")
def polygon() -> Iterator[FakePolygon]:
    now = datetime.now(UTC).replace(microsecond=0)
    with FakePolygon(api_keys=(SECRETS["POLYGON_API_KEY"],), now=now, option_count=0) as fake:
        yield fake


@pytest.fixture(scope="module")
def env(
    binance: FakeBinance, polygon: FakePolygon, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return base_env(
        tmp_path_factory.mktemp("secrets"),
        PROVIDERS="binance,polygon",
        LOG_LEVEL="DEBUG",
        BINANCE_API_URL=binance.api_url,
        BINANCE_STREAM_URL=binance.stream_url,
        POLYGON_API_URL=polygon.base_url,
        POLYGON_WS_URL=f"ws://{polygon.ws_feed}",
        POLYGON_MARKETS="crypto",
        **SECRETS,
    )


async def test_no_key_appears_in_any_output_at_debug_level(
    env: dict[str, str], polygon: FakePolygon, binance: FakeBinance
) -> None:
    result = populate(env)
    assert result.returncode == 0, result.stderr
    outputs = [result.stdout, result.stderr]
    log = Path(env["DB"]).parent / "server.log"
    with ServerProcess(env, log) as server:
        client = await WsClient.open(server.ws_url)
        for source, name in (("binance", "BTCUSDT"), ("polygon", "X:BTCUSD")):
            await client.send(
                {"type": "data", "source": source, "name": name, "interval": "1m", "count": 5}
            )
            reply = await client.wait_for("data_init", same_key(name, "1m"), timeout=30)
            assert reply["data"], (source, reply)
        # The frozen clock's one kline may be in the data_init: a new one follows this.
        binance.advance(0.001)
        await client.wait_for("data_update", same_key("BTCUSDT", "1m"), timeout=30)
        deadline = time.monotonic() + seconds(15)
        while not polygon.auth_attempts:  # the provider has sent its key upstream
            assert time.monotonic() < deadline, "the polygon stream never authenticated"
            await asyncio.sleep(0.05)
        await client.close()
        assert server.proc is not None and server.proc.stdout is not None
        server.proc.send_signal(signal.SIGTERM)
        outputs.append(server.proc.stdout.read())  # the rest of stdout, to the end
    outputs.append(log.read_text())
    text = "\n".join(outputs)
    assert " DEBUG " in text  # the processes did log at DEBUG
    for name, value in SECRETS.items():
        assert value not in text, f"{name} appears in the output"


def test_a_password_in_a_url_setting_or_variable_is_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "http://bob:PASSWORD-in-url-77@127.0.0.1:41721/v1"
    settings = load_settings(PROVIDERS="csv", LLM_BASE_URL=url)
    monkeypatch.setenv("SOME_PROXY", "http://carol:p%40ss-word-9@proxy:3128")
    logger, stream = capture([*logs.secrets_of(settings), *logs.environment_secrets()])
    logger.info('HTTP Request: POST %s/chat/completions "HTTP/1.1 200 OK"', url)
    logger.info("via http://carol:p@ss-word-9@proxy:3128 and http://user@host/")
    text = stream.getvalue()
    assert "PASSWORD-in-url-77" not in text and "p@ss-word-9" not in text, text
    assert "http://***@127.0.0.1:41721/v1/chat/completions" in text
    assert "http://user@host/" in text  # a user name alone is kept
