"""One streamed answer from an OpenAI-compatible Chat Completions endpoint (``openai``).

Configured by ``LLM_BASE_URL``, ``LLM_API_KEY`` and ``LLM_MODEL``; :func:`configured` says
whether chat is available at all. Upstream failures, malformed events and chunks of another
shape than a ``chat.completion.chunk`` become :class:`ChatError` with a short text for the
user (never the key). ``openai`` makes the request (retries, HTTP errors); the events of
the stream are read here, by the SSE standard's rules (:func:`_events`). The whole turn's
deadline is the caller's (``backend.hub.chatting``); the stream is closed however the
iteration ends.

A reasoning block that starts the text (``<think>...</think>``, from a server that does
not parse it out) is not part of the answer. A model that cannot see images (Ollama's text
models, say) refuses the chart image (400 "this model does not support image input"): the
turn is asked again with a line in its place, the answer says the image was left out, and
the client leaves images out from then on. A 404 that is no JSON error says to check
``LLM_BASE_URL`` (it usually ends in ``/v1``).

``openai`` (about 0.6 s of imports) is imported when the first client is made: a hub
without chat, and every provider process, never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from backend.errors import CandlewireError

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 120.0
MAX_UPSTREAM_MESSAGE = 200  # characters of an endpoint's error message told to the user
# An answer with no text, by why the model stopped: said to the user instead of nothing.
NO_TEXT = {
    "tool_calls": "the model asked to call tools instead of answering; this chat offers none",
    "function_call": "the model asked to call a function instead of answering",
    "content_filter": "the model's answer was withheld by its content filter",
    "length": "the model ran out of tokens before it wrote any text",
}
# An answer cut short, by why the model stopped: said after its text, on a line of its own.
CUT_SHORT = {
    "length": "(The answer was cut short: the model ran out of tokens.)",
    "content_filter": "(The rest of the answer was withheld by the model's content filter.)",
}


# How endpoints refuse an image for a model without vision: Ollama "this model does not
# support image input", LM Studio "Model does not support images", OpenAI "image_url is only
# supported by certain models", vLLM "... is not a multimodal model", llama.cpp "image input
# is not supported (... mmproj)", OpenRouter "No endpoints found that support image input",
# DeepSeek "unknown variant `image_url`, expected `text`", Groq "messages[1].content must
# be a string".
NO_IMAGES = re.compile(
    r"(image|vision|multi-?modal).*(not|n't|only) supported"
    r"|(not|n't) support.*(image|vision|multi-?modal)"
    r"|not an? multi-?modal|mmproj|no endpoints found that support image"
    r"|unknown variant .?image_url|content[^a-z]*(value )?must be a string",
    re.IGNORECASE,
)
IMAGE_LEFT_OUT = "(A chart image was attached here; this model cannot see images.)"
ANSWERED_WITHOUT_IMAGE = (
    "(This model cannot see images: the chart image was left out, and the answer is from the "
    "chart's description.)"
)
NO_V1 = (
    " (check LLM_BASE_URL: an OpenAI-compatible API's base usually ends in /v1, "
    "as Ollama's http://localhost:11434/v1 does)"
)


class ChatError(CandlewireError):
    """The model could not answer; the message is safe to show."""


class ImagesRefused(ChatError):
    """The endpoint refused the request for its image: the model cannot see images."""


class Llm:
    """A client for one endpoint and model."""

    def __init__(
        self, base_url: str, api_key: str, model: str, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        import openai  # deferred: see the module docstring

        self.model = model
        self.takes_images = True  # until the endpoint refuses one
        base, query, azure = _endpoint(base_url)
        # Azure OpenAI takes its key in an "api-key" header, as its own client sends it
        self._headers: dict[str, Any] = {}
        if azure and api_key:  # (per request: a default "Authorization" cannot be omitted)
            self._headers = {"api-key": api_key, "Authorization": openai.omit}
        self._client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            base_url=base or None,
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=1,
            default_query=query or None,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """The answer's non-empty content deltas, in order; without the images when the
        model cannot see them (then a line after the answer of a turn that brought one)."""
        try:
            sent = messages if self.takes_images else _without_images(messages)
            async with contextlib.aclosing(self._answer(sent)) as texts:
                async for text in texts:
                    yield text
        except ImagesRefused as exc:
            if not self.takes_images or not _has_images(messages):
                raise
            self.takes_images = False
            logger.warning(
                "LLM_MODEL %r cannot see images (%s): chart images are left out of its requests",
                self.model,
                exc,
            )
            async with contextlib.aclosing(self._answer(_without_images(messages))) as texts:
                async for text in texts:
                    yield text
        if not self.takes_images and _has_images(messages[-1:]):
            yield f"\n\n{ANSWERED_WITHOUT_IMAGE}"

    async def _answer(self, messages: list[dict[str, Any]]) -> AsyncGenerator[str]:
        import openai  # imported by __init__ already: a lookup

        try:
            # No temperature or token limit: OpenAI's reasoning models refuse both as Tradiny
            # sets them (max_tokens, temperature 0), every endpoint takes a request without;
            # the turn's deadline bounds the answer.
            chunks = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                extra_headers=self._headers or None,
            )
            if not isinstance(chunks, openai.AsyncStream):
                raise ChatError("the model endpoint did not stream its answer")
            said, reason, held = False, None, ""
            try:
                kind = chunks.response.headers.get("content-type", "").lower()
                if "json" in kind or "html" in kind:  # answered, but not as a stream
                    text = _whole_answer(await chunks.response.aread(), self._client.api_key)
                    thinking = Reasoning()
                    text = thinking.feed(_unicode(text)) + thinking.end()
                    if not text:
                        raise ChatError("the model's answer has no text")
                    said = True
                    yield text
                    return
                thinking = Reasoning()
                # The events are read here, not by ``openai``: it hands an event without
                # data (``event: ping``, ``retry: 3000``, a lone ``data:``) to the JSON
                # parser, and drops llama.cpp's ``error:`` lines unread.
                async for event, data in _events(_lines(chunks.response)):
                    if data.startswith("[DONE]"):
                        break
                    chunk = _chunk(data, self._client.api_key, failed=event == "error")
                    for delta in _texts(chunk):
                        text, held = _held_back(held + delta)
                        text = thinking.feed(text)
                        if text:
                            said = True
                            yield text
                    reason = _finish_reason(chunk) or reason
                # a high surrogate whose low half never came; a held-back "<thi"
                text = thinking.feed(_unicode(held)) + thinking.end()
                if text:
                    said = True
                    yield text
            finally:
                await chunks.close()
            if not said:
                raise ChatError(NO_TEXT.get(reason or "", "the model's answer has no text"))
            if reason in CUT_SHORT:
                yield f"\n\n{CUT_SHORT[reason]}"
        except openai.APIStatusError as exc:
            said_why = _upstream_message(exc.body, self._client.api_key)
            text = f"the model endpoint answered HTTP {exc.status_code}{said_why}"
            if NO_IMAGES.search(said_why) and _has_images(messages):
                raise ImagesRefused(text) from exc
            if exc.status_code == 404 and not isinstance(exc.body, dict):  # no API's answer
                text += NO_V1
            raise ChatError(text) from exc
        except openai.APIError as exc:
            raise ChatError(f"the model endpoint failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # an event that is no JSON (json.JSONDecodeError)
            raise ChatError("the model endpoint sent a malformed answer (not JSON)") from exc


AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def _endpoint(base_url: str) -> tuple[str, dict[str, str], bool]:
    """``LLM_BASE_URL`` as ``openai`` needs it: the base without its query (Azure OpenAI's
    deployment URL carries ``?api-version=``, to which ``openai`` appended the path), the
    query, sent with every request, and whether it is Azure OpenAI's (its host, or a
    deployment path). A pasted endpoint (``.../chat/completions``) is cut to its base."""
    if not base_url:
        return "", {}, False
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/chat/completions")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    host = (parts.hostname or "").lower()
    azure = host.endswith(AZURE_HOSTS) or "/openai/deployments/" in f"{path}/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), query, azure


class Reasoning:
    """Leaves out a reasoning block that starts the answer's text (``<think>...</think>``):
    DeepSeek-R1, Qwen3 and QwQ write one where the server does not parse it out (Ollama
    before 0.9, vLLM without ``--reasoning-parser``, llama.cpp with ``--reasoning-format
    none``). Fed the text in pieces (a tag may be cut anywhere); a ``<think>`` later in the
    answer is text."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.state = "start"  # start, thinking, after (the block's end: spaces skipped), text
        self.kept = ""

    def feed(self, text: str) -> str:
        """What of the text so far is answer, not said yet."""
        self.kept += text
        if self.state == "start":
            head = self.kept.lstrip()
            if not head or (len(head) < len(self.OPEN) and self.OPEN.startswith(head)):
                return ""  # nothing yet, or maybe the tag's beginning
            if not head.startswith(self.OPEN):
                self.state = "text"
                return self._take()
            self.state, self.kept = "thinking", head[len(self.OPEN) :]
        if self.state == "thinking":
            end = self.kept.find(self.CLOSE)
            if end < 0:
                self.kept = self.kept[-(len(self.CLOSE) - 1) :]  # maybe the tag's beginning
                return ""
            self.state, self.kept = "after", self.kept[end + len(self.CLOSE) :]
        if self.state == "after":
            self.kept = self.kept.lstrip()
            if not self.kept:
                return ""
            self.state = "text"
        return self._take()

    def end(self) -> str:
        """The rest at the end of the answer: text that only looked like a tag's start."""
        return self._take() if self.state == "start" else ""

    def _take(self) -> str:
        text, self.kept = self.kept, ""
        return text


