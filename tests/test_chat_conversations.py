"""The chat's conversation store: keyed by caller, bounded in bytes, turns and count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from backend.chat.conversations import IMAGE_DROPPED, Conversations
from backend.hub.clients import Client
from tests.harness import eventually
from tests.hub_fakes import connect, make_hub, taken

IMAGE = "data:image/png;base64," + "A" * 900_000


def test_a_conversation_belongs_to_its_caller() -> None:
    store = Conversations()
    store.start("alice", "c1", "secret", "d", None)
    assert store.reply("mallory", "c1", "repeat everything") is None
    assert store.has("alice", "c1") and not store.has("mallory", "c1")
    store.start("mallory", "c1", "mine", "d", None)  # the same id: a conversation of its own
    replied = store.reply("alice", "c1", "more")
    assert replied is not None and replied[1]["content"][0]["text"] == "secret"


def test_one_caller_keeps_a_bounded_number_of_conversations_and_evicts_only_its_own() -> None:
    store = Conversations(per_caller=3)
    store.start("alice", "a", "hi", "", None)
    for n in range(50):
        store.start("mallory", f"m{n}", "x", "", IMAGE)
    assert store.has("alice", "a")
    assert len(store) == 4 and store.size < 4 * 1_000_000
    store.forget("mallory")
    assert len(store) == 1


def test_the_bytes_kept_are_bounded_in_all_and_per_conversation() -> None:
    store = Conversations(max_bytes=3_000_000, per_caller=100)
    for n in range(10):
        turn = store.start(f"caller{n}", "c", "look", "", IMAGE)
        assert turn[1]["content"][1]["image_url"]["url"] == IMAGE  # this turn still has it
    assert store.size <= 3_000_000 and len(store) == 3
    small = Conversations(conversation_bytes=100_000)
    small.start("a", "c", "look", "", IMAGE)
    small.answered("a", "c", "I see a chart")
    replied = small.reply("a", "c", "and now?")
    assert replied is not None
    assert replied[1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "text", "text": IMAGE_DROPPED},
    ]
    assert small.size < 100_000


def test_a_reply_to_a_turn_that_got_no_answer_joins_it_so_the_roles_alternate() -> None:
    """A failed turn (or one whose socket went) keeps its user message; the next one joins
    it instead of following it: strict chat templates refuse two user messages in a row."""
    store = Conversations()
    store.start("a", "c", "look", "", IMAGE)
    replied = store.reply("a", "c", "and now?")
    assert replied is not None
    assert [m["role"] for m in replied] == ["system", "user"]
    assert replied[1]["content"][0] == {"type": "text", "text": "look"}
    assert replied[1]["content"][-1] == {"type": "text", "text": "and now?"}
    store.answered("a", "c", "an answer")
    again = store.reply("a", "c", "thanks")
    assert again is not None
    assert [m["role"] for m in again] == ["system", "user", "assistant", "user"]
    assert again[-1]["content"] == "thanks"


async def test_a_turn_that_fails_unexpectedly_still_ends_the_chat_window() -> None:
    """A bug inside a turn (here, the model client raising what it never should) was
    reported by the lane as internal_error with no request and no end marker: the chat
    window said "Loading..." for good."""
    hub, _ = make_hub(LLM_MODEL="m", LLM_BASE_URL="http://127.0.0.1:9/v1")
    assert hub.chatting.llm is not None

    async def broken(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        yield "Half an "
        raise RuntimeError("a bug")

    hub.chatting.llm.stream = broken  # type: ignore[method-assign]
    client = connect(hub)
    received: list[dict[str, Any]] = []

    def sent(client: Client) -> list[dict[str, Any]]:
        received.extend(taken(client))
        return received

    prompt = {"type": "prompt", "prompt": "why?", "description": "", "conversation_id": "c1"}
    await hub.handle_frame(client, orjson.dumps(prompt))
    await eventually(lambda: any(m.get("done") for m in sent(client)), 10, "the end marker")
    replies = sent(client)
    error = next(m for m in replies if m.get("type") == "error")
    assert error["code"] == "internal_error" and error["request"]["type"] == "prompt"
    assert replies[-1] == {"type": "prompt_response", "response": "", "done": True}
    await hub.chatting.close()
