"""One streamed answer from an OpenAI-compatible Chat Completions endpoint (``openai``).

Configured by ``LLM_BASE_URL``, ``LLM_API_KEY`` and ``LLM_MODEL``; :func:`configured` says
whether chat is available at all. Upstream failures become :class:`ChatError` with a short
text for the user (never the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from backend.errors import CandlewireError

TIMEOUT_SECONDS = 120.0
MAX_TOKENS = 2_000


class ChatError(CandlewireError):
    """The model could not answer; the message is safe to show."""


class Llm:
    """A client for one endpoint and model."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.model = model
        self._client = openai.AsyncOpenAI(
            base_url=base_url or None,
            api_key=api_key or "unused",
            timeout=TIMEOUT_SECONDS,
            max_retries=1,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """The answer's non-empty content deltas, in order."""
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
            async for chunk in chunks:
                for choice in chunk.choices:
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        yield text
        except openai.APIStatusError as exc:
            raise ChatError(f"the model endpoint answered HTTP {exc.status_code}") from exc
        except openai.APIError as exc:
            raise ChatError(f"the model endpoint failed: {type(exc).__name__}") from exc


def configured(base_url: str, api_key: str, model: str) -> bool:
    """Chat needs a model and either a key or a custom (e.g. local) endpoint."""
    return bool(model) and bool(api_key or base_url)
