"""What the hub needs of the provider processes: the handles it sends commands through.

The real :class:`backend.runtime.supervisor.Supervisor` and its ``ProviderProcess`` satisfy
these protocols; unit tests pass a fake instead, so the hub can be driven without processes.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from backend.model.bars import Bar
from backend.runtime.messages import Command, WireEvent

if TYPE_CHECKING:
    from backend.settings import Settings


class ProviderHandle(Protocol):
    """One provider process as the hub uses it."""

    persist: bool
    budgeted: bool  # its history calls count against the fair-use budgets
    last_update: float | None

    def send(self, command: Command) -> None:
        """Queue a command for the process; never blocks (dropped while it is down)."""

    async def wait_ready(self, timeout: float) -> bool: ...

    async def get_history(
        self, symbol: str, interval: str, start: str, end: str, count: int, timeout: float
    ) -> list[Bar]: ...

    def health(self) -> dict[str, Any]: ...


class ProviderSet(Protocol):
    """Every provider of the hub, by registry key."""

    @property
    def providers(self) -> Mapping[str, ProviderHandle]: ...

    def get(self, key: str) -> ProviderHandle | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class ReportsBus(Protocol):
    """A provider set reached over the Redis bus (``backend.bus``): its state for
    ``/health`` (``state`` is ``up`` or ``down``, ``reason`` says why it is down)."""

    def bus_health(self) -> dict[str, Any]: ...


EventSink = Callable[[str, list[WireEvent]], None]
ReadySink = Callable[[str], None]
# (settings, on_events, on_ready) -> the providers; the default is the real Supervisor.
ProviderSetFactory = Callable[["Settings", EventSink, ReadySink], ProviderSet]
