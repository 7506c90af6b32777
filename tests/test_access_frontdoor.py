"""Out of file descriptors: the server says so once in a while instead of flooding the log,
and serves again when connections are closed.

The server runs with a low descriptor limit (``RLIMIT_NOFILE``, inherited from this
process while it starts) and is sent more connections than it can accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.access.frontdoor import GuardedHttp
from tests.harness import ServerProcess, base_env, eventually, populate, seconds

FD_LIMIT = 160
CONNECTIONS = 400


@contextlib.contextmanager
def descriptor_limit(soft: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fds")
    env = base_env(tmp, PROVIDERS="counting", HTTP_HEADER_TIMEOUT="30")
    assert populate(env).returncode == 0
    running = ServerProcess(env, tmp / "server.log")
    with descriptor_limit(FD_LIMIT):
        running.start()
    yield running
    running.stop()


async def test_running_out_of_descriptors_logs_a_line_not_a_flood_and_recovers(
    server: ServerProcess,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 100
    can_raise = hard == resource.RLIM_INFINITY or wanted <= hard
    if soft < wanted and can_raise:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # this test process only
    elif soft < wanted:
        message = f"this process may not open {wanted} sockets (hard limit {hard})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    host, port = server.url.removeprefix("http://").split(":")
    logged_before = len(log_lines(server))
    opened = []
    for _ in range(CONNECTIONS):
        _, writer = await asyncio.open_connection(host, int(port))  # the backlog accepts them
        opened.append(writer)

    def complained() -> bool:
        return any("cannot accept connections" in line for line in log_lines(server))

    await eventually(complained, 15, "a warning about accepting")
    await asyncio.sleep(seconds(2))  # not a synchronisation: a flood would show meanwhile
    for writer in opened:
        writer.close()
    await eventually(lambda: _healthy(server), 15, "serving again")
    server.stop()  # pending accept retries outlive the socket: the shutdown stays quiet too
    lines = log_lines(server)[logged_before:]
    assert sum("cannot accept" in line for line in lines) <= 2, lines[:5]
    assert not any("Traceback" in line for line in lines), lines[:20]
    assert len(lines) < 40, lines[:40]


def log_lines(server: ServerProcess) -> list[str]:
    return Path(server.log_path).read_text().splitlines()


def _healthy(server: ServerProcess) -> bool:
    try:
        return bool(server.get("/health")["status"] == "ok")
    except OSError:
        return False


def test_the_head_ends_at_its_blank_line_also_when_it_straddles_two_reads() -> None:
    guard = object.__new__(GuardedHttp)  # the counting alone, without a connection
    guard._head_tail = b""
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r"
    assert guard._head_part(first) == len(first)  # no end yet
    assert guard._head_part(b"\nbody bytes") == 1  # the head's last byte; then the body
    guard._head_tail = b""
    head = b"GET / HTTP/1.1\r\n\r\n"
    assert guard._head_part(head + head + b"body") == len(head)  # the pipelined one is not