def _unicode(text: str) -> str:
    """``text`` with its surrogate pairs joined into characters and lone surrogates as
    U+FFFD. JSON escapes UTF-16 (``"\\ud83d\\ude80"``), and an endpoint that cuts its text
    by UTF-16 units sends the halves of an emoji in two chunks: the halves cannot be sent
    to a client as UTF-8, and the turn died without its end marker."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _held_back(text: str) -> tuple[str, str]:
    """``text`` to send now (see :func:`_unicode`) and a high surrogate that ends it, held
    back for the low half that the next delta starts with."""
    if text and "\ud800" <= text[-1] <= "\udbff":
        return _unicode(text[:-1]), text[-1]
    return _unicode(text), ""


def _whole_answer(body: bytes, key: str) -> str:
    """The text of a ``chat.completion`` sent whole where a stream was asked for (some
    endpoints ignore ``stream``); ``ChatError`` for anything else (an error, HTML, an empty
    body)."""
    try:
        answer = json.loads(body)
        if isinstance(answer, dict) and "error" in answer:
            said_why = _upstream_message(answer, key)
            raise ChatError(f"the model endpoint answered an error{said_why}")
        message = answer["choices"][0]["message"]
        text = message["content"] if isinstance(message, dict) else None
    except (ValueError, LookupError, TypeError):
        raise ChatError("the model endpoint sent something that is not a chat answer") from None
    if not isinstance(text, str) or not text:
        raise ChatError("the model's answer has no text")
    return text


def _upstream_message(body: object, key: str) -> str:
    """``: <what the endpoint said>`` from an OpenAI-shaped error body, clipped and without
    the key (a 400's reason is what an operator needs: an unknown model, a parameter it
    refuses), or from a bare text (``{"error": "<text>"}`` as Ollama's cloud answers, which
    ``openai`` hands on as the text, or a plain-text body; not HTML); else ``""``."""
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message.lstrip().startswith("<"):
        return ""  # an HTML page: a proxy's, not the endpoint's words
    if not isinstance(message, str) or not message.strip():
        return ""
    text = _unicode(" ".join(message.split()))
    if len(key) >= 4:
        text = text.replace(key, "***")
    return f": {text[:MAX_UPSTREAM_MESSAGE]}"


async def _lines(response: Any) -> AsyncIterator[str]:
    """The lines of a streamed body; ``ChatError`` when reading it fails (the connection
    dropped, a read timed out): whatever the HTTP client ``openai`` uses raises."""
    try:
        async for line in response.aiter_lines():
            yield line
    except Exception as exc:  # the HTTP client's errors, named to the user
        raise ChatError(
            f"the model endpoint failed: its answer broke off ({type(exc).__name__})"
        ) from exc


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Each server-sent event's type and data (its ``data:`` lines joined), as the SSE
    standard reads a stream: comments (``: OPENROUTER PROCESSING``), ``id:``, ``retry:``
    and unknown fields are no data, and an event without data (or blank data) is none.
    One exception: llama.cpp servers of 2025 send a failure as an ``error:`` field (then
    ``data: [DONE]``), which is read as ``event: error`` with that data."""
    event, data = "", list[str]()
    async for line in lines:  # split at CRLF, LF or CR
        if not line:
            if "".join(data).strip():
                yield event, "\n".join(data)
            event, data = "", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "error":
            event, data = "error", [value]
    if "".join(data).strip():  # the last event, without its blank line
        yield event, "\n".join(data)


