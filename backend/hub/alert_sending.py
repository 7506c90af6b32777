"""The deliveries of alerts: a Web Push to the alert's subscription, and webhook calls (the
operator's ``ALERT_WEBHOOK_URL`` and the alert's own), each queued in a
:class:`~backend.alerts.dispatch.Dispatcher` as a task of its owner, so that no delivery
delays streaming and a hanging endpoint never delays the others.

Owns the dispatcher and the HTTP client (:class:`~backend.alerts.delivery.Delivery`). Not:
when an alert fires (``hub.alerting``), how a request is signed and sent
(``backend.alerts.delivery``), the scheduling policy (``backend.alerts.dispatch``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from backend.alerts.delivery import Delivery, Outcome
from backend.alerts.destinations import origin
from backend.alerts.dispatch import Dispatcher, Job
from backend.alerts.model import Alert, Subscription
from backend.alerts.vapid import VapidKeys
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


class AlertSending:
    """Queues each delivery of an alert; :meth:`open` makes the HTTP client."""

    def __init__(self, settings: Settings, metrics: Metrics, start: Start, gone: Gone) -> None:
        self.settings = settings
        self.metrics = metrics
        self.gone = gone
        self.dispatcher = Dispatcher(start, self._dropped)
        self.delivery: Delivery | None = None

    def open(self, keys: VapidKeys) -> None:
        settings = self.settings
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
            job = functools.partial(self._push, subscription, title)
            self._send(subscription.endpoint, f"alert {alert.id} push", job, _owner(alert))

    def webhooks(self, alert: Alert, key: SeriesId, bar: Bar) -> None:
        """The webhook calls of a firing on ``key``'s ``bar``: the operator's and the
        alert's own (only the latter counts against its owner's share of the slots)."""
        body = webhook_body(alert, key, bar)
        for url, trusted in ((self.settings.ALERT_WEBHOOK_URL, True), (alert.webhook, False)):
            if url:
                job = functools.partial(self._webhook, url, body, trusted)
                owner = None if trusted else _owner(alert)
                self._send(url, f"alert {alert.id} webhook", job, owner)

    def _send(self, url: str, name: str, job: Job, owner: str | None) -> None:
        """Queue a delivery to ``url`` for ``owner`` (who pays the alert's quota; ``None``
        for the operator's webhook): bounded and fair (``backend.alerts.dispatch``)."""
        self.dispatcher.submit(origin(url), name, job, owner)

    def _dropped(self, destination: str, name: str) -> None:
        self.metrics.inc("candlewire_alert_deliveries_dropped_total")
        logger.warning(
            "%s to %s dropped: %d deliveries wait already (the oldest of the busiest "
            "destination goes first)",
            name,
            destination,
            self.dispatcher.backlog,
        )

    async def _push(self, subscription: Subscription, title: str) -> None:
        if self.delivery is None:
            return
        outcome = await self.delivery.push(subscription, {"notification": {"title": title}})
        if outcome is Outcome.GONE:
            await self.gone(subscription.endpoint)

    async def _webhook(self, url: str, body: dict[str, Any], trusted: bool) -> None:
        if self.delivery is not None:
            await self.delivery.webhook(url, body, trusted)


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
