"""The model client (``backend.chat.llm``) against the fake OpenAI-compatible endpoint, in
process: what an operator's setup mistakes and a model without vision come to."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from backend.chat.llm import IMAGE_LEFT_OUT, ChatError, Llm
from tests.fakes.openai_chat import FakeChat

CHUNKS = ["Higher lows", " on the 1h chart."]
IMAGE = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def fake() -> Iterator[FakeChat]:
    with FakeChat(CHUNKS) as running:
        yield running


def first_turn(prompt: str = "Trend?") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a technical analyst.\n\nBTCUSDT 1h candles"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": IMAGE, "detail": "high"}},
            ],
        },
    ]


@contextlib.asynccontextmanager
async def model(base_url: str, name: str) -> AsyncIterator[Llm]:
    """The client of ``name`` at ``base_url`` (with a test key), closed after."""
    llm = Llm(base_url, "test-key", name)
    try:
        yield llm
    finally:
        await llm.close()


async def answer(llm: Llm, messages: list[dict[str, Any]]) -> str:
    return "".join([text async for text in llm.stream(messages)])


def images(request: dict[str, Any]) -> int:
    return sum(
        1
        for message in request["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    )


async def test_a_base_url_without_v1_is_named_in_the_404(fake: FakeChat) -> None:
    """``LLM_BASE_URL=http://localhost:11434`` (Ollama's address, without ``/v1``) posts to
    ``/chat/completions``, which answers a bare 404 (NousResearch/hermes-agent#7516): the
    chat said only 'HTTP 404', not what to change."""
    async with model(fake.url, "m1") as llm:
        with pytest.raises(ChatError) as caught:
            await answer(llm, first_turn())
    text = str(caught.value)
    assert "HTTP 404" in text and "LLM_BASE_URL" in text and "/v1" in text


async def test_an_error_given_as_a_bare_string_is_told(fake: FakeChat) -> None:
    """Ollama's cloud answers ``{"error": "<text>"}``, not ``{"error": {"message": ...}}``
    (OpenCoworkAI/open-cowork#251): its text was dropped."""
    fake.text_only = "model 'glm' is overloaded"  # no word of images: not asked again
    async with model(fake.base_url, "m1") as llm:
        with pytest.raises(ChatError) as caught:
            await answer(llm, first_turn())
    assert str(caught.value) == "the model endpoint answered HTTP 400: model 'glm' is overloaded"
    assert len(fake.requests) == 1


REFUSALS = [
    "this model does not support image input",  # Ollama (ollama/ollama#17301)
    "Model does not support images. Please use a model that does.",  # LM Studio
    "Invalid content type. image_url is only supported by certain models.",  # OpenAI
    "The model `Qwen/Qwen2.5-7B-Instruct` is not a multimodal model",  # vLLM
    "image input is not supported - hint: you may need to provide the mmproj",  # llama.cpp
    "No endpoints found that support image input",  # OpenRouter
    # DeepSeek's API (jxxghp/MoviePilot#5863); Groq (vercel/ai#2837)
    "Failed to deserialize the JSON body into the target type: messages[1]: unknown variant "
    "`image_url`, expected `text` at line 1 column 679",
    "messages[1].content must be a string",
]


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_a_model_without_vision_answers_from_the_description(
    fake: FakeChat, refusal: str
) -> None:
    """A text-only model (Ollama's llama3, DeepSeek's API, Groq's llama-3.1, ...) refuses
    the chart image (400): every chat of such a setup failed. The turn is asked again
    without the image (the texts as one string, as Groq requires), the answer says so, and
    later requests leave images out from the start."""
    fake.text_only = refusal
    async with model(fake.base_url, "m1") as llm:
        text = await answer(llm, first_turn())
        assert text.startswith("".join(CHUNKS))
        assert "image" in text.removeprefix("".join(CHUNKS))  # the note after the answer
        assert [images(r) for r in fake.requests] == [1, 0]
        assert fake.requests[1]["messages"][1]["content"] == f"Trend?\n\n{IMAGE_LEFT_OUT}"
        later = [*first_turn(), {"role": "assistant", "content": "Up."}]
        later.append({"role": "user", "content": "And the volume?"})
        assert await answer(llm, later) == "".join(CHUNKS)  # no note: no new image
        assert [images(r) for r in fake.requests] == [1, 0, 0]


async def test_another_400_is_not_asked_again(fake: FakeChat) -> None:
    fake.status = 400
    async with model(fake.base_url, "m1") as llm:
        with pytest.raises(ChatError, match="failed with 400"):
            await answer(llm, first_turn())
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "chunks",
    [
        ["<think>\nLows at 91k, 92k.\n</think>\n\n", "Higher lows."],
        ["<thi", "nk>Lows at 91k", ", 92k.</th", "ink>", "\n\n", "Higher", " lows."],
        ["\n<think></think>\n\nHigher lows."],  # DeepSeek-R1 on Ollama with nothing to think
    ],
)
async def test_a_reasoning_block_in_the_text_is_not_the_answer(
    fake: FakeChat, chunks: list[str]
) -> None:
    """DeepSeek-R1 or Qwen3 served without a reasoning parser (Ollama before 0.9, vLLM
    without --reasoning-parser, llama.cpp with --reasoning-format none) writes its reasoning
    into the answer in a <think> block (ollama/ollama#8837): the chat showed it as the
    answer, and kept it in the conversation."""
    fake.chunks = chunks
    async with model(fake.base_url, "m1") as llm:
        assert await answer(llm, first_turn()) == "Higher lows."


async def test_a_think_tag_later_in_the_answer_is_text(fake: FakeChat) -> None:
    fake.chunks = ["Models such as R1 write ", "<think>...</think>", " blocks."]
    async with model(fake.base_url, "m1") as llm:
        assert await answer(llm, first_turn()) == "".join(fake.chunks)
        fake.chunks = ["<think>", "Lows at 91k"]  # stopped while it thought
        with pytest.raises(ChatError, match="has no text"):
            await answer(llm, first_turn())


async def test_a_reasoning_block_in_a_whole_answer_is_not_the_answer(fake: FakeChat) -> None:
    """An endpoint that ignores ``stream`` sends the answer whole, with its block too."""
    text = "<think>\nLows at 91k, 92k.\n</think>\n\nHigher lows."
    answered = {"object": "chat.completion", "choices": [{"message": {"content": text}}]}
    fake.whole = ("application/json", json.dumps(answered).encode())
    async with model(fake.base_url, "m1") as llm:
        assert await answer(llm, first_turn()) == "Higher lows."


async def test_a_reasoning_sent_apart_is_not_shown(fake: FakeChat) -> None:
    """DeepSeek's API and vLLM send it as ``reasoning_content``, OpenRouter as
    ``reasoning``: only ``content`` is the answer."""
    deltas = [{"reasoning_content": "Lows at 91k."}, {"reasoning": "92k."}]
    deltas += [{"content": "Higher lows.", "reasoning_content": None}]
    fake.raw = [
        f"data: {json.dumps({'choices': [{'index': 0, 'delta': d}]})}\n\n".encode() for d in deltas
    ]
    async with model(fake.base_url, "m1") as llm:
        assert await answer(llm, first_turn()) == "Higher lows."


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o?api-version=2024-10-21",
        # the portal's "Target URI", pasted whole
        "/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview",
    ],
)
async def test_an_azure_deployment_url_is_called_as_azure_wants(fake: FakeChat, path: str) -> None:
    """Azure OpenAI's deployment URL carries ``?api-version=``: ``openai`` appended
    ``chat/completions`` to the query (404 'Resource not found', OpenBMB/ChatDev#191), or
    after the pasted ``/chat/completions`` (andrewyng/aisuite#194); and Azure takes its key
    in an ``api-key`` header, not as a bearer token."""
    async with model(fake.url + path, "gpt-4o") as llm:
        assert await answer(llm, first_turn()) == "".join(CHUNKS)
    (headers,) = fake.headers
    assert headers["api-key"] == "test-key" and "Authorization" not in headers
