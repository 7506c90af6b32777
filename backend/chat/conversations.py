"""Chat conversations in memory, keyed by the client's ``conversation_id``.

At most :data:`MAX_CONVERSATIONS` are kept (the oldest is evicted, as Tradiny) and at most
:data:`MAX_TURNS` messages each; the chart image is kept only in the first user turn.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_CONVERSATIONS = 1_000
MAX_TURNS = 40
SYSTEM = (
    "You are a technical analyst. The user shows you a price chart (an image and a text "
    "description of its series) and asks about it. Answer concisely, in Markdown, and say "
    "when the chart does not show enough to answer. This is not financial advice."
)

Message = dict[str, Any]


class Conversations:
    """``conversation_id`` -> the messages sent to the model so far."""

    def __init__(self, limit: int = MAX_CONVERSATIONS) -> None:
        self.limit = limit
        self._turns: OrderedDict[str, list[Message]] = OrderedDict()

    def start(self, key: str, prompt: str, description: str, image: str | None) -> list[Message]:
        """A new conversation (``prompt``); replaces one with the same id."""
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if image:
            content.append({"type": "image_url", "image_url": {"url": image, "detail": "high"}})
        messages: list[Message] = [
            {"role": "system", "content": f"{SYSTEM}\n\n{description}".strip()},
            {"role": "user", "content": content},
        ]
        self._turns[key] = messages
        self._turns.move_to_end(key)
        while len(self._turns) > self.limit:
            self._turns.popitem(last=False)
        return list(messages)

    def reply(self, key: str, prompt: str) -> list[Message] | None:
        """The conversation with a new user turn (``prompt_reply``); None when unknown."""
        messages = self._turns.get(key)
        if messages is None:
            return None
        messages.append({"role": "user", "content": prompt})
        self._trim(messages)
        self._turns.move_to_end(key)
        return list(messages)

    def answered(self, key: str, answer: str) -> None:
        messages = self._turns.get(key)
        if messages is not None and answer:
            messages.append({"role": "assistant", "content": answer})
            self._trim(messages)

    def _trim(self, messages: list[Message]) -> None:
        while len(messages) > MAX_TURNS:
            del messages[2]  # keep the system prompt and the turn with the chart
