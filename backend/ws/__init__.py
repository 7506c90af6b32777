"""The ``/websocket/`` transport: accepting sockets and writing frames to them.

Owns: ``entrance`` (serves ``/websocket/`` ahead of FastAPI), ``endpoint`` (one client's
receive loop: frames in, hub calls, replies out) and ``writers`` (the fast writer on
uvicorn's transport and the portable one on any ASGI server).
May import: ``hub``, ``wire``, ``model``, ``runtime``, ``settings``, ``errors``, ``logs``.
"""
