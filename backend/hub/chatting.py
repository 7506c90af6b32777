"""AI chat at the hub: ``prompt`` / ``prompt_reply`` streamed back as ``prompt_response``.

Each turn runs as a reply job in the client's chat lane, so it never holds up the socket's
other requests (its charts, histories, searches go on) and turns of one client come in
order. Every non-empty delta is one ``prompt_response`` chunk (spec 5.2); the turn ends with
``{"type": "prompt_response", "response": "", "done": true}`` (an extension; the stock
client appends the empty text). Errors are an ``error`` message plus the text as a chunk,
which is what the stock window shows. Without ``LLM_MODEL`` the answer says so at once.

Owns the conversations of one hub and its model client. Not: the upstream call
(``backend.chat.llm``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from limits import RateLimitItemPerHour
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from backend.chat.conversations import Conversations, Message
from backend.chat.llm import ChatError, Llm, configured
from backend.errors import ProtocolError
from backend.hub.clients import Client
from backend.wire import protocol

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

LANE = ("chat",)
MAX_PROMPT = 20_000
MAX_DESCRIPTION = 20_000
MAX_ID = 100
NOT_CONFIGURED = (
    "The AI chat is not configured on this server (set LLM_MODEL, and LLM_API_KEY or LLM_BASE_URL)."
)


class Chatting:
    """The chat of one hub: conversations and the model client (None: not configured)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.conversations = Conversations()
        s = hub.settings
        self._turns = MovingWindowRateLimiter(MemoryStorage())
        self._per_hour = RateLimitItemPerHour(s.MAX_LLM_REQUESTS_PER_HOUR)
        key = s.LLM_API_KEY.get_secret_value()
        self.llm = (
            Llm(s.LLM_BASE_URL, key, s.LLM_MODEL)
            if configured(s.LLM_BASE_URL, key, s.LLM_MODEL)
            else None
        )

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()

    async def take(self, client: Client, raw: dict[str, Any]) -> None:
        """Queue one turn in the client's chat lane (the socket reads on meanwhile)."""
        await client.replies.submit(LANE, lambda: self._turn(client, raw))

    async def _turn(self, client: Client, raw: dict[str, Any]) -> None:
        try:
            key, messages = self._messages(raw)
        except ProtocolError as exc:
            self._fail(client, raw, exc.code, exc.message)
            return
        if self.llm is None:
            self._fail(client, raw, "unavailable", NOT_CONFIGURED)
            return
        address = client.peer.rsplit(":", 1)[0]
        if not self._turns.hit(self._per_hour, "chat", address):
            limit = self.hub.settings.MAX_LLM_REQUESTS_PER_HOUR
            self._fail(client, raw, "rate_limited", f"Too many requests: {limit} chats an hour")
            return
        parts: list[str] = []
        try:
            async for text in self.llm.stream(messages):
                if client.id not in self.hub.clients:
                    return
                parts.append(text)
                self._chunk(client, text)
        except ChatError as exc:
            logger.warning("client %d: chat failed: %s", client.id, exc)
            self._fail(client, raw, "upstream_error", str(exc))
            return
        self.conversations.answered(key, "".join(parts))
        self._chunk(client, "", done=True)

    def _messages(self, raw: dict[str, Any]) -> tuple[str, list[Message]]:
        key = raw.get("conversation_id")
        prompt = raw.get("prompt")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_ID:
            raise ProtocolError("invalid_field", "'conversation_id' must be a short string")
        if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT:
            raise ProtocolError("invalid_field", f"'prompt' must be 1 to {MAX_PROMPT} characters")
        if raw.get("type") == "prompt_reply":
            messages = self.conversations.reply(key, prompt)
            if messages is None:
                raise ProtocolError("not_found", "unknown conversation; start a new chat")
            return key, messages
        description = raw.get("description") or ""
        image = raw.get("img")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise ProtocolError("invalid_field", "'description' must be a string")
        if image is not None and not (isinstance(image, str) and image.startswith("data:image/")):
            raise ProtocolError("invalid_field", "'img' must be a data:image/... URL")
        return key, self.conversations.start(key, prompt, description, image)

    def _chunk(self, client: Client, text: str, done: bool = False) -> None:
        message: dict[str, Any] = {"type": "prompt_response", "response": text}
        if done:
            message["done"] = True
        self.hub.send(client, protocol.encode(message))

    def _fail(self, client: Client, raw: dict[str, Any], code: str, text: str) -> None:
        if client.id not in self.hub.clients:
            return
        self.hub.metrics.inc("candlewire_request_errors_total", code=code)
        echo = {k: v for k, v in raw.items() if k != "img"}
        self.hub.send(client, protocol.error_message(code, text, echo))
        self._chunk(client, f"Error: {text}")
        self._chunk(client, "", done=True)
