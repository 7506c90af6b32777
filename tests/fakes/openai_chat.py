"""A fake OpenAI-compatible Chat Completions endpoint on loopback that streams chunks.

``POST /v1/chat/completions`` with ``stream: true`` answers Server-Sent Events: one
``chat.completion.chunk`` per entry of :attr:`FakeChat.chunks` (``delay`` seconds apart),
then ``data: [DONE]``. Requests are kept in :attr:`FakeChat.requests`; ``status`` makes it
answer that HTTP error instead. The API key seen is checked against ``api_key``. ``raw``
(SSE event bytes) is streamed instead of the chunks, then ``[DONE]``; ``keepalive`` keeps
the stream open with SSE comments only, until the client goes away (:attr:`open_streams`
counts the streams not ended yet); ``cut`` sends the chunks, then drops the connection inside
the chunked body (no ``finish_reason``, no ``[DONE]``, no terminating chunk); ``whole``
(a content type and a body) answers that instead of a stream, as endpoints that ignore
``stream`` do. ``text_only`` (an error text) refuses a request with an ``image_url`` part
with 400 ``{"error": <text>}``, as Ollama answers for a model without vision; ``url`` is the
server's root (no ``/v1``). ``POST /openai/deployments/<name>/chat/completions`` answers as
Azure OpenAI's classic endpoint does: 404 "Resource not found" without an ``api-version``
query, 401 without the key in an ``api-key`` header (the deployment is the model).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer


class FakeChat:
    def __init__(self, chunks: list[str], delay: float = 0.0, api_key: str = "test-key") -> None:
        self.chunks = chunks
        self.delay = delay
        self.api_key = api_key
        self.status = 200
        self.raw: list[bytes] | None = None
        self.keepalive = False
        self.cut = False
        self.whole: tuple[str, bytes] | None = None  # (content type, body) instead of a stream
        self.text_only: str | None = None
        self.open_streams = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # of the requests to the Azure route
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/openai/deployments/{name}/chat/completions", self._azure)
        self._server = LoopbackServer(app)

    def __enter__(self) -> FakeChat:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        if "api-version" not in request.query:
            error = {"code": "404", "message": "Resource not found"}
            return web.json_response({"error": error}, status=404)
        if request.headers.get("api-key") != self.api_key:
            message = "Access denied due to invalid subscription key or wrong API endpoint."
            return web.json_response({"error": {"code": "401", "message": message}}, status=401)
        return await self._complete(request, checked=True)

    async def _complete(self, request: web.Request, checked: bool = False) -> web.StreamResponse:
        if not checked and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.requests.append(body)
        if self.status != 200:
            message = f"failed with {self.status}"
            return web.json_response({"error": {"message": message}}, status=self.status)
        if self.text_only is not None and _has_image(body):
            return web.json_response({"error": self.text_only}, status=400)
        if self.whole is not None:
            kind, data = self.whole
            return web.Response(body=data, headers={"Content-Type": kind})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            if self.cut and request.transport is not None:
                for index, text in enumerate(self.chunks):
                    await response.write(
                        _event(body.get("model", "m"), index, {"content": text}, None)
                    )
                request.transport.abort()
                return response
            await self._stream(response, body)
        finally:
            self.open_streams -= 1
        return response

    async def _stream(self, response: web.StreamResponse, body: dict[str, Any]) -> None:
        while self.keepalive:  # until the client closes the connection
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(0.2)
        if self.raw is not None:
            for event in self.raw:
                await response.write(event)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return
        for index, text in enumerate(self.chunks):
            if self.delay:
                await asyncio.sleep(self.delay)
            await response.write(_event(body.get("model", "m"), index, {"content": text}, None))
        await response.write(_event(body.get("model", "m"), len(self.chunks), {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


def _event(model: str, index: int, delta: dict[str, Any], finish: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _has_image(body: dict[str, Any]) -> bool:
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            return True
    return False
