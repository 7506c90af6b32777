"""Start Candlewire: the provider processes and the FastAPI WebSocket hub (uvicorn).

    python server.py [--host HOST] [--port PORT]

``--port 0`` picks a free port; the URL actually listened on is printed either way.
SIGINT/SIGTERM stop the hub and every provider process cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

import uvicorn

from backend import logs
from backend.errors import ConfigError
from config import Settings, load_settings

logger = logging.getLogger("candlewire.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Candlewire market-data server.")
    parser.add_argument("--host", help="interface to listen on (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000; 0 = any free)")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    from backend.app import create_app

    return uvicorn.Config(
        create_app(settings),
        loop="auto",
        http="auto",
        ws="websockets-sansio",  # backend/socket_writer.py writes to it directly
        ws_max_size=settings.MAX_FRAME_BYTES,
        lifespan="on",
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("HOST", args.host), ("PORT", args.port)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"candlewire: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.LOG_LEVEL)
    try:
        sock = bind(settings.HOST, settings.PORT)
    except OSError as exc:
        print(
            f"candlewire: cannot listen on {settings.HOST}:{settings.PORT}: {exc}", file=sys.stderr
        )
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Candlewire listening on http://{shown}:{port}", flush=True)
    server = uvicorn.Server(uvicorn_config(settings))
    # The standard asyncio loop, deliberately: under uvloop the provider pipes read with
    # add_reader stalled now and then (a provider killed for "no heartbeat").
    asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
