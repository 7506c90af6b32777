"""Delivery of alert events: Web Push (RFC 8291 encryption by ``pywebpush``, the RFC 8292
VAPID token signed by ``py_vapid``) and webhooks, both sent here over one ``aiohttp`` session.

Every request has a timeout, follows no redirect (a 3xx is a failed delivery, logged) and
reads at most :data:`MAX_BODY_BYTES` of the answer: the rest is never read, the connection
is closed. Each call retries with exponential backoff on 5xx, 429 and network errors (a
``Retry-After`` of at most ``max_retry_after`` seconds is honoured; a longer one is given
up at once), gives up at once on other 4xx, and reports 404/410 from a push service as
:attr:`Outcome.GONE` (the browser dropped the subscription; the caller stops pushing to
it); a push service's 406 with a ``Retry-After`` is retried as a 429 (Windows throttles
so). Every outcome is logged with the destination's origin only. Callers run these as
their own tasks (``backend.alerts.dispatch``): nothing here is awaited by streaming. A delivery
resumed after a restart goes on from where it was (:class:`Progress`: the attempts made,
the backoff they reached), and its caller hears of each failed attempt (to store it).
"""

from __future__ import annotations

import base64
import email.utils
import enum
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from py_vapid.jwt import sign as sign_jwt

from backend.alerts import dispatch
from backend.alerts.destinations import origin, public_problem
from backend.alerts.model import Subscription, check_subscription
from backend.alerts.vapid import VapidKeys
from backend.errors import ProtocolError

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

# The largest push body every push service takes: Mozilla's relays a push for Firefox for
# Android through FCM and refuses one over 3070 bytes (413, errno 104, "intended for a
# constrained device"), where RFC 8030 section 7.2 and the others take 4096.
MAX_PUSH_BODY = 3070
# The plaintext of one push: the body less the aes128gcm header (salt 16, record size 4,
# key id length 1, the 65-byte key) and the record's tag (16) and delimiter (1).
MAX_PUSH_PLAINTEXT = MAX_PUSH_BODY - 86 - 17

ATTEMPTS = 5
BACKOFF_SECONDS = 1.0  # doubled after each failed attempt
TIMEOUT_SECONDS = 10.0
MAX_RETRY_AFTER = 600.0  # a push service asking for a longer pause is not waited for
MAX_BODY_BYTES = 64 * 1024  # of an answer; more is never read
LOGGED_BODY_CHARS = 200
PUSH_TTL = 24 * 3600
# RFC 8030 section 5.3: an alert is time-critical; at the default ("normal") FCM holds a
# push for an Android phone in Doze for minutes (2 min 19 s against 1.3 s measured,
# horang-labs/tessera#318)
PUSH_URGENCY = "high"
VAPID_SECONDS = 12 * 3600  # lifetime of the signed VAPID token
CONTACT = "mailto:admin@localhost"
# Hosts no push service can reach: Apple's (Safari, iOS home-screen apps) refuses a VAPID
# token whose ``sub`` names one with 403 {"reason":"BadJwtToken"}, where others accept it.
_UNREACHABLE_SUFFIXES: tuple[str, ...] = (".localhost", ".local", ".internal", ".lan")
_UNREACHABLE_SUFFIXES += (".home.arpa", ".test", ".invalid", ".example")


def contact_problem(contact: str) -> str | None:
    """Why push services may refuse VAPID tokens with ``contact`` as their ``sub`` claim
    (``ALERT_CONTACT``), or None: a contact at a host that is not on the internet
    (``localhost``, a name without a dot, ``.local``, a private address). Apple's push
    service answers every push signed so with 403 ``BadJwtToken``."""
    scheme, _, rest = contact.strip().partition(":")
    if scheme.lower() == "mailto":
        host = rest.rpartition("@")[2].split("?")[0]
    else:
        host = urlsplit(contact.strip()).hostname or ""
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or "." not in host or host.endswith(_UNREACHABLE_SUFFIXES):
            return f"its host {host!r} is not a public name"
        return None
    return None if address.is_global else f"its host {host} is not a public address"


