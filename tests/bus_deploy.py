"""Deployments over the Redis bus for the end-to-end tests: provider nodes and hubs as real
``server.py`` processes (``--role providers`` / ``--role hub``), each test module under its
own ``BUS_PREFIX`` so that tests never see each other's keys on a shared Redis, and a
private ``redis-server`` on a free port for tests that stop Redis.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests import harness
from tests.harness import ServerProcess, base_env

SHARED_REDIS = "redis://127.0.0.1:6379/0"
LEASE = 1.5
LINGER = 1.0


def bus_env(tmp: Path, url: str, prefix: str, name: str, **extra: str) -> dict[str, str]:
    """The environment of one process of a deployment; ``name`` keeps its files apart."""
    return base_env(
        tmp,
        PROVIDERS="counting",
        BUS_URL=url,
        BUS_PREFIX=prefix,
        BUS_LEASE_SECONDS=str(LEASE),
        STREAM_LINGER_SECONDS=str(LINGER),
        HISTORY_TIMEOUT="5",
        DB=str(tmp / f"{name}.sqlite3"),
        CANDLEWIRE_TEST_LOG=str(tmp / f"{name}.log"),
        **extra,
    )


def new_prefix() -> str:
    return f"cwtest-{uuid.uuid4().hex[:10]}"


def lines(env: dict[str, str]) -> list[str]:
    """The hook calls the counting provider logged in this process (the fake exchange)."""
    path = Path(env["CANDLEWIRE_TEST_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def node(env: dict[str, str], tmp: Path, name: str) -> ServerProcess:
    return ServerProcess(env, tmp / f"{name}.server.log", args=("--role", "providers")).start()


def hub(
    env: dict[str, str], tmp: Path, name: str, *args: str, symbols: Path | None = None
) -> ServerProcess:
    """A hub whose symbol database was filled from the nodes (``populate.py --from-bus``),
    or copied from ``symbols`` (a database filled so)."""
    if symbols is None:
        result = harness.populate(env, "--from-bus")
        assert result.returncode == 0, result.stderr
    else:
        copy_database(symbols, Path(env["DB"]))
    return ServerProcess(env, tmp / f"{name}.server.log", args=("--role", "hub", *args)).start()


def copy_database(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def start_all(*starts: Callable[[], ServerProcess]) -> list[ServerProcess]:
    """Start processes side by side (each takes seconds to import and start)."""
    with ThreadPoolExecutor(len(starts)) as pool:
        return list(pool.map(lambda start: start(), starts))


def holds_lease(process: ServerProcess) -> bool:
    try:
        health: dict[str, Any] = process.get("/health")
    except OSError:
        return False
    return bool(health["leases"]["counting"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of the test's own (never the shared one), on a fixed free port so
    that a restart keeps its URL; it keeps nothing on disk."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed (README, Development)"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.tmp)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        harness.until(self.answers, 10, "the private redis-server to answer")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
