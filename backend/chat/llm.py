"""One streamed answer from an OpenAI-compatible Chat Completions endpoint (``openai``).

Configured by ``LLM_BASE_URL``, ``LLM_API_KEY`` and ``LLM_MODEL``; :func:`configured` says
whether chat is available at all. Upstream failures, malformed events and chunks of another
shape than a ``chat.completion.chunk`` become :class:`ChatError` with a short text for the
user (never the key). The whole turn's deadline is the caller's (``backend.hub.chatting``);
the stream is closed however the iteration ends.

``openai`` (about 0.6 s of imports) is imported when the first client is made: a hub
without chat, and every provider process, never pays for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from backend.errors import CandlewireError

if TYPE_CHECKING:
    import openai

TIMEOUT_SECONDS = 120.0
MAX_TOKENS = 2_000
# An answer with no text, by why the model stopped: said to the user instead of nothing.
NO_TEXT = {
    "tool_calls": "the model asked to call tools instead of answering; this chat offers none",
    "function_call": "the model asked to call a function instead of answering",
    "content_filter": "the model's answer was withheld by its content filter",
    "length": "the model ran out of tokens before it wrote any text",
}


class ChatError(CandlewireError):
    """The model could not answer; the message is safe to show."""


class Llm:
    """A client for one endpoint and model."""

    def __init__(
        self, base_url: str, api_key: str, model: str, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        import openai  # deferred: see the module docstring

        self.model = model
        self._client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            base_url=base_url or None,
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=1,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """The answer's non-empty content deltas, in order."""
        import openai  # imported by __init__ already: a lookup

        try:
            chunks = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                temperature=0,
                max_tokens=MAX_TOKENS,
            )
            if not isinstance(chunks, openai.AsyncStream):
                raise ChatError("the model endpoint did not stream its answer")
            said, reason = False, None
            try:
                async for chunk in chunks:
                    for text in _texts(chunk):
                        said = True
                        yield text
                    reason = _finish_reason(chunk) or reason
            finally:
                await chunks.close()
            if not said and reason in NO_TEXT:
                raise ChatError(NO_TEXT[reason])
        except openai.APIStatusError as exc:
            raise ChatError(f"the model endpoint answered HTTP {exc.status_code}") from exc
        except openai.APIError as exc:
            raise ChatError(f"the model endpoint failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # an event that is no JSON (json.JSONDecodeError)
            raise ChatError("the model endpoint sent a malformed answer (not JSON)") from exc


def _texts(chunk: object) -> list[str]:
    """The non-empty content deltas of one chunk; ``ChatError`` when it is no chunk (a
    string, or ``choices`` that is not a list)."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise ChatError("the model endpoint sent a malformed answer (a chunk without choices)")
    texts = []
    for choice in choices:
        text = getattr(getattr(choice, "delta", None), "content", None)
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


def _finish_reason(chunk: object) -> str | None:
    for choice in getattr(chunk, "choices", None) or ():
        reason = getattr(choice, "finish_reason", None)
        if isinstance(reason, str):
            return reason
    return None


def configured(base_url: str, api_key: str, model: str) -> bool:
    """Chat needs a model and either a key or a custom (e.g. local) endpoint."""
    return bool(model) and bool(api_key or base_url)