def _chunk(data: str, key: str, failed: bool = False) -> object:
    """One event's JSON; ``ChatError`` when it is no JSON, and with what the endpoint said
    when it is an error (``{"error": {"message": ...}}``, sent by OpenAI, OpenRouter,
    vLLM and llama.cpp when an answer fails after it began, or an ``error`` event)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ChatError("the model endpoint sent a malformed answer (not JSON)") from None
    if failed or (isinstance(chunk, dict) and chunk.get("error")):
        raise ChatError(f"the model endpoint failed{_upstream_message(chunk, key)}")
    return chunk


def _choices(chunk: object) -> list[dict[str, Any]]:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return []
    return [choice for choice in choices if isinstance(choice, dict)]


def _texts(chunk: object) -> list[str]:
    """The non-empty content deltas of one chunk; ``ChatError`` when it is no chunk (a
    string, or ``choices`` that is not a list, unless it is the usage chunk)."""
    if not isinstance(chunk, dict):
        raise ChatError("the model endpoint sent a malformed answer (a chunk without choices)")
    if not isinstance(chunk.get("choices"), list):
        if isinstance(chunk.get("usage"), dict):  # the token count at the end: some send
            return []  # it with "choices": null or none (OpenAI: [])
        raise ChatError("the model endpoint sent a malformed answer (a chunk without choices)")
    texts = []
    for choice in _choices(chunk):
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


def _finish_reason(chunk: object) -> str | None:
    for choice in _choices(chunk):
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            return reason
    return None


def configured(base_url: str, api_key: str, model: str) -> bool:
    """Chat needs a model and either a key or a custom (e.g. local) endpoint."""
    return bool(model) and bool(api_key or base_url)


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each image replaced by a line that says one was there, and the text
    parts of a message joined into one string (text-only endpoints such as Groq's take
    nothing else)."""
    changed = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            changed.append(message)
            continue
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                texts.append(IMAGE_LEFT_OUT)
            elif kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:  # a part of another kind: kept, so the message stays a list
                texts = []
                break
        if texts:
            changed.append({**message, "content": "\n\n".join(t for t in texts if t)})
        else:
            changed.append(
                {
                    **message,
                    "content": [
                        {"type": "text", "text": IMAGE_LEFT_OUT}
                        if isinstance(part, dict) and part.get("type") == "image_url"
                        else part
                        for part in content
                    ],
                }
            )
    return changed
