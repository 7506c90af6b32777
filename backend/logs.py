"""Logging setup, once per process (the hub, every provider process, ``populate.py``).

:func:`configure` installs one stderr handler on the root logger with these filters:

- :class:`RedactSecrets` replaces every configured secret value (the settings' ``SecretStr``
  fields, environment variables named like keys, secrets, tokens and passwords, and the
  userinfo of a URL in any setting or variable: ``http://bob:pw@host``), and the value of
  a credential in a URL's query (``?token=``, ``&apiKey=``, valid or not), with ``***`` in
  the message, its arguments and its traceback, at every level;
- :class:`RateLimitRepeats` lets a traceback from one place through at most once per
  interval, a warning or error from one place at most ``WARNING_BURST`` times, and a line
  per connection (uvicorn's upgrade lines, the hub's "connected"/"disconnected") at most
  ``CONNECTION_BURST`` times, and counts the repeats it held back, so a client that
  triggers a bug in a loop, an upstream that sends garbage a thousand times a second, or
  a flood of connections (refused or not) cannot flood the log;
- :class:`EscapeControls` escapes control characters and line breaks in the message, so a
  client's text quoted in a record (a symbol name with a newline, say) cannot forge a line;
- :class:`ClientFaults` turns the records in which a library blames the client (uvicorn
  logs a traceback for invalid UTF-8 in a text frame) into one INFO line;
- :class:`NoSocketPayloads` drops the DEBUG records in which the ``websockets`` protocol,
  logging through ``uvicorn.error``, dumps every frame (chat prompts and answers) and the
  upgrade request's headers (an ``Authorization: Bearer`` token).

It also keeps third-party loggers that dump whole frames or requests (``websockets`` logs
every frame it sends at DEBUG, the Polygon auth frame among them) at INFO or above.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

from backend.errors import ConfigError

MASK = "***"
# Secrets shorter than this are not redacted: replacing every "1" or "ab" would garble logs.
MIN_SECRET_CHARS = 4
# Environment variables whose values are secrets, by the end of their name.
SECRET_ENV_SUFFIXES = ("_KEY", "_KEYS", "_SECRET", "_TOKEN", "_PASSWORD")
# The userinfo of a URL: after "scheme://", before an "@" that comes before the host's end.
URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@\s]*)@")
# A credential in a URL's query (``/websocket/?token=...``, as uvicorn's access log shows it).
QUERY_CREDENTIAL = re.compile(
    r"([?&](?:token|access_token|api_key|apikey|apiKey|key)=)[^&\s\"'#]+", re.IGNORECASE
)
# Loggers that log frame or request payloads at DEBUG.
NOISY_LOGGERS = ("websockets", "websocket", "urllib3", "httpcore", "httpx", "hpack")
TRACEBACK_INTERVAL = 60.0
WARNING_BURST = 10  # warnings and errors without a traceback from one place per interval
# INFO lines written once per connection (or per scan), by (logger, message template): at most
# CONNECTION_BURST from one place per interval (2,000 refused upgrades a second wrote 4,000
# lines a second).
CONNECTION_BURST = 300
CONNECTION_LINES = frozenset(
    {
        ("uvicorn.error", '%s - "WebSocket %s" [accepted]'),
        ("uvicorn.error", '%s - "WebSocket %s" 403'),
        ("uvicorn.error", '%s - "WebSocket %s" %d'),
        ("uvicorn.error", "connection open"),
        ("uvicorn.error", "connection closed"),
        ("backend.hub.hub", "client %d connected from %s (%d clients)"),
        ("backend.hub.hub", "client %d disconnected (%d clients)"),
        # one a scan, also a stopped one: a scan / scan_stop churn wrote 60 lines a second
        ("backend.hub.scanning", "client %d: scan %r: %d of %d matched (%d skipped%s)"),
    }
)
# The logger uvicorn gives the websockets protocol, and the templates of its payload dumps.
UVICORN_ERROR = "uvicorn.error"
PAYLOAD_DUMPS = ("< ", "> ")
# Records of libraries that log a client's fault with a traceback: (logger, message).
CLIENT_FAULTS = frozenset({("uvicorn.error", "Invalid UTF-8 sequence received from client.")})


def configure(level: str, process_name: str = "hub", secrets: Iterable[str] = ()) -> None:
    """Log to stderr with time, level, process and logger name; redact ``secrets``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s [{process_name}] %(name)s: %(message)s")
    )
    handler.addFilter(NoSocketPayloads())
    handler.addFilter(StartupRefusals())
    handler.addFilter(ClientFaults())
    handler.addFilter(RateLimitRepeats())
    handler.addFilter(RedactSecrets([*secrets, *environment_secrets()]))
    handler.addFilter(EscapeControls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet = max(logging.INFO, root.level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def secrets_of(settings: Any) -> list[str]:
    """The values of every ``SecretStr`` field of a settings object (comma lists split),
    and the userinfo of every URL in its other text fields (``LLM_BASE_URL``)."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            values.extend(_parts(value.get_secret_value()))
        elif isinstance(value, str):
            values.extend(url_secrets(value))
    return values


def environment_secrets() -> list[str]:
    """Values of environment variables named like secrets (``*_KEY``, ``*_TOKEN``, ...),
    and the userinfo of a URL in any environment variable."""
    values: list[str] = []
    for name, value in os.environ.items():
        if name.upper().endswith(SECRET_ENV_SUFFIXES):
            values.extend(_parts(value))
        values.extend(url_secrets(value))
    return values


def url_secrets(text: str) -> list[str]:
    """The password and the whole userinfo (``user:password``) of each URL in ``text``
    (``http://bob:pw@host/``, a comma list of them too); a user alone is no secret."""
    found: list[str] = []
    for match in URL_USERINFO.finditer(text):
        userinfo = match.group(1)
        password = userinfo.partition(":")[2]
        if password:
            found.extend([userinfo, password, urllib.parse.unquote(password)])
    return [value for value in found if len(value) >= MIN_SECRET_CHARS]


def _parts(value: str) -> list[str]:
    parts = [value.strip(), *(part.strip() for part in value.split(","))]
    return [part for part in parts if len(part) >= MIN_SECRET_CHARS]


class RedactSecrets(logging.Filter):
    """Replaces secret values in a record's message, arguments, traceback and stack."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True
        )
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-arguments: the handler reports those itself
            record.msg = self.redact(str(record.msg))
        else:
            redacted = self.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "=" in text:  # a credential in a query string, valid or not (a near miss is one)
            text = QUERY_CREDENTIAL.sub(r"\1" + MASK, text)
        return text


# C0 and C1 controls but the tab, DEL, and Unicode's line and paragraph separators
_ESCAPES = {
    code: repr(chr(code))[1:-1]
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
    if code != 0x09
}


class EscapeControls(logging.Filter):
    """One record, one line: the control characters of its message are escaped as Python
    does (``\\n``, ``\\x1b``, ...). Its traceback is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-arguments: the handler reports those itself
            return True
        escaped = message.translate(_ESCAPES)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


class RateLimitRepeats(logging.Filter):
    """Per place (logger, file, line, message template, exception type) and ``interval``
    seconds: at most one record with a traceback, at most ``burst`` warnings or errors
    without one, and at most :data:`CONNECTION_BURST` of a line written per connection
    (:data:`CONNECTION_LINES`); the first that passes in a later interval says how many
    were held back. Other records below WARNING always pass."""

    def __init__(self, interval: float = TRACEBACK_INTERVAL, burst: int = WARNING_BURST) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        # place -> (start of its interval, records passed in it, records held back in it)
        self._places: dict[tuple[Any, ...], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        per_connection = (record.name, record.msg) in CONNECTION_LINES
        if not record.exc_info and record.levelno < logging.WARNING and not per_connection:
            return True
        exc_type = record.exc_info[0] if record.exc_info else None
        place = (record.name, record.pathname, record.lineno, str(record.msg), exc_type)
        limit = CONNECTION_BURST if per_connection else self.burst
        allowed = 1 if record.exc_info else limit
        now = time.monotonic()
        start, passed, held = self._places.get(place, (-math.inf, 0, 0))
        note = ""
        if now - start >= self.interval:
            if held:
                note = f" ({held} more like this in the last {now - start:.0f} s were not logged)"
            if len(self._places) > 1000:
                self._places.clear()
            start, passed, held = now, 0, 0
        if passed >= allowed:
            self._places[place] = (start, passed, held + 1)
            return False
        self._places[place] = (start, passed + 1, held)
        if note:
            record.msg = str(record.msg) + note.replace("%", "%%")
        return True


class NoSocketPayloads(logging.Filter):
    """Drop ``websockets``' DEBUG dumps of frames and headers (``< %s``, ``> %s: %s``) that
    uvicorn routes to ``uvicorn.error``, whose other records (and its own DEBUG ones) stay;
    the ``websockets`` loggers themselves are kept at INFO (``NOISY_LOGGERS``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.DEBUG
            and record.name == UVICORN_ERROR
            and isinstance(record.msg, str)
            and record.msg.startswith(PAYLOAD_DUMPS)
        )


class ClientFaults(logging.Filter):
    """A library's record of a client's fault (``CLIENT_FAULTS``): INFO, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.name, record.msg) in CLIENT_FAULTS:
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class StartupRefusals(logging.Filter):
    """The app's startup refused with a ``ConfigError`` (a damaged ``DB``): Starlette hands
    uvicorn the traceback's text, logged as one ERROR; the user gets its last line only, the
    message naming the setting and what to do (the code that refused is known: no stack)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != UVICORN_ERROR or not isinstance(record.msg, str):
            return True
        if not record.msg.startswith("Traceback"):
            return True
        last = record.msg.rstrip().rpartition("\n")[2]
        prefix = f"{ConfigError.__module__}.{ConfigError.__qualname__}: "
        if last.startswith(prefix):
            record.msg, record.args = f"candlewire: {last[len(prefix) :]}", None
        return True
