"""AI chat end to end against a fake OpenAI-compatible server on loopback: streamed
``prompt_response`` chunks with an end marker, conversations (their caller's only), a chart
image up to the frame limit, other requests answered meanwhile, errors as chunks (malformed
streams and the turn deadline too), refused turns that keep nothing, and an unconfigured
server."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_chat import FakeChat
from tests.harness import ServerProcess, WsClient, base_env, eventually

CHUNKS = ["The 1h chart ", "shows higher lows", "; the uptrend holds."]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeChat]:
    with FakeChat(CHUNKS) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeChat) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("chat")
    env = base_env(
        tmp,
        PROVIDERS="csv",
        LLM_BASE_URL=fake.base_url,
        LLM_API_KEY="test-key",
        LLM_MODEL="m1",
        LLM_TIMEOUT_SECONDS="4",
    )
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess, fake: FakeChat) -> AsyncIterator[WsClient]:
    fake.delay, fake.status, fake.raw, fake.keepalive, fake.whole = 0.0, 200, None, False, None
    ws = await WsClient.open(server.ws_url)
    yield ws
    await ws.close()


def prompt(conversation: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "prompt", "conversation_id": conversation, "prompt": text, **extra}


async def refused(
    client: WsClient, *requests: dict[str, Any], timeout: float = 10
) -> tuple[dict[str, Any], str]:
    """Send ``requests``; the ``error`` that follows and the text of the (first) turn,
    which a refusal ends with its chunk and end marker too."""
    mark = len(client.messages)
    await client.send(*requests)
    error = await client.wait_for("error", after=mark, timeout=timeout)
    text, _ = await answer(client, mark)
    return error, text


async def answer(client: WsClient, after: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """The text of the next turn (until its end marker) and its chunks."""
    await client.wait_for("prompt_response", lambda m: m.get("done") is True, after=after)
    chunks = []
    for message in client.of_type("prompt_response", after):
        chunks.append(message)
        if message.get("done"):
            break
    return "".join(m["response"] for m in chunks), chunks


async def test_a_prompt_with_a_chart_image_streams_chunks_then_an_end_marker(
    client: WsClient, fake: FakeChat
) -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 600_000).decode()
    before = len(fake.requests)
    await client.send(
        prompt("c1", "Is the uptrend intact?", description="1h chart of BTCUSDT", img=image)
    )
    text, chunks = await answer(client)
    assert [m["response"] for m in chunks] == [*CHUNKS, ""]
    assert text == "".join(CHUNKS)
    sent = fake.requests[before]
    assert sent["model"] == "m1" and sent["stream"] is True
    assert "1h chart of BTCUSDT" in sent["messages"][0]["content"]
    assert sent["messages"][1]["content"][1]["image_url"]["url"] == image


async def test_a_prompt_with_a_large_screens_chart_image_is_taken_and_the_socket_stays(
    client: WsClient, fake: FakeChat
) -> None:
    """Tradiny sends the chart at three times its size: 1.2 MB from a 1920x1080 window,
    1.6 MB from 2560x1440. Over the old 1 MiB frame limit the socket was closed (1009),
    and Tradiny, seeing a clean close, never reconnected: the chart stopped for good."""
    png = b"\x89PNG" + bytes(range(256)) * (1_600_000 // 256)
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    assert len(image) > 2 * 1024 * 1024
    before = len(fake.requests)
    await client.send(prompt("big", "Where is support?", description="1m chart", img=image))
    text, _ = await answer(client)
    assert text == "".join(CHUNKS)
    assert fake.requests[before]["messages"][1]["content"][1]["image_url"]["url"] == image
    mark = len(client.messages)
    await client.send({"type": "ping"})
    await client.wait_for("pong", after=mark)


async def test_a_prompt_reply_continues_the_conversation(client: WsClient, fake: FakeChat) -> None:
    await client.send(prompt("c2", "First?", description="d"))
    await answer(client)
    mark = len(client.messages)
    await client.send({"type": "prompt_reply", "conversation_id": "c2", "prompt": "And daily?"})
    text, _ = await answer(client, after=mark)
    assert text == "".join(CHUNKS)
    roles = [m["role"] for m in fake.requests[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert fake.requests[-1]["messages"][2]["content"] == "".join(CHUNKS)


async def test_a_first_prompt_without_text_asks_about_the_chart_image_alone(
    client: WsClient, fake: FakeChat
) -> None:
    """Tradiny's chat window sends what its box holds: Submit on an empty box is a
    ``prompt`` with ``"prompt": ""`` and the chart image (the chart is the question). It
    was refused (``'prompt' must be 1 to 20000 characters``) and, no conversation made,
    every later question of that window got ``unknown conversation``."""
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 1000).decode()
    before = len(fake.requests)
    mark = len(client.messages)
    await client.send(
        {
            "type": "prompt",
            "conversation_id": "3f0c9a7e-5b1d-4c2e-9a51-0d6f2b7c8e14",
            "description": "The chart is on a 1m interval.\n",
            "prompt": "",
            "img": image,
        }
    )
    text, _ = await answer(client, mark)
    assert text == "".join(CHUNKS)
    assert not client.of_type("error", mark)
    content = fake.requests[before]["messages"][1]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": image, "detail": "high"}}]
    mark = len(client.messages)
    await client.send(
        {
            "type": "prompt_reply",
            "conversation_id": "3f0c9a7e-5b1d-4c2e-9a51-0d6f2b7c8e14",
            "prompt": "Is it trending?",
        }
    )
    text, _ = await answer(client, mark)
    assert text == "".join(CHUNKS)
    assert [m["role"] for m in fake.requests[-1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    # nothing to ask: no text and no chart, or an empty reply
    error, _ = await refused(client, prompt("no-chart", "", description="d"))
    assert error["code"] == "invalid_field"
    reply = {"type": "prompt_reply", "conversation_id": "3f0c9a7e-5b1d-4c2e-9a51-0d6f2b7c8e14"}
    error, _ = await refused(client, {**reply, "prompt": ""})
    assert error["code"] == "invalid_field"


async def test_a_slow_chat_does_not_hold_up_the_sockets_other_requests(
    client: WsClient, fake: FakeChat
) -> None:
    fake.delay = 0.5
    await client.send(prompt("c3", "Slow?"), {"type": "ping", "id": 7})
    await client.wait_for("pong")
    pong = next(i for i, m in enumerate(client.messages) if m.get("type") == "pong")
    await answer(client)
    done = next(i for i, m in enumerate(client.messages) if m.get("done"))
    assert pong < done


async def test_an_unknown_conversation_and_an_upstream_failure_answer_an_error_chunk(
    client: WsClient, fake: FakeChat
) -> None:
    request = {"type": "prompt_reply", "conversation_id": "nope", "prompt": "?"}
    error, text = await refused(client, request)
    assert error["code"] == "not_found"
    assert text.startswith("Error: ")
    fake.status = 500
    mark = len(client.messages)
    await client.send(prompt("c4", "Fail?"))
    text, _ = await answer(client, after=mark)
    assert text.startswith("Error: ") and "500" in text
    await client.wait_for("error", lambda m: m["code"] == "upstream_error", after=mark)


async def test_a_socket_has_at_most_two_turns_pending_and_a_third_is_refused_at_once(
    client: WsClient, fake: FakeChat
) -> None:
    """A queued turn keeps its chart image until it runs: a socket may have one turn
    answering and one waiting; a third is answered ``limit_reached`` at once (keeping
    nothing), and the two run to their ends."""
    fake.delay = 0.3
    image = "data:image/png;base64," + "A" * 100_000
    mark = len(client.messages)
    await client.send(*(prompt(f"q{n}", f"Question {n}?", img=image) for n in range(3)))
    error = await client.wait_for("error", after=mark)
    assert error["code"] == "limit_reached" and error["request"]["conversation_id"] == "q2"
    assert "img" not in error["request"]

    def ended() -> list[str]:
        texts, text = [], ""
        for message in client.of_type("prompt_response", mark):
            text += message["response"]
            if message.get("done"):
                texts.append(text)
                text = ""
        return texts

    await eventually(lambda: len(ended()) == 3, what="three turn ends")
    refusal, *answers = ended()
    assert refusal.startswith("Error: wait for the answer")
    assert answers == ["".join(CHUNKS)] * 2
    fake.delay = 0.0
    mark = len(client.messages)
    await client.send(prompt("q3", "A fourth, after them?"))
    text, _ = await answer(client, mark)
    assert text == "".join(CHUNKS)


async def test_the_turns_pending_over_all_sockets_are_bounded_in_bytes(
    server: ServerProcess, fake: FakeChat
) -> None:
    """Two turns per socket bounded one socket only: 50 sockets of one address, each with
    two 7.5 MB chart images for a slow endpoint, took the hub to 1.8 GB. Past 64 MiB of
    pending turns over the hub a turn is refused with ``limit_reached`` at once; once the
    pending turns ended, a new one is answered."""
    fake.delay = 1.0  # 3 chunks: each turn answers for about 3 s
    image = "data:image/png;base64," + "A" * 7_000_000
    sockets = [await WsClient.open(server.ws_url) for _ in range(5)]
    try:
        for n, ws in enumerate(sockets):
            for k in range(2):
                await ws.send(prompt(f"big{n}-{k}", "Where is support?", img=image))
        await eventually(
            lambda: any(e for ws in sockets for e in ws.of_type("error")), what="a refusal"
        )
        errors = [e for ws in sockets for e in ws.of_type("error")]
        assert {e["code"] for e in errors} == {"limit_reached"}
        assert all("too many chat turns" in e["message"] for e in errors)
        fake.delay = 0.0
        for ws in sockets:
            await eventually(
                lambda ws=ws: len([m for m in ws.of_type("prompt_response") if m.get("done")]) == 2,
                timeout=15,
                what="both turns of a socket end",
            )
        mark = len(sockets[0].messages)
        await sockets[0].send(prompt("after", "And now?", img=image))
        text, _ = await answer(sockets[0], mark)
        assert text == "".join(CHUNKS)
    finally:
        fake.delay = 0.0
        for ws in sockets:
            await ws.close()


async def test_without_a_configured_model_the_chat_says_so_and_the_socket_stays(
    tmp_path: Path,
) -> None:
    env = base_env(tmp_path, PROVIDERS="csv")
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        error, text = await refused(
            client, prompt("c5", "Hello?", img="data:image/png;base64,AAAA")
        )
        assert error["code"] == "unavailable" and "LLM_MODEL" in error["message"]
        assert "img" not in error["request"]
        assert "not configured" in text
        await client.send({"type": "ping", "id": 1})
        await client.wait_for("pong")
        await client.close()


async def test_chat_turns_per_address_are_limited_per_hour(tmp_path: Path, fake: FakeChat) -> None:
    env = base_env(
        tmp_path,
        PROVIDERS="csv",
        LLM_BASE_URL=fake.base_url,
        LLM_API_KEY="test-key",
        LLM_MODEL="m1",
        MAX_LLM_REQUESTS_PER_HOUR="2",
    )
    fake.delay, fake.status = 0.0, 200
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        try:
            for n in range(2):
                mark = len(client.messages)
                await client.send(prompt(f"limit{n}", "Hello?"))
                text, _ = await answer(client, mark)
                assert "Error" not in text
            error, text = await refused(client, prompt("limit3", "Once more?"))
            assert error["code"] == "rate_limited" and "2 chats an hour" in error["message"]
            assert "Too many requests" in text
        finally:
            await client.close()


CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m1"}


@pytest.mark.parametrize(
    "events",
    [
        [b'data: {"choices": [{"index": 0, "delta": {"content": "part1"}}]}\n\n', b"data: {no"],
        [b"data: " + json.dumps({**CHUNK, "choices": None}).encode() + b"\n\n"],
        [b'data: "just a string"\n\n'],
    ],
    ids=["not-json", "choices-null", "a-string"],
)
async def test_a_malformed_stream_ends_the_turn_with_an_error_and_the_end_marker(
    client: WsClient, fake: FakeChat, events: list[bytes]
) -> None:
    fake.raw = [event if event.endswith(b"\n\n") else event + b"\n\n" for event in events]
    error, text = await refused(client, prompt("bad", "Malformed?"))
    assert error["code"] == "upstream_error" and "malformed" in error["message"]
    assert "Error: " in text and "malformed" in text
    await client.send({"type": "ping", "id": 2})
    await client.wait_for("pong")


def text_event(text: str) -> bytes:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return b"data: " + json.dumps({**CHUNK, "choices": [delta]}).encode() + b"\n\n"


async def answer_to_raw(
    client: WsClient, fake: FakeChat, raw: list[bytes], conversation: str
) -> tuple[str, int]:
    """The text the client gets for a new prompt that the endpoint answers with the body
    parts ``raw``, and the index of the first message of the turn."""
    fake.raw = raw
    try:
        mark = len(client.messages)
        await client.send(prompt(conversation, "Trend?"))
        text, _ = await answer(client, mark)
    finally:
        fake.raw = None
    return text, mark


async def test_sse_events_without_data_are_skipped_as_the_sse_standard_reads_them(
    client: WsClient, fake: FakeChat
) -> None:
    """Comments, ``event:`` lines without data (a ping), ``retry:`` and ``id:`` alone and a
    blank ``data:`` carry no chunk: ``openai`` handed the last four to its JSON parser and
    the answer ended in 'malformed answer (not JSON)'."""
    raw = [
        b": OPENROUTER PROCESSING\n\n",
        b"event: ping\n\n",
        b"retry: 3000\r\n\r\n",
        text_event("Higher "),
        b"id: 7\n\n",
        b"data:\n\n",
        b"event: message\nid: 8\n" + text_event("lows."),
    ]
    text, mark = await answer_to_raw(client, fake, raw, "pings")
    assert text == "Higher lows."
    assert not client.of_type("error", mark)


async def test_a_usage_chunk_with_null_or_no_choices_ends_the_answer_cleanly(
    client: WsClient, fake: FakeChat
) -> None:
    """OpenAI's usage chunk has ``"choices": []``; some compatible servers send it with
    ``null`` or without the key. The answer is whole: it ended in 'a chunk without
    choices' after all its text."""
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    raw = [
        text_event("Higher lows."),
        b"data: " + json.dumps({**CHUNK, "choices": None, "usage": usage}).encode() + b"\n\n",
        b"data: " + json.dumps({**CHUNK, "usage": usage}).encode() + b"\n\n",
    ]
    text, mark = await answer_to_raw(client, fake, raw, "usage")
    assert text == "Higher lows."
    assert not client.of_type("error", mark)


