"""The deliveries of alerts: a Web Push to the alert's subscription, and webhook calls (the
operator's ``ALERT_WEBHOOK_URL`` and the alert's own), each queued in a
:class:`~backend.alerts.dispatch.Dispatcher` as a task of its owner, so that no delivery
delays streaming and a hanging endpoint never delays the others.

Each delivery is stored first (``alert_deliveries``, through the
:class:`~.alert_journal.AlertJournal`, in the transaction of the firing that made it) and
queued once it is (:meth:`AlertSending.written`); its failed attempts are stored as they
happen, and it is removed once sent or given up (whatever the outcome: 4xx, attempts or
``Retry-After`` exhausted, a push subscription gone, dropped from the backlog). A stop
leaves the rest stored: the next start resumes them (:meth:`AlertSending.resume`) with
their remaining attempts and backoff, under the same limits and checks as new ones. At most
:data:`PENDING_CAP` deliveries are kept per hub worker and none older than
:data:`PENDING_SECONDS` (what goes is logged and counted in
``candlewire_alert_deliveries_dropped_total``, its ``reason`` label: ``backlog``,
``table_full`` or ``too_old``).

Owns the dispatcher, the HTTP client (:class:`~backend.alerts.delivery.Delivery`) and the
deliveries in progress. Not: when an alert fires (``hub.alerting``), how a request is signed
and sent (``backend.alerts.delivery``), the scheduling policy (``backend.alerts.dispatch``),
the writes (``hub.alert_journal``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from backend.alerts.delivery import Delivery, Outcome, Progress, contact_problem
from backend.alerts.destinations import origin
from backend.alerts.dispatch import Dispatcher
from backend.alerts.model import Alert, parse_subscription
from backend.alerts.store import Dropped, PendingDelivery
from backend.alerts.vapid import VapidKeys
from backend.hub.alert_journal import AlertJournal
from backend.hub.metrics import Metrics
from backend.model import intervals
from backend.model.bars import FIELDS, Bar, SeriesId
from backend.settings import Settings

logger = logging.getLogger(__name__)

# Loopback owners are not limited, as every limit keyed by an address is not
# (``backend.access.fairuse``): that is the local user, or a reverse proxy on this machine
# through which every remote client comes.
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

Start = Callable[[Coroutine[Any, Any, None], str], object]
"""Starts a delivery as an owned task (``hub.alerting`` owns them)."""
Gone = Callable[[str], Awaitable[None]]
"""Called with a push endpoint its service said is gone (404, 410)."""

PENDING_CAP = 10_000  # deliveries kept per hub worker (the oldest beyond are dropped)
PENDING_SECONDS = 24 * 3600.0  # a delivery not done by then is dropped (a push's TTL)


class AlertSending:
    """Stores and queues each delivery of an alert; :meth:`open` makes the HTTP client."""

    def __init__(self, settings: Settings, metrics: Metrics, start: Start, gone: Gone) -> None:
        self.settings = settings
        self.metrics = metrics
        self.start = start
        metrics.describe(
            "candlewire_alert_deliveries_dropped_total",
            "alert deliveries dropped, by reason: backlog (too many waited already), "
            "table_full, too_old (the pending deliveries' table)",
        )
        for reason in ("backlog", "table_full", "too_old"):
            metrics.inc("candlewire_alert_deliveries_dropped_total", 0, reason=reason)
        self.gone = gone
        self.dispatcher = Dispatcher(start, self._dropped)
        self.delivery: Delivery | None = None
        self.journal = AlertJournal(self.written, self._given_up, PENDING_CAP)
        self.live: dict[int, PendingDelivery] = {}  # stored, not done yet: by row id
        self._queued: dict[str, int] = {}  # dispatcher job name -> row id, until it runs
        metrics.gauge(
            "candlewire_alert_deliveries_pending",
            lambda: float(len(self.live)),
            "alert deliveries stored and not yet sent or given up (this worker)",
        )

    def open(self, keys: VapidKeys, first_worker: bool = True) -> None:
        """Sign pushes with ``keys``; the first worker says at start if the contact will not
        do for every push service."""
        settings = self.settings
        problem = contact_problem(settings.ALERT_CONTACT)
        if problem is not None and first_worker:
            logger.warning(
                "ALERT_CONTACT %r: %s; Apple's push service (Safari, iOS home-screen apps) "
                "refuses every push signed with it (403 BadJwtToken): set ALERT_CONTACT to a "
                "real mailto: address or https: URL",
                settings.ALERT_CONTACT,
                problem,
            )
        self.delivery = Delivery(
            keys,
            settings.ALERT_CONTACT,
            backoff=settings.ALERT_RETRY_SECONDS,
            public_only=settings.ALERT_PUSH_PUBLIC_ONLY,
        )

    def stop(self) -> None:
        """Start nothing more; the running deliveries are the owner's tasks to cancel (before
        :meth:`close`, so that none fails on a closed session and blames its endpoint)."""
        self.dispatcher.close()

    async def close(self) -> None:
        """Close the HTTP client, once the deliveries are cancelled."""
        self.dispatcher.close()
        if self.delivery is not None:
            await self.delivery.close()
            self.delivery = None

    def push(self, alert: Alert, title: str) -> None:
        """A Web Push of ``title`` to the alert's subscription, if it has one."""
        subscription = alert.subscription
        if subscription is not None:
            body = {
                "subscription": subscription.info(),
                "payload": {"notification": {"title": title}},
            }
            self._store(alert, "push", subscription.endpoint, False, body)

    def webhooks(self, alert: Alert, key: SeriesId, bar: Bar) -> None:
        """The webhook calls of a firing on ``key``'s ``bar``: the operator's and the
        alert's own (only the latter counts against its owner's share of the slots)."""
        body = webhook_body(alert, key, bar)
        for url, trusted in ((self.settings.ALERT_WEBHOOK_URL, True), (alert.webhook, False)):
            if url:
                self._store(alert, "webhook", url, trusted, body)

    def _store(
        self, alert: Alert, kind: str, url: str, trusted: bool, body: dict[str, Any]
    ) -> None:
        """Store a delivery to ``url`` (in the batch of the alert's state): it is queued
        once written (:meth:`written`)."""
        now = time.time()
        owner = None if trusted else _owner(alert)
        self.journal.deliver(
            PendingDelivery(alert.id, kind, url, trusted, owner, body, now, 0, now)
        )

    def written(self, deliveries: list[PendingDelivery]) -> None:
        """These deliveries are stored: queue them."""
        for delivery in deliveries:
            self._send(delivery)

    def resume(self, deliveries: list[PendingDelivery]) -> None:
        """The deliveries stored before this start: each goes on when its next attempt is
        due (those waiting for it hold no place in the dispatcher's backlog meanwhile). A
        call to the operator's webhook goes to the ``ALERT_WEBHOOK_URL`` set now
        (:meth:`_retarget`)."""
        now = time.time()
        for delivery in self._retarget(deliveries):
            wait = delivery.next_at - now
            if wait > 0:
                self.live[delivery.id] = delivery
                self.start(self._later(delivery, wait), f"{_name(delivery)} resumes")
            else:
                self._send(delivery)

    def _retarget(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        """The stored deliveries, those to the operator's webhook (``trusted``: never
        restricted) sent to the ``ALERT_WEBHOOK_URL`` of this start, or given up where none
        is set: the address they were stored with is no longer trusted once the setting
        changed."""
        url = self.settings.ALERT_WEBHOOK_URL
        kept, moved, dropped = [], 0, 0
        for delivery in deliveries:
            if delivery.kind == "webhook" and delivery.trusted and delivery.url != url:
                if not url:
                    self.journal.done(delivery.id)
                    dropped += 1
                    continue
                delivery.url = url
                moved += 1
            kept.append(delivery)
        if moved or dropped:
            logger.info(
                "alerts: ALERT_WEBHOOK_URL changed since the last run: %d pending calls go to"
                " the one set now, %d given up (none set)",
                moved,
                dropped,
            )
        return kept

    async def _later(self, delivery: PendingDelivery, wait: float) -> None:
        await asyncio.sleep(wait)
        if delivery.id in self.live:  # not dropped meanwhile
            self._send(delivery)

    def _send(self, delivery: PendingDelivery) -> None:
        """Queue a stored delivery for its owner (who pays the alert's quota; ``None`` for
        the operator's webhook): bounded and fair (``backend.alerts.dispatch``)."""
        self.live[delivery.id] = delivery
        name = _name(delivery)
        self._queued[name] = delivery.id
        job = functools.partial(self._run, delivery, name)
        self.dispatcher.submit(origin(delivery.url), name, job, delivery.owner)

    def _dropped(self, destination: str, name: str) -> None:
        """The dispatcher's backlog dropped this waiting job: it is given up."""
        delivery = self.live.get(self._queued.pop(name, 0))
        if delivery is not None:
            self._finish(delivery)
        self.metrics.inc("candlewire_alert_deliveries_dropped_total", reason="backlog")
        logger.warning(
            "%s to %s dropped: %d deliveries wait already (the oldest of the busiest "
            "destination goes first)",
            name,
            destination,
            self.dispatcher.backlog,
        )

    def _given_up(self, dropped: Dropped) -> None:
        """The store's bound dropped these deliveries: they are not tried again."""
        for delivery_id in dropped.ids:
            self.live.pop(delivery_id, None)
        count = len(dropped.ids)
        self.metrics.inc("candlewire_alert_deliveries_dropped_total", count, reason=dropped.reason)
        why = (
            f"older than {PENDING_SECONDS / 3600:.0f} h"
            if dropped.reason == "too_old"
            else f"over {self.journal.cap} kept for this worker, the oldest first"
        )
        logger.warning("alerts: %d pending deliveries dropped (%s)", count, why)

    async def _run(self, delivery: PendingDelivery, name: str) -> None:
        self._queued.pop(name, None)
        if delivery.id not in self.live or self.delivery is None:
            return
        progress = Progress(
            delivery.attempts,
            functools.partial(self._retrying, delivery),
            lambda: delivery.id in self.live,
        )
        try:
            outcome = await self._attempt(self.delivery, delivery, progress)
        except asyncio.CancelledError:
            raise  # a stop: it stays stored, and goes on at the next start
        except Exception:
            self._finish(delivery)  # a fault of ours: not tried again at every start
            raise
        self._finish(delivery)
        if outcome is Outcome.GONE:
            await self.gone(delivery.url)

    async def _attempt(
        self, sender: Delivery, delivery: PendingDelivery, progress: Progress
    ) -> Outcome:
        body = delivery.body
        if delivery.kind == "webhook":
            return await sender.webhook(delivery.url, body, delivery.trusted, progress)
        subscription = parse_subscription(body.get("subscription"))
        if subscription is None or not isinstance(body.get("payload"), dict):
            logger.warning("%s: not sent, its stored subscription is unusable", _name(delivery))
            return Outcome.FAILED
        return await sender.push(subscription, body["payload"], progress)

    def _retrying(self, delivery: PendingDelivery, made: int, pause: float) -> None:
        delivery.attempts = made
        delivery.next_at = time.time() + pause
        if delivery.id in self.live:
            self.journal.retry(delivery.id, made, delivery.next_at)

    def _finish(self, delivery: PendingDelivery) -> None:
        """Sent or given up: no longer stored."""
        if self.live.pop(delivery.id, None) is not None:
            self.journal.done(delivery.id)


def _name(delivery: PendingDelivery) -> str:
    """How logs and the dispatcher name a delivery (unique: the row id is in it)."""
    return f"alert {delivery.alert_id} {delivery.kind} (delivery {delivery.id})"


def _owner(alert: Alert) -> str | None:
    """Whose share of the delivery slots an alert's deliveries take: who pays its quota
    (``"client <id>"`` with keys, else the address); ``None`` (no share) for loopback."""
    return None if alert.peer in LOOPBACK else alert.peer


def webhook_body(alert: Alert, key: SeriesId, bar: Bar) -> dict[str, Any]:
    """What a webhook receives: the alert, its rules, the bar that fired it, the time."""
    return {
        "alert": {"id": alert.id, "message": alert.message, "owner": alert.owner},
        "rules": alert.spec["rules"],
        "operators": alert.spec["operators"],
        "series": {"source": key.source, "name": key.name, "interval": key.interval},
        "bar": {"date": intervals.format_date(bar[0]), **dict(zip(FIELDS, bar[1:], strict=True))},
        "fired": alert.fired,
        "time": intervals.format_date(int(time.time())),
    }
