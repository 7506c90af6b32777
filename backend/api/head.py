"""HEAD on every GET route: the app answers a HEAD request as it would the GET, without the
body (RFC 9110 9.3.2), so that monitors probing ``/metrics`` or ``/udf/config`` with HEAD see
the route exist (FastAPI's routes take only the methods they declare, and a HEAD on one of
them would otherwise fall through to the static files' 404).

:class:`HeadAsGet` passes the request on as a GET and drops the body from what goes back;
the headers, ``content-length`` included, are the GET's.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: HEAD is served as GET, with no body sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a streamed body: only its end goes out
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)
