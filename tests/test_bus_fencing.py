"""A frozen provider node (SIGSTOP of its main process) fences itself: its provider process
stops streaming when the lease runs out, before or as the standby takes over, instead of
streaming beside the standby for as long as the node stays frozen (chaos finding F2).
When the node runs again, it restarts the process, which streams nothing: the standby
holds the lease."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psutil
import pytest

from tests import bus_deploy, harness
from tests.bus_deploy import LEASE, SHARED_REDIS
from tests.harness import ServerProcess, WsClient, same_key

CCC = {"type": "data", "source": "counting", "name": "CCC", "interval": "1m", "count": 5}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two nodes and one hub under their own prefix: [node1, node2, hub]."""
    prefix = bus_deploy.new_prefix()

    def env(name: str) -> dict[str, str]:
        return bus_deploy.bus_env(tmp_path, SHARED_REDIS, prefix, name)

    processes: list[ServerProcess] = []
    try:
        processes += bus_deploy.start_all(
            *(partial(bus_deploy.node, env(n), tmp_path, n) for n in ("node1", "node2"))
        )
        processes.append(bus_deploy.hub(env("hub"), tmp_path, "hub"))
        yield processes
    finally:
        for process in processes:
            if process.proc is not None and process.proc.poll() is None:
                os.kill(process.proc.pid, signal.SIGCONT)
            process.stop()


def provider_pid(node: ServerProcess) -> int | None:
    """The pid of the node's provider process (spawned by ``multiprocessing``), if running."""
    assert node.proc is not None
    for child in psutil.Process(node.proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and not stopped_running(child.pid):
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def stopped_running(pid: int) -> bool:
    """Exited: gone, or a zombie its (frozen) parent has not reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "State:\tZ" in status or "State:\tX" in status


async def test_a_frozen_node_stops_its_streams_when_its_lease_runs_out(
    deployment: list[ServerProcess],
) -> None:
    nodes, hub = deployment[:2], deployment[2]
    client = await WsClient.open(hub.ws_url)
    try:
        await client.send(CCC)
        await client.wait_for("data_update", same_key("CCC", "1m"))
        holders = [n for n in nodes if bus_deploy.holds_lease(n)]
        assert len(holders) == 1
        frozen = holders[0]
        standby = next(n for n in nodes if n is not frozen)
        streaming = provider_pid(frozen)
        assert streaming is not None
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            await harness.eventually(
                lambda: bus_deploy.holds_lease(standby), LEASE + 10, "the standby's lease"
            )
            # The frozen node's provider process stopped by itself at the end of the lease.
            await harness.eventually(
                lambda: stopped_running(streaming), LEASE + 5, "the frozen node's provider to stop"
            )
            assert "renewed no lease" in frozen.log_path.read_text()
            mark = len(client.messages)
            await client.wait_for("data_update", same_key("CCC", "1m"), LEASE + 10, mark)
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        # Running again, the node restarts its process, which streams nothing.
        await harness.eventually(
            lambda: provider_pid(frozen) not in (None, streaming), 20, "the new process"
        )
        before = bus_deploy.lines(frozen.env).count("first CCC 1m")
        mark = len(client.messages)
        for _ in range(3):  # updates keep coming, from the standby alone
            mark = len(client.messages)
            await client.wait_for("data_update", same_key("CCC", "1m"), LEASE + 10, mark)
        assert bus_deploy.lines(frozen.env).count("first CCC 1m") == before
        assert bus_deploy.holds_lease(standby) and not bus_deploy.holds_lease(frozen)
    finally:
        await client.close()


async def test_a_provider_process_paused_past_the_lease_does_not_fence_its_healthy_node(
    deployment: list[ServerProcess],
) -> None:
    """Paused itself (swapped out, starved, a debugger), the provider process woke with an
    old deadline while its node's renewals and pings waited unread, and exited: a healthy
    node lost its lease to the standby."""
    nodes, hub = deployment[:2], deployment[2]
    client = await WsClient.open(hub.ws_url)
    try:
        await client.send(CCC)
        await client.wait_for("data_update", same_key("CCC", "1m"))
        holder = next(n for n in nodes if bus_deploy.holds_lease(n))
        pid = provider_pid(holder)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(LEASE + 2)  # time must pass: longer than a lease, paused
        finally:
            os.kill(pid, signal.SIGCONT)
        mark = len(client.messages)
        await client.wait_for("data_update", same_key("CCC", "1m"), LEASE + 10, mark)
        await asyncio.sleep(2)  # time must pass: a fence would come within this
        assert provider_pid(holder) == pid
        assert bus_deploy.holds_lease(holder)
        assert "renewed no lease" not in holder.log_path.read_text()
    finally:
        await client.close()