@pytest.mark.parametrize(
    "failure",
    [
        b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n',
        b'event: error\ndata: {"error": {"message": "The server had an error"}}\n\n',
        b'error: {"code": 500, "message": "The server had an error", "type": "server_error"}\n\n',
    ],
    ids=["data-error", "error-event", "llama-cpp-error-field"],
)
async def test_an_error_inside_the_stream_says_what_the_endpoint_said(
    client: WsClient, fake: FakeChat, failure: bytes
) -> None:
    """OpenAI, OpenRouter and vLLM send ``{"error": ...}`` as an event when an answer fails
    after it began (llama.cpp of 2025 as an ``error:`` field): the user reads its message
    after the text that came, not 'APIError' (or, for llama.cpp, 'no text')."""
    fake.raw = [text_event("Partly "), failure]
    try:
        error, text = await refused(client, prompt("midway", "Trend?"))
    finally:
        fake.raw = None
    assert error["code"] == "upstream_error"
    assert error["message"] == "the model endpoint failed: The server had an error"
    assert text == "Partly \n\nError: the model endpoint failed: The server had an error"


async def test_an_emoji_whose_utf16_halves_come_in_two_chunks_reaches_the_client_whole(
    client: WsClient, fake: FakeChat
) -> None:
    """JSON escapes UTF-16: an endpoint that cuts its text by UTF-16 units sends the halves
    of an emoji in two chunks (each valid JSON). They are joined, a lone half is U+FFFD;
    the turn used to die unanswered (no end marker: the halves are no UTF-8)."""
    deltas = [r'"A \ud83d"', r'"\ude80 B"', r'"\udc00!"', r'" \ud83d"']
    raw = [
        b'data: {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m1", '
        b'"choices": [{"index": 0, "delta": {"content": ' + delta.encode() + b"}}]}\n\n"
        for delta in deltas
    ]
    text, mark = await answer_to_raw(client, fake, raw, "halves")
    assert text == "A \U0001f680 B\ufffd! \ufffd"
    assert not client.of_type("error", mark)
    mark = len(client.messages)
    await client.send({"type": "prompt_reply", "conversation_id": "halves", "prompt": "And?"})
    text, _ = await answer(client, mark)
    assert text == "".join(CHUNKS)
    assert fake.requests[-1]["messages"][-2]["content"] == "A \U0001f680 B\ufffd! \ufffd"


