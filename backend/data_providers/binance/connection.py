"""One Binance combined-stream connection: its socket(s), pacing, reconnects and renewal.

A :class:`Connection` carries up to ``max_streams`` kline streams on
``{BINANCE_STREAM_URL}stream`` (the ``websockets`` library: python-binance's socket managers
cannot send live SUBSCRIBE frames). It

* sends SUBSCRIBE/UNSUBSCRIBE frames with many streams each, paced by a rolling-window
  limiter (Binance closes a connection that receives more than 5 messages in a second);
* reconnects after a drop, or a silence that a ping of its own gets no pong for, with
  exponential backoff and jitter, and hands the streams it resumed to its owner (``resume``)
  before reading the first event, so that the provider can fetch the bars it missed;
* on ``serverShutdown`` and before Binance's 24-hour cut, opens the new socket and
  subscribes it before closing the old one;
* falls back to naming its streams in the URL (``stream?streams=a/b``) for a server that
  takes no live SUBSCRIBE (one that never answers it: two SUBSCRIBE frames in a row, the
  second sent again after the first went ``answer_timeout`` without an answer; one that
  closes the socket right after it on two sockets in a row; or one that refuses a
  ``/stream`` URL without streams, as simpler relays and emulators of Binance do): from
  then on a new stream reopens the socket with the new list, the new socket first, as a
  renewal does. A server that has answered a SUBSCRIBE of the connection once takes them:
  a slow answer later (a loaded server) is waited for, never a reason to switch.

It runs on the owner's asyncio loop and does not know about bars, REST or other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from backend.data_providers.binance import parse
from backend.data_providers.binance.pacing import RollingLimiter, StreamTuning, backoff_delay

__all__ = ["Connection", "Outcome", "Owner"]

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05  # a burst of subscriptions becomes one frame
REFUSAL_BACKOFF = 1.0  # a refused SUBSCRIBE is sent again after this, doubling ...
REFUSAL_BACKOFF_MAX = 60.0  # ... up to this
MAX_UNANSWERED = 256  # SUBSCRIBE frames kept waiting for their answer
URL_AFTER_TIMEOUTS = 2  # unanswered SUBSCRIBE frames in a row before the streams go in the URL
MAX_QUEUE = 1024
#: Handshake refusals that say nothing about the URL naming no stream (so are no reason to
#: name the streams in the URL): Binance.com's 451 for a country it does not serve (the US),
#: its firewall's 403, a rate limit's 429 or a ban's 418. Each stream's clients hear it once
#: per run of refusals.
_REFUSALS = {
    451: "Binance.com refuses connections from this location (HTTP 451); in the US,"
    " Binance.US serves the same streams: BINANCE_STREAM_URL=wss://stream.binance.us:9443"
    " (and BINANCE_API_URL=https://api.binance.us)",
    403: "the stream connection was blocked by Binance's firewall (HTTP 403)",
    429: "the stream connection was rate limited by Binance (HTTP 429)",
    418: "the stream connection was refused by Binance's IP ban (HTTP 418)",
}


class Owner(Protocol):
    """What a connection needs from the manager that owns it."""

    url: str
    tuning: StreamTuning
    ids: Iterator[int]
    connect_limiter: RollingLimiter

    def deliver(self, data: Mapping[str, Any]) -> None: ...
    def resume(self, names: list[str]) -> None: ...
    def refused(self, names: list[str], error: str) -> None: ...
    def state_changed(self) -> None: ...


class Outcome(enum.Enum):
    """Why a socket stopped being the one a connection reads."""

    DROPPED = "dropped"
    SILENT = "silent"
    SHUTDOWN = "serverShutdown"
    RENEW = "renewal"
    URL = "new streams in the URL"  # a server without live SUBSCRIBE (see the module doc)


class _Socket:
    """One WebSocket of a connection: what it was told, its pacing, why it ended."""

    def __init__(self, ws: ClientConnection, tuning: StreamTuning) -> None:
        self.ws = ws
        self.sent: set[str] = set()
        self.restart: set[str] = set()
        # id -> the streams of a SUBSCRIBE not answered yet (a refusal sends them again)
        self.subscribing: dict[int, list[str]] = {}
        self.subscribed_at = 0.0  # when the last SUBSCRIBE was sent
        self.sent_at: dict[int, float] = {}  # when each SUBSCRIBE of ``subscribing`` was sent
        self.limiter = RollingLimiter(tuning.messages, tuning.message_window)
        self.dirty = asyncio.Event()
        self.synced = asyncio.Event()
        self.ended: asyncio.Future[tuple[Outcome, str]] = asyncio.get_running_loop().create_future()
        self.opened = self.last_message = time.monotonic()
        self.renew_at = self.opened + tuning.renew_after
        self.got_data = False
        self.url_streams: frozenset[str] = frozenset()  # the streams named in its URL
        self.tasks: list[asyncio.Task[None]] = []

    def end(self, outcome: Outcome, detail: str) -> None:
        if not self.ended.done():
            self.ended.set_result((outcome, detail))


class Connection:
    """One combined stream: the streams it should carry and the socket(s) carrying them."""

    def __init__(self, manager: Owner, number: int) -> None:
        self.manager, self.number, self.tuning = manager, number, manager.tuning
        self.wanted: dict[str, None] = {}  # insertion-ordered set
        self.sockets: list[_Socket] = []  # two while a renewal hands over
        self.up = self.was_up = False
        self.failures = 0
        self.refusals = 0  # SUBSCRIBE frames refused in a row (the retry's backoff)
        self.in_url = False  # the server takes no SUBSCRIBE: streams go in the socket's URL
        self.closed_on_subscribe = 0  # sockets closed in a row with a SUBSCRIBE unanswered
        self.answered = False  # the server answered a SUBSCRIBE of this connection: it takes them
        self.timeouts = 0  # SUBSCRIBE frames in a row (each sent after the last one timed out)
        self.timed_out_at = 0.0  # when the last of them timed out
        self.told_refusal: set[str] = set()  # streams told of the current handshake refusals
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"binance-{number}")
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("binance stream #%d ended", self.number, exc_info=task.exception())

    def room(self) -> bool:
        return len(self.wanted) < self.tuning.max_streams

    def add(self, name: str) -> None:
        self.wanted[name] = None
        self._mark_dirty()

    def remove(self, name: str) -> None:
        self.wanted.pop(name, None)
        self._mark_dirty()

    def restart(self, name: str) -> None:
        for sock in self.sockets:
            if name in sock.sent:
                sock.restart.add(name)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        for sock in self.sockets:
            sock.synced.clear()
            sock.dirty.set()

    # ------------------------------------------------------------------ lifecycle

    async def _run(self) -> None:
        try:
            sock = await self._open(resume=False)
            while True:
                try:
                    sock = await self._cycle(sock)
                except Exception:  # a bug here must not end the stream: log, start afresh
                    logger.exception("binance stream #%d failed; reconnecting", self.number)
                    await self._close(sock)
                    sock = await self._open(resume=True)
        finally:
            for sock in list(self.sockets):
                await self._close(sock)
            self._set_up(False)
            logger.info("binance stream #%d closed", self.number)

    async def _cycle(self, sock: _Socket) -> _Socket:
        """Serve ``sock`` until it must be replaced; return its replacement."""
        outcome, detail = await self._watch(sock)
        if (
            outcome is Outcome.DROPPED
            and not self.in_url
            and not self.answered
            and self._unanswered(sock, 0.0)
        ):
            # Twice in a row, not once: a network drop while Binance's answer is on its way
            # would otherwise send every stream of this connection to the URL for good.
            self.closed_on_subscribe += 1
            if self.closed_on_subscribe >= 2:
                self._use_url(f"the server closed the socket after a SUBSCRIBE ({detail})")
        if outcome in (Outcome.RENEW, Outcome.SHUTDOWN, Outcome.URL):
            # The old socket goes on delivering until the new one carries every stream: only
            # what it did not carry (a new stream; all after serverShutdown, to be safe) may
            # have missed bars. A renewal misses none.
            carried = sock.url_streams if outcome is Outcome.URL else frozenset()
            new = await self._open_once(resume=outcome is not Outcome.RENEW, carried=carried)
            if new is not None:
                logger.info("binance stream #%d: %s; new socket opened", self.number, detail)
                await self._handover(sock, new)
                return new
            if outcome is Outcome.RENEW:
                sock.renew_at = time.monotonic() + self.tuning.backoff_max
                return sock
            if outcome is Outcome.URL:  # keep what it carries; the next change tries again
                return await self._keep(sock)
        self.failures = 0 if sock.got_data else self.failures + 1
        await self._close(sock)
        delay = backoff_delay(self.failures, self.tuning)
        logger.info(
            "binance stream #%d disconnected: %s; reconnecting in %.1f s",
            self.number,
            detail,
            delay,
        )
        self._set_up(False)
        await asyncio.sleep(delay)
        return await self._open(resume=True)

    async def _watch(self, sock: _Socket) -> tuple[Outcome, str]:
        while True:
            now = time.monotonic()
            if now >= sock.renew_at:
                return Outcome.RENEW, f"renewal after {now - sock.opened:.0f} s"
            quiet = now - sock.last_message
            if sock.sent and quiet >= self.tuning.silence:
                answered = await self._probe(sock)
                if sock.ended.done():
                    return sock.ended.result()
                if not answered:
                    return Outcome.SILENT, f"no message for {quiet:.0f} s and no pong"
                sock.last_message = time.monotonic()  # alive: its streams are just quiet
                continue
            timeout = min(sock.renew_at - now, self.tuning.silence - quiet)
            await asyncio.wait({sock.ended}, timeout=max(0.05, timeout))
            if sock.ended.done():
                return sock.ended.result()

    async def _probe(self, sock: _Socket) -> bool:
        """Whether ``sock`` answers a ping within ``ping_timeout`` (or until it ends).

        Binance sends a kline event only when its kline changed, so the streams of a quiet
        symbol (a 1h kline of a thinly traded pair) can say nothing for many minutes on a
        healthy socket. Silence alone is no reason to reconnect: that cost a reconnect and a
        REST gap fill of every stream of the connection every ``silence`` seconds, and
        ``/health`` flapped to ``reconnecting``. A socket that answers the ping is kept; one
        that does not (a half-open connection) is replaced. The ping counts as one of the
        connection's incoming messages at Binance, so it waits for the limiter too."""
        await sock.limiter.wait()
        sock.limiter.record()
        try:  # sending waits while the socket's buffer is full: a half-open one stays full
            async with asyncio.timeout(self.tuning.ping_timeout):
                ping = await sock.ws.ping()
        except (WebSocketException, TimeoutError):  # ConnectionClosed included
            return False
        pong = asyncio.ensure_future(ping)
        waiters: set[asyncio.Future[Any]] = {sock.ended, pong}
        await asyncio.wait(waiters, timeout=self.tuning.ping_timeout)
        if not pong.done():
            pong.cancel()  # websockets skips a done waiter when the pong comes after all
            return False
        return not pong.cancelled() and pong.exception() is None

    async def _handover(self, old: _Socket, new: _Socket) -> None:
        """Close ``old`` once ``new`` carries every stream (or after a timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.tuning.handover_timeout):
                await new.synced.wait()
        await self._close(old)

    async def _open(self, resume: bool) -> _Socket:
        """A connected socket, retrying with backoff until one opens."""
        while True:
            sock = await self._open_once(resume)
            if sock is not None:
                return sock
            self.failures += 1
            await asyncio.sleep(backoff_delay(self.failures, self.tuning))

    async def _keep(self, sock: _Socket) -> _Socket:
        """Go on reading ``sock`` after its replacement could not be opened; try again
        after a backoff."""
        loop = asyncio.get_running_loop()
        sock.ended = loop.create_future()
        if sock.tasks[0].done():  # it dropped meanwhile
            sock.end(Outcome.DROPPED, "connection closed")
        self.failures += 1
        loop.call_later(backoff_delay(self.failures, self.tuning), sock.dirty.set)
        return sock

    def _url(self) -> str:
        if not self.in_url or not self.wanted:
            return self.manager.url
        return self.manager.url + "?streams=" + "/".join(self.wanted)

    async def _open_once(
        self, resume: bool, carried: frozenset[str] = frozenset()
    ) -> _Socket | None:
        """A new socket, or ``None`` if it cannot open. With ``resume``, the streams it
        carries but ``carried`` does not (streams a socket still open delivers) are handed
        to the owner to fetch what they missed."""
        await self.manager.connect_limiter.wait()
        self.manager.connect_limiter.record()
        url = self._url()
        try:
            ws = await connect(
                url,
                open_timeout=self.tuning.open_timeout,
                ping_interval=None,  # Binance pings us; our pings would count as messages
                close_timeout=2,
                max_size=2**22,
                # Messages buffered before reading pauses (websockets' default is 16): a
                # socket carrying hundreds of streams gets bursts larger than that, and each
                # pause and resume of reading costs the loop two epoll_ctl calls.
                max_queue=MAX_QUEUE,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            refusal = _REFUSALS.get(status)
            logger.warning("binance stream #%d: cannot connect: %r%s", self.number, exc,
                           f"; {refusal}" if refusal else "")  # fmt: skip
            if refusal is not None:
                self._tell_refusal(refusal)
            elif not self.in_url and self.wanted and status < 500:
                self._use_url(f"a /stream URL without streams was refused ({exc})")
            return None
        except (OSError, TimeoutError, WebSocketException) as exc:
            logger.warning("binance stream #%d: cannot connect: %r", self.number, exc)
            return None
        sock = _Socket(ws, self.tuning)
        self.told_refusal.clear()
        if url != self.manager.url:
            sock.sent.update(self.wanted)
            sock.url_streams = frozenset(self.wanted)
        missed = [name for name in self.wanted if name not in carried]
        if resume and missed:
            self.manager.resume(missed)  # before the first event is read
        sock.tasks = [
            asyncio.create_task(self._read(sock)),
            asyncio.create_task(self._write(sock)),
        ]
        self.sockets.append(sock)
        sock.dirty.set()
        logger.info(
            "binance stream #%d connected to %s (%d streams%s)",
            self.number,
            self.manager.url,
            len(self.wanted),
            " in the URL" if url != self.manager.url else "",
        )
        self._set_up(True)
        return sock

    async def _close(self, sock: _Socket) -> None:
        if sock in self.sockets:
            self.sockets.remove(sock)
        for task in sock.tasks:
            task.cancel()
        await asyncio.gather(*sock.tasks, return_exceptions=True)
        with contextlib.suppress(OSError, WebSocketException, TimeoutError):
            async with asyncio.timeout(3):
                await sock.ws.close()

    def _set_up(self, up: bool) -> None:
        if self.up != up:
            self.up = up
            self.was_up = self.was_up or up
            self.manager.state_changed()

    # ------------------------------------------------------------------ per socket

    async def _read(self, sock: _Socket) -> None:
        try:
            async for raw in sock.ws:
                sock.last_message = time.monotonic()
                self._dispatch(sock, raw)
        except ConnectionClosed as exc:
            sock.end(Outcome.DROPPED, f"connection closed ({exc})")
        except Exception:  # the reader's top: log the bug and replace the socket
            logger.exception("binance stream #%d: reader failed", self.number)
            sock.end(Outcome.DROPPED, "reader failed")
        else:
            sock.end(Outcome.DROPPED, f"connection closed ({sock.ws.close_code})")

    def _dispatch(self, sock: _Socket, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("binance stream #%d: not JSON: %.200r", self.number, raw)
            return
        match parse.stream_message(message):
            case parse.StreamData(stream, data):
                sock.got_data = True
                if stream in self.wanted:
                    self.manager.deliver(data)
            case parse.ControlReply(id=reply_id, error=str() as error):
                logger.warning("binance stream #%d: control frame refused: %s", self.number, error)
                if isinstance(reply_id, int) and reply_id in sock.subscribing:
                    names = sock.subscribing.pop(reply_id)
                    self._answered(sock, reply_id)  # an answer: the server takes SUBSCRIBE
                    self._subscribe_refused(sock, names, error)
            case parse.ControlReply(id=answered):
                if isinstance(answered, int) and answered in sock.subscribing:
                    del sock.subscribing[answered]
                    self._answered(sock, answered)
                    self.refusals = 0
            case parse.ServerShutdown():
                sock.end(Outcome.SHUTDOWN, "serverShutdown received")
            case _:
                pass

    def _answered(self, sock: _Socket, request_id: int) -> None:
        sock.sent_at.pop(request_id, None)
        self.answered = True
        self.closed_on_subscribe = self.timeouts = 0

    def _subscribe_refused(self, sock: _Socket, names: list[str], error: str) -> None:
        """Binance refused a SUBSCRIBE: its clients are told, and it is sent again after a
        backoff (1 s, doubling to 60 s while refusals go on), for the streams still wanted."""
        self.refusals += 1
        self.manager.refused(names, error)
        delay = min(REFUSAL_BACKOFF_MAX, REFUSAL_BACKOFF * 2 ** (self.refusals - 1))
        asyncio.get_running_loop().call_later(delay, self._send_again, sock, names)

    def _send_again(self, sock: _Socket, names: list[str]) -> None:
        if sock.ended.done():
            return  # its replacement subscribes everything wanted anyway
        sock.sent.difference_update(names)
        self._mark_dirty()

    async def _write(self, sock: _Socket) -> None:
        try:
            await self._write_forever(sock)
        except ConnectionClosed as exc:
            sock.end(Outcome.DROPPED, f"connection closed while sending ({exc})")
        except Exception:  # the writer's top: log the bug and replace the socket
            logger.exception("binance stream #%d: writer failed", self.number)
            sock.end(Outcome.DROPPED, "writer failed")

    def _unanswered(self, sock: _Socket, older_than: float) -> bool:
        """A SUBSCRIBE of ``sock`` sent more than ``older_than`` s ago (and within the answer
        timeout, for a socket that ended) is still unanswered."""
        if not sock.subscribing:
            return False
        age = time.monotonic() - sock.subscribed_at
        return older_than <= age and (older_than > 0 or age < self.tuning.answer_timeout)

    def _check_answered(self, sock: _Socket, request_id: int) -> None:
        """SUBSCRIBE ``request_id`` was sent ``answer_timeout`` ago: if it is unanswered
        and no SUBSCRIBE of this connection ever was, send its streams again; a second
        frame in a row without an answer makes the connection name its streams in the URL.

        One slow answer is no proof: a loaded Binance can take longer than
        ``answer_timeout``, and the URL mode is kept for good (every new stream then
        reopens the socket). A server that answered once takes SUBSCRIBE: its slow answers
        are waited for (a dead socket is found by the ping of ``_watch``)."""
        sent = sock.sent_at.get(request_id)
        if sent is None or request_id not in sock.subscribing:
            return  # answered (or forgotten: see MAX_UNANSWERED)
        if sock.ended.done() or self.in_url:
            return
        timeout = self.tuning.answer_timeout
        if self.answered:
            logger.info(
                "binance stream #%d: SUBSCRIBE %d unanswered after %g s; the server answered"
                " before, so it is waited for",
                self.number,
                request_id,
                timeout,
            )
            return
        if sent < self.timed_out_at:
            return  # sent before the last timeout: its streams went again with that one's
        self.timeouts += 1
        self.timed_out_at = time.monotonic()
        if self.timeouts >= URL_AFTER_TIMEOUTS:
            self._use_url(f"no answer to {self.timeouts} SUBSCRIBE frames in a row")
            sock.end(Outcome.URL, "reopening with the streams in the URL")
            return
        logger.warning(
            "binance stream #%d: no answer to a SUBSCRIBE within %g s; sending it again",
            self.number,
            timeout,
        )
        unanswered = {name for names in sock.subscribing.values() for name in names}
        sock.sent.difference_update(unanswered)  # the id stays: a late answer still counts
        self._mark_dirty()

    def _tell_refusal(self, refusal: str) -> None:
        """The server refused the handshake (:data:`_REFUSALS`): the clients of the streams
        not told yet in this run of refusals hear why; the connection keeps retrying."""
        new = [name for name in self.wanted if name not in self.told_refusal]
        self.told_refusal.update(new)
        if new:
            self.manager.refused(new, refusal)

    def _use_url(self, why: str) -> None:
        self.in_url = True
        logger.warning(
            "binance stream #%d: %s: this server takes no live SUBSCRIBE; the streams go in"
            " the URL from now on, and a new stream reopens the socket",
            self.number,
            why,
        )

    async def _write_forever(self, sock: _Socket) -> None:
        while True:
            await sock.dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            sock.dirty.clear()
            if self.in_url:
                if sock.restart or not sock.sent.issuperset(self.wanted):
                    sock.end(Outcome.URL, "the streams changed")
                else:
                    sock.synced.set()
                continue
            while self._pending(sock):
                await sock.limiter.wait()
                frame = self._take_frame(sock)
                if frame is None:
                    break
                sock.limiter.record()
                method, params = frame
                request_id = next(self.manager.ids)
                message = {"method": method, "params": params, "id": request_id}
                if method == "SUBSCRIBE":
                    if len(sock.subscribing) >= MAX_UNANSWERED:
                        sock.subscribing.clear()  # never answered: forget, do not grow
                        sock.sent_at.clear()
                    sock.subscribing[request_id] = params
                    sock.subscribed_at = sock.sent_at[request_id] = time.monotonic()
                    asyncio.get_running_loop().call_later(
                        self.tuning.answer_timeout, self._check_answered, sock, request_id
                    )
                await sock.ws.send(json.dumps(message, separators=(",", ":")))
                logger.debug("binance stream #%d: %s %d streams", self.number, method, len(params))
            if not sock.dirty.is_set():
                sock.synced.set()

    def _pending(self, sock: _Socket) -> bool:
        return bool(sock.restart) or sock.sent != self.wanted.keys()

    def _take_frame(self, sock: _Socket) -> tuple[str, list[str]] | None:
        """The next frame to send on ``sock``, applied to its ``sent`` set."""
        drop = [n for n in sock.sent if n not in self.wanted or n in sock.restart]
        if drop:
            batch = drop[: self.tuning.batch]
            sock.sent.difference_update(batch)
            sock.restart.difference_update(batch)
            return "UNSUBSCRIBE", batch
        sock.restart.clear()
        add = [n for n in self.wanted if n not in sock.sent][: self.tuning.batch]
        if add:
            sock.sent.update(add)
            return "SUBSCRIBE", add
        return None
