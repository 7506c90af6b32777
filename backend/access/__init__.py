"""Access control and fair use: who may connect and how much each client may cost.

``credentials`` (API keys and JWTs -> an :class:`~.identity.Identity`), ``origins`` (the
WebSocket ``Origin`` allowlist), ``fairuse`` (connections, request rates and the upstream
history budget, per client and per address), ``guard`` (the ASGI middleware and the
WebSocket gate that apply them) and ``frontdoor`` (uvicorn's HTTP protocol with a header
timeout and size limit, and a quiet accept-error handler). README, "Security".
"""
