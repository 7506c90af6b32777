"""AI chat at the hub: ``prompt`` / ``prompt_reply`` streamed back as ``prompt_response``.

Each turn runs as a reply job in the client's chat lane, so it never holds up the socket's
other requests (its charts, histories, searches go on) and turns of one client come in
order. Every non-empty delta is one ``prompt_response`` chunk (spec 5.2); the turn ends with
``{"type": "prompt_response", "response": "", "done": true}`` (an extension; the stock
client appends the empty text). Errors are an ``error`` message plus the text as a chunk,
which is what the stock window shows. Without ``LLM_MODEL`` the answer says so at once.

A turn is checked before anything of it is kept: its fields, then whether chat is on, the
conversation exists (``prompt_reply``) and the caller's hourly budget allows it; a refused
turn costs no memory. A whole turn has one deadline (``LLM_TIMEOUT_SECONDS``), so an
endpoint that keeps its stream open without an answer ends in an error too, and the
socket's next turn starts at the latest then. Conversations belong to their caller
(:meth:`Chatting.caller`): another socket cannot continue or read one by its id.

Owns the conversations of one hub and its model client. Not: the upstream call
(``backend.chat.llm``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limits import RateLimitItemPerHour
from limits.strategies import MovingWindowRateLimiter

from backend.chat.conversations import Conversations, Message
from backend.chat.llm import ChatError, Llm, configured
from backend.errors import ProtocolError
from backend.hub.clients import Client
from backend.ratelimits import PrunedMemoryStorage
from backend.wire import protocol

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

LANE = ("chat",)
MAX_PROMPT = 20_000
MAX_DESCRIPTION = 20_000
MAX_ID = 100
# Turns one socket may have pending: the one answering and one waiting. A queued turn keeps
# its request, chart image included (up to MAX_FRAME_BYTES), until it runs: 8 queued 7 MiB
# prompts on each of 10 sockets pinned 900 MiB while a slow endpoint answered the first.
MAX_PENDING_TURNS = 2
# Bytes of the requests (prompt, description, chart image) of every turn pending on the hub,
# answering or waiting, over all sockets. MAX_PENDING_TURNS bounds one socket only: 50
# sockets from one address, each with two 7.5 MB prompts for a slow endpoint, took the
# hub to 1.8 GB (and stalled its event loop for 8 s); past this budget a turn is refused
# with ``limit_reached`` at once, keeping nothing.
MAX_PENDING_CHAT_BYTES = 64 * 1024 * 1024
NOT_CONFIGURED = (
    "The AI chat is not configured on this server (set LLM_MODEL, and LLM_API_KEY or LLM_BASE_URL)."
)
INTERNAL = "the chat failed on the server (logged there); try again"


@dataclass(frozen=True, slots=True)
class Turn:
    """A checked ``prompt`` (with ``description`` and ``image``) or ``prompt_reply``."""

    reply: bool
    conversation: str
    prompt: str
    description: str = ""
    image: str | None = None


def parse_turn(raw: dict[str, Any]) -> Turn:
    """The turn a request asks for; ``ProtocolError`` names a bad field. Keeps nothing."""
    key = raw.get("conversation_id")
    prompt = raw.get("prompt")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ID:
        raise ProtocolError("invalid_field", "'conversation_id' must be a short string")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise ProtocolError("invalid_field", f"'prompt' must be 1 to {MAX_PROMPT} characters")
    if raw.get("type") == "prompt_reply":
        if not prompt:
            raise ProtocolError("invalid_field", f"'prompt' must be 1 to {MAX_PROMPT} characters")
        return Turn(True, key, prompt)
    description = raw.get("description") or ""
    image = raw.get("img")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ProtocolError("invalid_field", "'description' must be a string")
    if image is not None and not (isinstance(image, str) and image.startswith("data:image/")):
        raise ProtocolError("invalid_field", "'img' must be a data:image/... URL")
    if not prompt and not image:
        # Tradiny's Submit on an empty box asks about the chart: the image is the question
        raise ProtocolError("invalid_field", "'prompt' must not be empty without a chart 'img'")
    return Turn(False, key, prompt, description, image or None)


def turn_size(raw: dict[str, Any]) -> int:
    """About the bytes a pending turn holds: its text fields (the chart image above all)."""
    return sum(len(value) for value in raw.values() if isinstance(value, str))


class Chatting:
    """The chat of one hub: conversations and the model client (None: not configured)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.conversations = Conversations()
        # With AUTH on (conversations are the client's): the socket each chatted through,
        # each client's such sockets, and when the last of them closed (oldest first).
        self._callers: dict[int, str] = {}
        self._sockets: dict[str, set[int]] = {}
        self._departed: dict[str, float] = {}
        self._pending: dict[int, int] = {}  # socket -> its turns queued or running
        self._pending_bytes: dict[int, int] = {}  # socket -> the size of those turns
        s = hub.settings
        self.budgets = PrunedMemoryStorage()  # per caller: its turns of the last hour
        self._turns = MovingWindowRateLimiter(self.budgets)
        self._per_hour = RateLimitItemPerHour(s.MAX_LLM_REQUESTS_PER_HOUR)
        key = s.LLM_API_KEY.get_secret_value()
        self.deadline = s.LLM_TIMEOUT_SECONDS
        self.llm = (
            Llm(s.LLM_BASE_URL, key, s.LLM_MODEL, s.LLM_TIMEOUT_SECONDS)
            if configured(s.LLM_BASE_URL, key, s.LLM_MODEL)
            else None
        )

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()

    async def take(self, client: Client, raw: dict[str, Any]) -> None:
        """Queue one turn in the client's chat lane (the socket reads on meanwhile); with
        :data:`MAX_PENDING_TURNS` pending already, answer ``limit_reached`` at once."""
        pending = self._pending.get(client.id, 0)
        if pending >= MAX_PENDING_TURNS:  # refused either way; over the hour's budget first
            if not self._turns.test(self._per_hour, "chat", self._budget(client)):
                self._rate_limited(client, raw)
            else:
                why = f"wait for the answer: at most {MAX_PENDING_TURNS} chat turns at a time"
                self._fail(client, raw, "limit_reached", why)
            return
        size = turn_size(raw)
        if sum(self._pending_bytes.values()) + size > MAX_PENDING_CHAT_BYTES:
            why = "the server is answering too many chat turns now; try again in a minute"
            self._fail(client, raw, "limit_reached", why)
            return
        self._pending[client.id] = pending + 1
        self._pending_bytes[client.id] = self._pending_bytes.get(client.id, 0) + size
        await client.replies.submit(LANE, lambda: self._pending_turn(client, raw, size), raw)

    async def _pending_turn(self, client: Client, raw: dict[str, Any], size: int) -> None:
        try:
            await self._turn(client, raw)
        finally:
            left = self._pending.pop(client.id, 1) - 1
            if left > 0:
                self._pending[client.id] = left
            held = self._pending_bytes.pop(client.id, size) - size
            if held > 0 and left > 0:
                self._pending_bytes[client.id] = held

    def caller(self, client: Client) -> str:
        """Whose conversations a turn continues: with ``AUTH`` on, the API key's or token's
        client (over all its sockets); without, this socket (anybody may share its
        address, a reverse proxy's above all, and a conversation lives in one chat window)."""
        if self.hub.credential_client is not None:
            return f"client {self.hub.credential_client()}"
        return f"socket {client.id}"

    def drop_client(self, client_id: int) -> None:
        """A socket closed: its conversations go. With ``AUTH`` on they are the client's:
        when this was its last socket that chatted, they go after
        ``LLM_CONVERSATION_GRACE_SECONDS`` unless it chats again (:meth:`forget_departed`)."""
        self.conversations.forget(f"socket {client_id}")
        self._pending.pop(client_id, None)
        self._pending_bytes.pop(client_id, None)
        caller = self._callers.pop(client_id, None)
        sockets = self._sockets.get(caller) if caller is not None else None
        if caller is None or sockets is None:
            return
        sockets.discard(client_id)
        if not sockets:
            del self._sockets[caller]
            self._departed[caller] = time.monotonic()

    def forget_departed(self) -> None:
        """Forget the conversations of the clients whose last socket that chatted closed
        ``LLM_CONVERSATION_GRACE_SECONDS`` ago (a hub upkeep step). Without it a server
        with ``AUTH`` on kept every departed client's conversations, chart images included,
        until the store's bounds (1000, 256 MiB) pushed them out."""
        cutoff = time.monotonic() - self.hub.settings.LLM_CONVERSATION_GRACE_SECONDS
        callers = conversations = 0
        while self._departed:
            caller, left = next(iter(self._departed.items()))
            if left > cutoff:
                break
            del self._departed[caller]
            callers += 1
            conversations += self.conversations.count(caller)
            self.conversations.forget(caller)
        if conversations:
            logger.info(
                "chat: forgot %d conversations of %d clients gone for %g s",
                conversations,
                callers,
                self.hub.settings.LLM_CONVERSATION_GRACE_SECONDS,
            )

    def _present(self, client: Client, caller: str) -> None:
        """With ``AUTH`` on: ``caller`` keeps a conversation through this socket; its
        conversations stay while it has such a socket (and the grace after the last)."""
        if self.hub.credential_client is None or client.id not in self.hub.clients:
            return
        self._departed.pop(caller, None)
        self._callers[client.id] = caller
        self._sockets.setdefault(caller, set()).add(client.id)

    def _budget(self, client: Client) -> str:
        """Whose ``MAX_LLM_REQUESTS_PER_HOUR`` a turn spends: the key or token's client
        with ``AUTH`` on, else the client address (Tradiny's rule)."""
        if self.hub.credential_client is not None:
            return f"client {self.hub.credential_client()}"
        return client.peer.rsplit(":", 1)[0]

    async def _turn(self, client: Client, raw: dict[str, Any]) -> None:
        try:
            turn = parse_turn(raw)
        except ProtocolError as exc:
            self._fail(client, raw, exc.code, exc.message)
            return
        if self.llm is None:
            self._fail(client, raw, "unavailable", NOT_CONFIGURED)
            return
        caller = self.caller(client)
        if turn.reply and not self.conversations.has(caller, turn.conversation):
            self._fail(client, raw, "not_found", "unknown conversation; start a new chat")
            return
        if not self._turns.hit(self._per_hour, "chat", self._budget(client)):
            self._rate_limited(client, raw)
            return
        self._present(client, caller)
        messages = self._messages(caller, turn)
        parts: list[str] = []
        try:
            async with asyncio.timeout(self.deadline):
                async for text in self.llm.stream(messages):
                    if client.id not in self.hub.clients:
                        return
                    parts.append(text)
                    self._chunk(client, text)
        except ChatError as exc:
            logger.warning("client %d: chat failed: %s", client.id, exc)
            self._fail(client, raw, "upstream_error", str(exc), after_text=bool(parts))
            return
        except TimeoutError:
            logger.warning("client %d: chat answer not finished in %g s", client.id, self.deadline)
            late = f"the model endpoint did not finish its answer within {self.deadline:g} s"
            self._fail(client, raw, "upstream_error", late, after_text=bool(parts))
            return
        except Exception:  # a bug: logged and counted; the chat window still gets its end
            logger.exception("client %d: chat turn failed", client.id)
            self.hub.metrics.inc("candlewire_internal_errors_total")
            self._fail(client, raw, "internal_error", INTERNAL, after_text=bool(parts))
            return
        self.conversations.answered(caller, turn.conversation, "".join(parts))
        self._chunk(client, "", done=True)

    def _rate_limited(self, client: Client, raw: dict[str, Any]) -> None:
        limit = self.hub.settings.MAX_LLM_REQUESTS_PER_HOUR
        self._fail(client, raw, "rate_limited", f"Too many requests: {limit} chats an hour")

    def _messages(self, caller: str, turn: Turn) -> list[Message]:
        """Keep the turn in its conversation; the messages to send (checked: it exists)."""
        if turn.reply:
            return self.conversations.reply(caller, turn.conversation, turn.prompt) or []
        return self.conversations.start(
            caller, turn.conversation, turn.prompt, turn.description, turn.image
        )

    def _chunk(self, client: Client, text: str, done: bool = False) -> None:
        message: dict[str, Any] = {"type": "prompt_response", "response": text}
        if done:
            message["done"] = True
        self.hub.send(client, protocol.encode(message))

    def _fail(
        self, client: Client, raw: dict[str, Any], code: str, text: str, after_text: bool = False
    ) -> None:
        """The ``error``, then ``Error: ...`` as a chunk (after the part of an answer already
        sent, on a paragraph of its own) and the end marker."""
        if client.id not in self.hub.clients:
            return
        self.hub.metrics.inc("candlewire_request_errors_total", code=code)
        echo = {k: v for k, v in raw.items() if k != "img"}
        self.hub.send(client, protocol.error_message(code, text, echo))
        self._chunk(client, f"{chr(10) * 2 if after_text else ''}Error: {text}")
        self._chunk(client, "", done=True)