async def test_an_answer_cut_off_mid_stream_ends_with_an_error_after_the_text_it_had(
    client: WsClient, fake: FakeChat
) -> None:
    """The endpoint drops the connection inside its answer: what came is shown, then why it
    stopped, then the end marker; the socket goes on."""
    fake.cut = True
    try:
        error, text = await refused(client, prompt("cut", "Cut short?"))
    finally:
        fake.cut = False
    assert error["code"] == "upstream_error" and "failed" in error["message"]
    assert text.startswith("".join(CHUNKS) + "\n\nError: ")
    await client.send({"type": "ping", "id": 3})
    await client.wait_for("pong")


async def test_an_answer_of_tool_calls_only_says_why_there_is_no_text(
    client: WsClient, fake: FakeChat
) -> None:
    """It came back empty, as if the model had nothing to say."""
    call = {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                            "function": {"name": "chart", "arguments": "{}"}}]}  # fmt: skip
    events = [
        {**CHUNK, "choices": [{"index": 0, "delta": call, "finish_reason": None}]},
        {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    fake.raw = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]
    try:
        error, text = await refused(client, prompt("tools", "Draw it?"))
        assert error["code"] == "upstream_error" and "call tools" in error["message"]
        assert "Error: " in text
    finally:
        fake.raw = None


@pytest.mark.parametrize(
    ("reason", "said"), [("length", "cut short"), ("content_filter", "withheld")]
)
async def test_an_answer_cut_short_by_the_model_says_so_after_its_text(
    client: WsClient, fake: FakeChat, reason: str, said: str
) -> None:
    """The text simply stopped mid-sentence, as if that were the whole answer."""
    text_delta = {"index": 0, "delta": {"content": "The trend is"}, "finish_reason": None}
    events = [
        {**CHUNK, "choices": [text_delta]},
        {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]},
    ]
    raw = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]
    text, mark = await answer_to_raw(client, fake, raw, f"cut-{reason}")
    assert text.startswith("The trend is\n\n(") and said in text
    assert not client.of_type("error", mark)


