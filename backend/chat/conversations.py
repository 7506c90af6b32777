"""Chat conversations in memory, keyed by the caller and the client's ``conversation_id``.

The caller is who may continue a conversation (``backend.hub.chatting`` names it: the API
key's or token's client with ``AUTH`` on, else the socket), so nobody else can read or
continue one by its id. What is kept is bounded: at most :data:`MAX_TURNS` messages and
:data:`MAX_CONVERSATION_BYTES` per conversation (older turns go first, then the chart
image; the system prompt and the first question stay), :data:`MAX_PER_CALLER`
conversations per caller (its oldest goes), and :data:`MAX_CONVERSATIONS` and
:data:`MAX_BYTES` in all (the least recently used goes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_CONVERSATIONS = 1_000
MAX_PER_CALLER = 10
MAX_TURNS = 40
MAX_CONVERSATION_BYTES = 8 * 1024 * 1024  # a large screen's chart image is 1-3 MB
MAX_BYTES = 256 * 1024 * 1024
IMAGE_DROPPED = "(The chart image of this conversation is no longer available.)"
SYSTEM = (
    "You are a technical analyst. The user shows you a price chart (an image and a text "
    "description of its series) and asks about it. Answer concisely, in Markdown, and say "
    "when the chart does not show enough to answer. This is not financial advice."
)

Message = dict[str, Any]
Key = tuple[str, str]  # (caller, conversation_id)


@dataclass
class _Conversation:
    messages: list[Message]
    size: int = field(default=0)


class Conversations:
    """``(caller, conversation_id)`` -> the messages sent to the model so far."""

    def __init__(
        self,
        limit: int = MAX_CONVERSATIONS,
        per_caller: int = MAX_PER_CALLER,
        max_bytes: int = MAX_BYTES,
        conversation_bytes: int = MAX_CONVERSATION_BYTES,
    ) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.max_bytes = max_bytes
        self.conversation_bytes = conversation_bytes
        self.size = 0
        self._all: OrderedDict[Key, _Conversation] = OrderedDict()
        self._of: dict[str, OrderedDict[str, None]] = {}  # caller -> its ids, oldest first

    def __len__(self) -> int:
        return len(self._all)

    def has(self, caller: str, key: str) -> bool:
        return (caller, key) in self._all

    def start(
        self, caller: str, key: str, prompt: str, description: str, image: str | None
    ) -> list[Message]:
        """A new conversation (``prompt``), replacing the caller's one with the same id;
        returns the messages of this turn (the image included even if it is not kept)."""
        # no empty text part: a question of only the chart image (Tradiny's Submit on an
        # empty box) is the image alone, which every vision endpoint takes
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}] if prompt else []
        if image:
            content.append({"type": "image_url", "image_url": {"url": image, "detail": "high"}})
        messages: list[Message] = [
            {"role": "system", "content": f"{SYSTEM}\n\n{description}".strip()},
            {"role": "user", "content": content},
        ]
        turn = [dict(message) for message in messages]  # trimming the kept one spares it
        self._remove((caller, key))
        self._put(caller, key, messages)
        return turn

    def reply(self, caller: str, key: str, prompt: str) -> list[Message] | None:
        """The conversation with a new user turn (``prompt_reply``); None when unknown."""
        found = self._all.get((caller, key))
        if found is None:
            return None
        last = found.messages[-1] if found.messages else None
        if last is not None and last.get("role") == "user":
            # the turn before got no answer (it failed, or its socket went): one user
            # message of both, as chat templates that want the roles to alternate require
            last["content"] = [*_parts(last.get("content")), {"type": "text", "text": prompt}]
        else:
            found.messages.append({"role": "user", "content": prompt})
        self._resized((caller, key), found)
        return list(found.messages) if (caller, key) in self._all else None

    def answered(self, caller: str, key: str, answer: str) -> None:
        found = self._all.get((caller, key))
        if found is not None and answer:
            found.messages.append({"role": "assistant", "content": answer})
            self._resized((caller, key), found)

    def count(self, caller: str) -> int:
        """How many conversations ``caller`` has."""
        return len(self._of.get(caller, ()))

    def forget(self, caller: str) -> None:
        """Every conversation of ``caller`` (its socket closed, or it left for good)."""
        for key in list(self._of.get(caller, ())):
            self._remove((caller, key))

    def _put(self, caller: str, key: str, messages: list[Message]) -> None:
        conversation = _Conversation(messages)
        self._all[(caller, key)] = conversation
        self._of.setdefault(caller, OrderedDict())[key] = None
        self._resized((caller, key), conversation)
        ids = self._of[caller]
        while len(ids) > self.per_caller:
            self._remove((caller, next(iter(ids))))

    def _resized(self, full: Key, conversation: _Conversation) -> None:
        """Trim ``conversation`` to its bounds, account its size, mark it recently used,
        and evict the least recently used while the store is over its bounds."""
        _trim(conversation.messages, self.conversation_bytes)
        self.size -= conversation.size
        conversation.size = _size(conversation.messages)
        self.size += conversation.size
        self._all.move_to_end(full)
        self._of[full[0]].move_to_end(full[1])
        while len(self._all) > self.limit or (self.size > self.max_bytes and self._all):
            self._remove(next(iter(self._all)))

    def _remove(self, full: Key) -> None:
        conversation = self._all.pop(full, None)
        if conversation is None:
            return
        self.size -= conversation.size
        ids = self._of.get(full[0])
        if ids is not None:
            ids.pop(full[1], None)
            if not ids:
                del self._of[full[0]]


def _parts(content: object) -> list[Any]:
    """A message's content as a list of parts (a bare string is one text part)."""
    if isinstance(content, list):
        return list(content)
    return [{"type": "text", "text": content if isinstance(content, str) else ""}]


def _trim(messages: list[Message], max_bytes: int) -> None:
    """Drop the oldest turns after the first question (at most ``MAX_TURNS`` messages,
    ``max_bytes``), then the chart image if that is still too much."""
    while len(messages) > 2 and (len(messages) > MAX_TURNS or _size(messages) > max_bytes):
        del messages[2]
    first = messages[1] if len(messages) > 1 else None
    if first is not None and isinstance(first["content"], list) and _size(messages) > max_bytes:
        texts = [part for part in first["content"] if part.get("type") == "text"]
        first["content"] = [*texts, {"type": "text", "text": IMAGE_DROPPED}]


def _size(messages: list[Message]) -> int:
    """About the bytes a conversation holds: the length of its texts and image URLs."""
    total = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
            continue
        for part in content:
            total += len(part.get("text", "")) + len(part.get("image_url", {}).get("url", ""))
    return total
