"""What the alerts write to the store, in order and off the event loop: armed states, expired
alerts and pending deliveries (a :class:`~backend.alerts.store.Batch`).

Changes gather on the event loop into one batch; one writer task hands it to a thread that
writes it in one transaction (``AlertStore.commit``) while the next batch gathers, so a
burst of firings costs the loop a few dict and list operations each, and the store one
transaction. A firing's fired state and its deliveries go in the same batch, and a delivery
starts only once its batch is written (``on_written``): whatever a SIGKILL interrupts is
either stored whole (the alert stays fired; its deliveries resume at the next start) or not
stored and not sent (the alert, still armed, fires again at its next evaluation). A batch
the store does not take now (locked past its wait, a full disk) goes again with the next
one after :data:`RETRY_SECONDS`; meanwhile at most ``cap`` new deliveries wait for it (the
oldest beyond are dropped, reported through ``on_dropped`` once a batch is written). At a
stop, :meth:`AlertJournal.close` waits for the batch being written and writes the rest.

Owns the batch and the writer. Not: when an alert changes (``hub.alerting``), what a
delivery is and when it is done (``hub.alert_sending``), SQL (``backend.alerts.store``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from backend.alerts.store import AlertStore, Batch, Dropped, PendingDelivery
from backend.errors import StorageError
from backend.write_health import WriteHealth

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # before a batch the store did not take is tried again


class AlertJournal:
    """The alerts' writes; :meth:`open` gives it the store, :meth:`run` is the writer task."""

    def __init__(
        self,
        on_written: Callable[[list[PendingDelivery]], None],
        on_dropped: Callable[[Dropped], None],
        cap: int,
    ) -> None:
        self.on_written = on_written
        self.on_dropped = on_dropped
        self.cap = cap
        self.store: AlertStore | None = None
        self.worker = 1
        self._batch = Batch()
        self._unstored = 0  # new deliveries the batch had no room for
        self._wake = asyncio.Event()
        # the batch being written and its thread's future, if any
        self._writing: tuple[Batch, asyncio.Future[list[Dropped]]] | None = None
        self.writes = WriteHealth(
            "alert store",
            "alert changes wait in memory, and a firing's pushes and webhook calls go out once"
            " it is stored (its socket notification went at once)",
            logger,
        )

    def open(self, store: AlertStore, worker: int) -> None:
        self.store = store
        self.worker = worker
        self.writes.path = store.path

    # ------------------------------------------------------------------ changes (the loop)

    def state(self, alert_id: int, armed: bool, fired: int) -> None:
        self._batch.states[alert_id] = (armed, fired)
        self._wake.set()

    def delete(self, alert_ids: list[int]) -> None:
        self._batch.deleted.update(alert_ids)
        self._wake.set()

    def deliver(self, delivery: PendingDelivery) -> None:
        """Store ``delivery``; it is handed to ``on_written`` once it is."""
        new = self._batch.new
        new.append(delivery)
        if len(new) > self.cap:  # the store has not taken a batch for a while, or a burst
            new.pop(0)
            self._unstored += 1  # reported once the batch is written (one log line)
        self._wake.set()

    def retry(self, delivery_id: int, made: int, next_at: float) -> None:
        self._batch.retries[delivery_id] = (made, next_at)
        self._wake.set()

    def done(self, delivery_id: int) -> None:
        self._batch.retries.pop(delivery_id, None)
        self._batch.done.add(delivery_id)
        self._wake.set()

    def prune(self, older_than: float) -> None:
        """Drop this worker's deliveries made before ``older_than`` (epoch seconds)."""
        self._batch.older_than = max(self._batch.older_than, older_than)
        self._wake.set()

    # ------------------------------------------------------------------ writing

    async def run(self) -> None:
        """The writer task: each batch in its turn, in a thread. Cancelled (a stop), the
        thread goes on with its batch: :meth:`close` waits for it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, Batch()  # taken on the loop, which writes it
            future = asyncio.ensure_future(asyncio.to_thread(self._commit, batch))
            self._writing = (batch, future)
            try:
                dropped = await asyncio.shield(future)
            except StorageError as exc:
                self._writing = None
                self._batch = self._batch.after(batch)
                self.writes.failed(
                    exc.__cause__ or exc, lambda: f"{len(self._batch.new)} deliveries waiting"
                )
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()
                continue
            self._writing = None
            self.writes.succeeded()
            self._written(batch, dropped)

    def _commit(self, batch: Batch) -> list[Dropped]:
        if self.store is None:
            return []
        return self.store.commit(batch, self.worker, self.cap)

    def _written(self, batch: Batch, dropped: list[Dropped]) -> None:
        if self._unstored:
            dropped = [Dropped((0,) * self._unstored, "table_full"), *dropped]
            self._unstored = 0
        gone = {i for d in dropped for i in d.ids}
        for each in dropped:
            self.on_dropped(each)
        self.on_written([d for d in batch.new if d.id and d.id not in gone])

    async def write_now(self, batch: Batch) -> None:
        """Write ``batch`` now, outside the writer's turn (a start, before it runs)."""
        self._written(batch, await asyncio.to_thread(self._commit, batch))

    async def close(self) -> None:
        """After the writer task was cancelled: wait for the batch its thread writes, then
        write the rest here (deliveries stored now are resumed at the next start)."""
        if self._writing is not None:
            batch, future = self._writing
            self._writing = None
            await asyncio.gather(future, return_exceptions=True)
            if not future.cancelled() and future.exception() is not None:
                self._batch = self._batch.after(batch)
        rest, self._batch = self._batch, Batch()
        if rest:
            try:
                self._commit(rest)
            except StorageError as exc:
                logger.warning("alerts: the last changes were not stored (%s)", exc)