async def test_the_request_sets_no_temperature_or_token_limit(
    client: WsClient, fake: FakeChat
) -> None:
    """OpenAI's reasoning models refuse ``max_tokens`` and ``temperature: 0``."""
    mark = len(client.messages)
    await client.send(prompt("plain", "Params?"))
    await answer(client, mark)
    sent = fake.requests[-1]
    assert sent["stream"] is True and sent["model"] == "m1"
    assert not {"temperature", "max_tokens", "max_completion_tokens"} & set(sent)


async def test_a_whole_answer_where_a_stream_was_asked_for_is_read_as_the_answer(
    client: WsClient, fake: FakeChat
) -> None:
    whole = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "All at once."},
         "finish_reason": "stop"}]}  # fmt: skip
    fake.whole = ("application/json", json.dumps(whole).encode())
    try:
        mark = len(client.messages)
        await client.send(prompt("whole", "At once?"))
        text, _ = await answer(client, mark)
        assert text == "All at once."
        fake.whole = ("text/html", b"<html><body>Gateway</body></html>")
        error, text = await refused(client, prompt("html", "Html?"))
        assert error["code"] == "upstream_error" and "not a chat answer" in error["message"]
        fake.whole = ("application/json", b'{"error": {"message": "model m1 is not loaded"}}')
        error, _ = await refused(client, prompt("err200", "Error?"))
        assert "model m1 is not loaded" in error["message"]
    finally:
        fake.whole = None