class Outcome(enum.Enum):
    SENT = "sent"
    GONE = "gone"  # a push service's 404/410: the subscription no longer exists
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt got: the HTTP status (0: no answer), the ``Retry-After`` asked for
    (seconds) and a short description for the log."""

    status: int
    retry_after: float | None = None
    detail: str = ""


@dataclass(slots=True)
class Progress:
    """Where one delivery stands: ``made`` attempts so far (the next is ``made + 1``, after
    a backoff doubled ``made`` times); ``retrying(made, pause)`` is told of each failed
    attempt that will be retried, and ``wanted()`` is asked before each retry (False: it
    was given up elsewhere, e.g. the store's bound took it)."""

    made: int = 0
    retrying: Callable[[int, float], None] | None = None
    wanted: Callable[[], bool] | None = None


class Delivery:
    """Sends pushes and webhook calls; ``public_only``: client-chosen URLs must be https to
    public addresses (``ALERT_PUSH_PUBLIC_ONLY``)."""

    def __init__(
        self,
        keys: VapidKeys,
        contact: str = CONTACT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF_SECONDS,
        public_only: bool = False,
        timeout: float = TIMEOUT_SECONDS,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        self.private_key = keys.private_key
        point = keys.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key = base64.urlsafe_b64encode(point).decode().rstrip("=")
        self.contact = contact
        self.attempts = attempts
        self.backoff = backoff
        self.public_only = public_only
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def _http(self, trusted: bool) -> aiohttp.ClientSession:
        """The session for the operator's URLs (``trusted``) or for client-chosen ones."""
        guarded = self.public_only and not trusted
        session = self._sessions.get(guarded)
        if session is None:
            # aiohttp and pywebpush (with requests) are imported with the first delivery:
            # a server start that delivers nothing does not pay their 0.25 s of CPU.
            import aiohttp

            from backend.alerts.resolver import PublicResolver

            connector = aiohttp.TCPConnector(resolver=PublicResolver() if guarded else None)
            session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
            self._sessions[guarded] = session
        return session

    async def push(
        self, subscription: Subscription, payload: dict[str, Any], progress: Progress | None = None
    ) -> Outcome:
        """Encrypt ``payload`` (JSON) for the subscription and post it, VAPID-signed."""
        what = f"push to {origin(subscription.endpoint)}"
        if self._refused(what, subscription.endpoint, trusted=False):
            return Outcome.FAILED
        try:  # checked when the alert was made; one stored before that may be unusable
            check_subscription(subscription.info())
        except ProtocolError as exc:
            logger.warning("%s: not sent, the subscription is unusable: %s", what, exc)
            return Outcome.FAILED
        plaintext = push_plaintext(payload)
        if plaintext is None:
            logger.warning("%s: not sent, the message does not fit one push record", what)
            return Outcome.FAILED
        from pywebpush import WebPusher  # (see _http)

        pusher = WebPusher(subscription.info())
        body = pusher.encode(plaintext, "aes128gcm")["body"]
        claims = {
            "aud": origin(subscription.endpoint),
            "sub": self.contact,
            "exp": int(time.time()) + VAPID_SECONDS,
        }
        headers = {
            "Authorization": self._vapid(claims),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(PUSH_TTL),
            "Urgency": PUSH_URGENCY,
        }
        session = self._http(trusted=False)
        return await self._deliver(
            what, lambda: _post(session, subscription.endpoint, body, headers), True, progress
        )

    async def webhook(
        self,
        url: str,
        body: dict[str, Any],
        trusted: bool = True,
        progress: Progress | None = None,
    ) -> Outcome:
        """POST ``body`` as JSON to ``url`` (``trusted``: the operator's ``ALERT_WEBHOOK_URL``,
        else a client's, under the public-only policy)."""
        what = f"webhook {origin(url)}"
        if self._refused(what, url, trusted):
            return Outcome.FAILED
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        session = self._http(trusted)
        return await self._deliver(
            what, lambda: _post(session, url, data, headers), False, progress
        )

    def _vapid(self, claims: dict[str, Any]) -> str:
        """RFC 8292's ``Authorization`` value: the ES256 token and our public key. Signed
        with ``py_vapid``'s JWT function, not its ``Vapid02.sign``, whose patterns refuse
        an ``aud`` with an IPv6 address (``http://[::1]:8443``) and a ``sub`` that is an
        https URL with a path, both valid (RFC 6454 origin; RFC 8292 section 2.1)."""
        return f"vapid t={sign_jwt(claims, self.private_key)},k={self.public_key}"

    def _refused(self, what: str, url: str, trusted: bool) -> bool:
        problem = None if trusted or not self.public_only else public_problem(url)
        if problem is not None:
            logger.warning("%s: refused, the URL %s (ALERT_PUSH_PUBLIC_ONLY)", what, problem)
        return problem is not None

    async def _deliver(
        self,
        what: str,
        attempt: Callable[[], Awaitable[Answer]],
        push: bool,
        progress: Progress | None = None,
    ) -> Outcome:
        import aiohttp  # (see _http)

        progress = progress or Progress()
        delay = self.backoff * 2**progress.made
        why = "no attempt left"
        for number in range(progress.made + 1, self.attempts + 1):
            if number > progress.made + 1 and progress.wanted is not None and not progress.wanted():
                return Outcome.FAILED  # given up by its owner, who said so
            try:
                answer = await attempt()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                answer = Answer(0, None, f"{type(exc).__name__}: {exc}")
            why = answer.detail or f"HTTP {answer.status}"
            status = answer.status
            if 200 <= status < 300:
                # at INFO when it took retries; the usual first try would flood the log
                level = logging.INFO if number > 1 else logging.DEBUG
                logger.log(level, "%s: delivered (attempt %d)", what, number)
                return Outcome.SENT
            if 300 <= status < 400:
                logger.warning("%s: %s, a redirect (not followed): not delivered", what, why)
                return Outcome.FAILED
            if push and status in (404, 410):
                logger.info("%s: %s, the subscription is gone", what, why)
                return Outcome.GONE
            # Windows' push service (Edge) answers a throttled push 406 with a Retry-After
            # where others answer 429 (microsoft/microsoft-ui-xaml#8091): retried as one
            throttled = status == 429 or (push and status == 406 and answer.retry_after is not None)
            if 400 <= status < 500 and not throttled:
                refused = push and status in (401, 403) and contact_problem(self.contact)
                if refused:  # the likely cause, named where the operator looks
                    why = f"{why}; ALERT_CONTACT {self.contact!r}: {refused}"
                logger.warning("%s: %s, not retried", what, why)
                return Outcome.FAILED
            if answer.retry_after is not None and answer.retry_after > self.max_retry_after:
                logger.warning(
                    "%s: %s, asked to retry after %.0f s (more than %.0f s): given up",
                    what,
                    why,
                    answer.retry_after,
                    self.max_retry_after,
                )
                return Outcome.FAILED
            if number < self.attempts:
                pause = max(delay, answer.retry_after or 0.0)
                logger.warning("%s: %s, retrying in %.1f s", what, why, pause)
                if progress.retrying is not None:
                    progress.retrying(number, pause)
                await dispatch.pause(pause)  # without its delivery slot
                delay *= 2
        logger.warning("%s: %s, gave up after %d attempts", what, why, self.attempts)
        return Outcome.FAILED


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str]
) -> Answer:
    """One POST: no redirect followed, at most :data:`MAX_BODY_BYTES` of the answer read."""
    async with session.post(url, data=data, headers=headers, allow_redirects=False) as response:
        status = response.status
        body = b"" if 200 <= status < 300 else await _read_bounded(response.content)
        detail = f"HTTP {status}"
        text = body[:LOGGED_BODY_CHARS].decode("utf-8", "replace").strip()
        if text:
            detail = f"{detail} ({text})"
        return Answer(status, retry_after(response.headers.get("Retry-After")), detail)