async def test_an_answer_without_text_is_an_error_and_the_next_reply_joins_the_turn(
    client: WsClient, fake: FakeChat
) -> None:
    """It stopped at once: an error, not an empty answer; the turn's user message stays and
    the next reply joins it (no two user messages in a row)."""
    fake.raw = [
        b"data: " + json.dumps(
            {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        ).encode() + b"\n\n"
    ]  # fmt: skip
    try:
        error, text = await refused(client, prompt("empty", "Anything?"))
        assert error["code"] == "upstream_error" and "no text" in error["message"]
    finally:
        fake.raw = None
    mark = len(client.messages)
    await client.send({"type": "prompt_reply", "conversation_id": "empty", "prompt": "Now?"})
    text, _ = await answer(client, mark)
    assert text == "".join(CHUNKS)
    roles = [m["role"] for m in fake.requests[-1]["messages"]]
    assert roles == ["system", "user"]


async def test_an_endpoint_error_says_what_the_endpoint_said(
    client: WsClient, fake: FakeChat
) -> None:
    fake.status = 400
    error, text = await refused(client, prompt("said", "Why?"))
    assert "HTTP 400: failed with 400" in error["message"] and "failed with 400" in text


async def test_a_stream_of_keep_alives_ends_at_the_turn_deadline_and_the_next_turn_runs(
    client: WsClient, fake: FakeChat
) -> None:
    fake.keepalive = True
    error, text = await refused(
        client, prompt("forever", "Anyone?"), prompt("after", "And now?"), timeout=15
    )
    assert error["code"] == "upstream_error" and "within 4 s" in error["message"]
    assert text.startswith("Error: ")
    fake.keepalive = False
    await eventually(lambda: fake.open_streams == 0, 10, "the upstream stream closed")
    mark = next(i for i, m in enumerate(client.messages) if m.get("done")) + 1
    text, _ = await answer(client, after=mark)
    assert text == "".join(CHUNKS)


async def test_another_socket_cannot_continue_or_read_a_conversation(
    server: ServerProcess, client: WsClient, fake: FakeChat
) -> None:
    await client.send(prompt("private", "my position is 40 BTC long", description="d"))
    await answer(client)
    other = await WsClient.open(server.ws_url)
    try:
        before = len(fake.requests)
        await other.send({"type": "prompt_reply", "conversation_id": "private", "prompt": "?"})
        assert (await other.wait_for("error"))["code"] == "not_found"
        await answer(other)
        assert len(fake.requests) == before  # nothing of the conversation went anywhere
    finally:
        await other.close()
    mark = len(client.messages)
    await client.send({"type": "prompt_reply", "conversation_id": "private", "prompt": "ok?"})
    text, _ = await answer(client, after=mark)
    assert text == "".join(CHUNKS)


async def test_refused_turns_keep_nothing_and_evict_no_other_conversation(
    tmp_path: Path, fake: FakeChat
) -> None:
    env = base_env(
        tmp_path,
        PROVIDERS="csv",
        LLM_BASE_URL=fake.base_url,
        LLM_API_KEY="test-key",
        LLM_MODEL="m1",
        MAX_LLM_REQUESTS_PER_HOUR="1",
    )
    fake.delay, fake.status, fake.raw, fake.keepalive, fake.whole = 0.0, 200, None, False, None
    with ServerProcess(env, tmp_path / "server.log") as server:
        alice = await WsClient.open(server.ws_url)
        mallory = await WsClient.open(server.ws_url)
        try:
            await alice.send(prompt("alice", "Hello?"))
            await answer(alice)
            for frame in range(10):  # 1000 turns over the hourly limit
                await mallory.send(*[prompt(f"m{frame}-{n}", "x") for n in range(100)])
            await eventually(lambda: len(mallory.of_type("error")) == 1000, 30, "1000 refusals")
            assert {m["code"] for m in mallory.of_type("error")} == {"rate_limited"}
            mark = len(alice.messages)
            await alice.send({"type": "prompt_reply", "conversation_id": "alice", "prompt": "?"})
            # her conversation is still there: refused for the hour's budget, not unknown
            error = await alice.wait_for("error", after=mark)
            assert error["code"] == "rate_limited"
        finally:
            await alice.close()
            await mallory.close()


async def test_with_auth_a_clients_conversations_go_after_the_grace_once_it_left(
    tmp_path: Path, fake: FakeChat
) -> None:
    """With ``AUTH`` on a conversation is the client's, over its sockets: a reconnecting
    page continues it. They were kept after the client left for good too, chart images
    included, until the store's bounds pushed them out: a server running for days held
    every departed client's conversations. They now go ``LLM_CONVERSATION_GRACE_SECONDS``
    after its last socket that chatted closed."""
    key = "chat-key-1"
    env = base_env(
        tmp_path,
        PROVIDERS="csv",
        AUTH="token",
        API_KEYS=key,
        LLM_BASE_URL=fake.base_url,
        LLM_API_KEY="test-key",
        LLM_MODEL="m1",
        LLM_CONVERSATION_GRACE_SECONDS="2",
    )
    fake.delay, fake.status, fake.raw, fake.keepalive, fake.whole = 0.0, 200, None, False, None

    def conversations() -> float:
        request = urllib.request.Request(
            server.url + "/metrics", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("candlewire_chat_conversations "))
        return float(line.split()[1])

    class Keyed(ServerProcess):
        def get(self, path: str) -> Any:
            request = urllib.request.Request(
                self.url + path, headers={"Authorization": f"Bearer {key}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())

    with Keyed(env, tmp_path / "server.log") as server:
        url = f"{server.ws_url}?token={key}"
        first = await WsClient.open(url)
        await first.send(prompt("kept", "Hello?"))
        await answer(first)
        await first.close()
        again = await WsClient.open(url)  # a reconnect within the grace continues it
        try:
            await again.send({"type": "prompt_reply", "conversation_id": "kept", "prompt": "?"})
            text, _ = await answer(again)
            assert text == "".join(CHUNKS)
            assert conversations() == 1
        finally:
            await again.close()
        await eventually(lambda: conversations() == 0, 15, "the departed client's chat forgotten")
        late = await WsClient.open(url)
        try:
            error, _ = await refused(
                late, {"type": "prompt_reply", "conversation_id": "kept", "prompt": "?"}
            )
            assert error["code"] == "not_found"
        finally:
            await late.close()
    assert "chat: forgot 1 conversations of 1 clients" in (tmp_path / "server.log").read_text()