async def _read_bounded(stream: aiohttp.StreamReader, limit: int = MAX_BODY_BYTES) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await stream.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def push_plaintext(payload: dict[str, Any]) -> bytes | None:
    """``payload`` as compact UTF-8 JSON that fits one aes128gcm record of a push every
    service takes (RFC 8291 section 4: one record; :data:`MAX_PUSH_BODY`): at most
    :data:`MAX_PUSH_PLAINTEXT` bytes. A longer ``notification.title`` is cut (at a
    character, with an ellipsis); ``None`` when it still does not fit."""
    data = _compact(payload)
    if len(data) <= MAX_PUSH_PLAINTEXT:
        return data
    notification = payload.get("notification")
    title = notification.get("title") if isinstance(notification, dict) else None
    if not isinstance(title, str):
        return None

    def cut(length: int) -> bytes:
        assert isinstance(notification, dict)
        return _compact(
            {**payload, "notification": {**notification, "title": title[:length] + "…"}}
        )

    low, high = 0, len(title)  # the longest cut that fits: cut(low) fits, or nothing does
    while low < high:
        middle = (low + high + 1) // 2
        if len(cut(middle)) <= MAX_PUSH_PLAINTEXT:
            low = middle
        else:
            high = middle - 1
    data = cut(low)
    return data if len(data) <= MAX_PUSH_PLAINTEXT else None


def _compact(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
