"""Alerts at the hub: ``vapid_public_key``, ``alert``, ``alerts``, ``alert_delete``, and the
evaluation of every live alert on the bars the hub receives.

The alerts hold their series as hub subscriber :data:`OWNER` (client ids start at 1) with a
bar listener, so a key nobody charts is streamed for them and a charted key is not streamed
twice. Every update of a key's newest bar evaluates that key's alerts (spec 3.4); a firing
sends a ``notification`` to the creating socket while it is connected and hands the Web
Push and webhook deliveries to :mod:`.alert_sending` (owned tasks, bounded overall, per
destination and per owner, a bounded backlog), so no delivery ever delays streaming and a
hanging endpoint never delays the others. Armed state changes, expired alerts and the
deliveries are written to SQLite by one writer (:mod:`.alert_journal`), in order, a
firing's state and its deliveries in one transaction before any of them is attempted; at a
start the stored deliveries of this worker resume.

Hub workers (``--workers N``, one ``DB`` file): each stored alert is evaluated by exactly
one worker (:class:`Worker`): the one that created it, until the next start of the hub,
when worker ``k`` resumes the stored alerts with ``id % N == k - 1``. A worker started
again alone (the others running) resumes the alerts its previous process evaluated, and
no other: each alert notes its worker and the hub's run (``AlertStore.claim``). A stored
delivery is resumed by the worker that stored it (its process is the one starting again).
With N > 1, ``alerts`` and ``/api/alerts`` read the store, and a deletion answered by one
worker is done in the store and noted for the worker evaluating the alert, which drops it
at its next sweep (within ``SWEEP_SECONDS``). The daily quota is counted in the store, so
it holds across workers.

Owns the live alerts, their subscriptions and the tasks of their deliveries. Not: parsing
(``backend.alerts.model``), semantics (``backend.alerts.evaluate``), storage, how a
delivery is queued and sent (:mod:`.alert_sending`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend import tasks
from backend.alerts.evaluate import LatestBars, Step, advance, step
from backend.alerts.model import (
    Alert,
    parse_alert,
    reads_indicators,
    series_of,
)
from backend.alerts.store import AlertStore, Batch, Row
from backend.alerts.vapid import VapidKeys
from backend.errors import IndicatorError, ProtocolError, ProviderError, StorageError
from backend.hub.alert_sending import PENDING_SECONDS, AlertSending
from backend.hub.clients import Client
from backend.indicators.rules import (
    Operand,
    Pair,
    RuleSet,
    evaluate,
    parse_rule_set,
)
from backend.indicators.scanner import bind_rules, symbol_values
from backend.model.bars import Bar, SeriesId
from backend.wire import protocol

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

MAX_ALERT_ID = 2**63 - 1  # SQLite's largest integer: no alert has a larger id
OWNER = 0  # the subscriber id of the alerts (hub clients count from 1)
LANE = ("alerts",)
SWEEP_SECONDS = 1.0
COMPUTES_AT_ONCE = 4  # alerts on indicators computing at once (CPU, off the hot path)
MAX_LISTED = 1_000
FIRING_LOG_SECONDS = 60.0  # an alert's firings are logged at INFO at most once per this time
TOMBSTONE_SECONDS = 60.0  # a deletion note nobody took by then is dropped (its worker is gone)
PRUNE_SECONDS = 60.0  # how often deliveries older than PENDING_SECONDS are looked for


@dataclass(frozen=True, slots=True)
class Worker:
    """Which hub worker this process is: ``index`` (1..``count``) of ``count``, in ``run``
    (one start of the hub: its workers share it, and so does a worker started again alone;
    by default a run of its own)."""

    index: int = 1
    count: int = 1
    run: str = field(default_factory=lambda: uuid.uuid4().hex)

    def resumes(self, alert_id: int) -> bool:
        """Whether this worker evaluates the stored alert ``alert_id`` after a start."""
        return alert_id % self.count == self.index - 1

    @property
    def share(self) -> tuple[int, int]:
        """``(remainder, modulus)`` of the ids this worker resumes (``AlertStore.active``)."""
        return self.index - 1, self.count

    @property
    def mine(self) -> tuple[int, str]:
        """How the store notes the alerts this worker evaluates in this run."""
        return self.index, self.run


class _Listener:
    def __init__(self, alerting: Alerting) -> None:
        self.alerting = alerting

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        self.alerting.on_bar(key, bar)


class Alerting:
    """The live alerts of one hub; :meth:`open` loads them, :meth:`close` stops them."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.alerts: dict[int, Alert] = {}
        self.by_key: dict[SeriesId, set[int]] = {}
        self.bars = LatestBars()
        self.store: AlertStore | None = None
        self.keys: VapidKeys | None = None
        self.worker = Worker()
        self._listener = _Listener(self)
        self._tasks: tasks.Tasks = set()
        self.sending = AlertSending(hub.settings, hub.metrics, self._start, self._forget_endpoint)
        self.journal = self.sending.journal
        hub.metrics.describe("candlewire_alerts_fired_total", "alerts that fired since the start")
        hub.metrics.inc("candlewire_alerts_fired_total", 0)
        self._compute_limit = asyncio.Semaphore(COMPUTES_AT_ONCE)
        self._computing: dict[int, tuple[SeriesId, Bar] | None] = {}  # id -> update pending

    # ------------------------------------------------------------------ lifecycle

    async def open(self, db: Path, worker: Worker | None = None) -> None:
        """Load (or create) the VAPID keys and the store; resume every unexpired alert of
        this ``worker`` (its share, less those other workers made in this run, and those
        its previous process evaluated in this run) and the deliveries it stored before."""
        self.worker = worker or Worker()
        self.keys = await asyncio.to_thread(VapidKeys.load_or_create, db.parent)
        self.store = await asyncio.to_thread(AlertStore, db)
        self.sending.open(self.keys, first_worker=self.worker.index == 1)
        self.journal.open(self.store, self.worker.index)
        # Taken first: worker 1 adopts those of workers gone (a hub now run with fewer),
        # then the too old go, the adopted too (they were resumed and sent, past a day).
        cutoff = time.time() - PENDING_SECONDS
        pending = await asyncio.to_thread(
            self.store.take_deliveries, self.worker.index, self.worker.count
        )
        await self.journal.write_now(Batch(older_than=cutoff))
        pending = [delivery for delivery in pending if delivery.created_at >= cutoff]
        self.sending.resume(pending)
        await asyncio.to_thread(self.store.claim, self.worker.share, self.worker.mine)
        await self._expired_meanwhile()
        rows = await asyncio.to_thread(self.store.active, time.time(), mine=self.worker.mine)
        for row in rows:
            alert = self._from_row(row)
            if alert is not None:
                self._add(alert)
        for name, job in (("writer", self.journal.run()), ("expiry", self._sweeper())):
            tasks.start_owned(self._tasks, job, f"alerts {name}", self._failed)
        for key in list(self.by_key):
            self._start(self._seed(key), f"alerts seed {key}")
        logger.info(
            "alerts: %d resumed on %d series, %d deliveries resumed (worker %d of %d)",
            len(self.alerts),
            len(self.by_key),
            len(pending),
            self.worker.index,
            self.worker.count,
        )

    async def _expired_meanwhile(self) -> None:
        """The alerts (of this worker) that expired while the server was down get their
        "Alert expired" push and are deleted, as the sweeper does for live ones."""
        assert self.store is not None
        rows = await asyncio.to_thread(self.store.expired, time.time(), mine=self.worker.mine)
        for row in rows:
            alert = self._from_row(row)
            if alert is not None:
                self.sending.push(alert, f"Alert expired: {alert.message}")
            logger.info("alert %d expired while the server was down", row["id"])
        if rows:  # with its push, in one transaction
            self.journal.delete([row["id"] for row in rows])

    async def close(self) -> None:
        """Stop the deliveries (those not done stay stored), wait for the batch being
        written and write the rest, then close the store."""
        self.sending.stop()
        await tasks.cancel_owned(self._tasks)
        await self.sending.close()
        if self.store is not None:
            await self.journal.close()
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ requests

    async def take(self, client: Client, raw: dict[str, Any]) -> None:
        """One of the alert requests (routed by ``protocol.AlertRequest``)."""
        kind = raw.get("type")
        if self.store is None or self.keys is None:
            self._refuse(client, raw, ProtocolError("unavailable", "alerts are not enabled"))
        elif kind == "vapid_public_key":
            key = {"publicKey": self.keys.public_key()}
            self.hub.send(client, protocol.encode({"type": kind, "vapid_public_key": key}))
        elif kind == "alert":
            await client.replies.submit(LANE, lambda: self._create(client, raw), raw)
        elif kind == "alerts":
            await client.replies.submit(LANE, lambda: self._list_request(client, raw), raw)
        elif kind == "alert_delete":
            await client.replies.submit(LANE, lambda: self._delete_request(client, raw), raw)

    async def listed(self, endpoint: str | None, owner: str | None) -> list[dict[str, Any]]:
        """The live alerts of a push endpoint or an owner key (``alerts``, ``/api/alerts``):
        this worker's own, or with several workers the store's."""
        if not endpoint and not owner:
            raise ProtocolError("missing_field", "name an 'endpoint' or an 'owner'")
        if self.worker.count == 1 or self.store is None:
            found = [a for a in self.alerts.values() if _belongs(a, endpoint, owner)]
            return [alert.public() for alert in found[:MAX_LISTED]]
        rows = await asyncio.to_thread(self.store.of, endpoint, owner, time.time(), MAX_LISTED)
        listed = []
        for row in rows:  # the state of an alert evaluated here is fresher in memory
            alert = self.alerts.get(row["id"]) or self._from_row(row)
            if alert is not None:
                listed.append(alert.public())
        return listed

    async def delete(self, alert_id: object, endpoint: str | None, owner: str | None) -> None:
        """Remove the alert ``alert_id`` of that endpoint or owner (else ``not_found``),
        wherever it is evaluated."""
        missing = ProtocolError("not_found", f"no alert {str(alert_id)[:40]} of yours")
        if (
            type(alert_id) is not int  # not a bool: ``true`` is no alert id
            or not 0 < alert_id <= MAX_ALERT_ID
            or not (endpoint or owner)
            or self.store is None
        ):
            raise missing
        alert = self.alerts.get(alert_id)
        elsewhere = alert is None and self.worker.count > 1  # another worker evaluates it
        store = self.store
        if not await asyncio.to_thread(store.delete_of, alert_id, endpoint, owner, elsewhere):
            raise missing
        if alert is not None:
            self._remove(alert)
        logger.info("alert %d deleted", alert_id)

    async def _list_request(self, client: Client, raw: dict[str, Any]) -> None:
        try:
            alerts = await self.listed(_text(raw.get("endpoint")), _text(raw.get("owner")))
        except ProtocolError as exc:
            self._refuse(client, raw, exc)
            return
        self.hub.send(client, protocol.encode({"type": "alerts", "alerts": alerts}))

    async def _delete_request(self, client: Client, raw: dict[str, Any]) -> None:
        try:
            await self.delete(raw.get("id"), _text(raw.get("endpoint")), _text(raw.get("owner")))
        except ProtocolError as exc:
            self._refuse(client, raw, exc)
            return
        self.hub.send(client, protocol.encode({"type": "alert_deleted", "id": raw.get("id")}))

    async def _create(self, client: Client, raw: dict[str, Any]) -> None:
        assert self.store is not None
        settings = self.hub.settings
        try:
            spec, rule_set = parse_alert(
                raw, settings.MAX_RULES_PER_ALERT, settings.ALERT_PUSH_PUBLIC_ONLY
            )
            if spec.get("webhook") and not settings.ALERT_CLIENT_WEBHOOKS:
                raise ProtocolError(
                    "unsupported",
                    "per-alert webhooks are turned off on this server (ALERT_CLIENT_WEBHOOKS)",
                )
            series = series_of(rule_set)
            if not series:
                raise ProtocolError("bad_rule", "an alert must read at least one series")
            for key in series:
                await self.hub.requests.validate(key)
            self._bind(rule_set)
        except ProtocolError as exc:
            self._refuse(client, raw, exc, notify=True)
            return
        expires = time.time() + settings.ALERT_EXPIRE_MINUTES * 60
        # who pays the daily quota: the key's or token's client with AUTH on, else the address
        credential = self.hub.credential_client
        peer = f"client {credential()}" if credential else client.peer.rsplit(":", 1)[0]
        refusal = self._over_series_limit(peer, series)
        if refusal is not None:
            self._refuse(client, raw, refusal, notify=True)
            return
        try:
            row = await asyncio.to_thread(
                self.store.create,
                spec,
                peer,
                expires,
                settings.MAX_ALERTS_PER_DAY,
                self.worker.mine,
            )
        except StorageError as exc:
            logger.warning("alert of client %d not stored: %s", client.id, exc)
            failed = ProtocolError("storage_error", "The alert could not be stored now; try again")
            self._refuse(client, raw, failed, notify=True)
            return
        if row is None:
            error = ProtocolError("limit_reached", "Max alerts reached")
            self._refuse(client, raw, error, notify=True)
            return
        alert = Alert(row["id"], spec, rule_set, peer, row["created_at"], expires)
        alert.creator = client.id
        self._add(alert)
        logger.info("alert %d created by client %d on %s", alert.id, client.id, alert.series)
        if client.id in self.hub.clients:
            message = {"type": "alert_created", "id": alert.id, "expires_at": int(expires)}
            if alert.owner is not None:
                message["owner"] = alert.owner  # the key that lists and deletes it
            self.hub.send(client, protocol.encode(message))
        self.sending.push(alert, f"Alert added: {alert.message}")
        for key in alert.series:
            self._start(self._seed(key), f"alerts seed {key}")

    def _over_series_limit(self, peer: str, series: tuple[SeriesId, ...]) -> ProtocolError | None:
        """The alerts of one client stream their series as its subscriptions would: at most
        its subscription limit (its tier's, ``MAX_SUBSCRIPTIONS_PER_CALLER``) of distinct
        series, and never more than ``MAX_SUBSCRIPTIONS_PER_CLIENT``. (With ``--workers``,
        each worker counts the alerts it evaluates.)"""
        limit = self.hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT
        caller_limit = self.hub.subscription_limit() if self.hub.subscription_limit else None
        if caller_limit is not None:
            limit = min(limit, caller_limit)
        read = {key for alert in self.alerts.values() if alert.peer == peer for key in alert.series}
        if len(read | set(series)) <= limit:
            return None
        return ProtocolError(
            "limit_reached", f"the alerts of one client may read at most {limit} series"
        )

    def _refuse(self, client: Client, raw: Any, error: ProtocolError, notify: bool = False) -> None:
        if client.id not in self.hub.clients:
            return
        self.hub.metrics.inc("candlewire_request_errors_total", code=error.code)
        self.hub.send(client, protocol.error_message(error.code, error.message, raw))
        if notify:  # the stock dialog has closed already: its modal shows this text
            note = {"type": "notification", "message": f"Error: {error.message}"}
            self.hub.send(client, protocol.encode(note))

    # ------------------------------------------------------------------ evaluation

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        """A new state of ``key``'s newest bar: evaluate its alerts (the hot path)."""
        if not self.bars.update(key, bar):
            return
        self._evaluate(key, bar)

    def _evaluate(self, key: SeriesId, bar: Bar, armed_only: bool = False) -> None:
        """Evaluate ``key``'s alerts on ``bar``; ``armed_only``: those that may fire (a
        seed's bars may be older than a disarmed alert's state: see :meth:`_seed`)."""
        now = time.time()
        for alert_id in list(self.by_key.get(key, ())):
            alert = self.alerts[alert_id]
            if alert.expires_at <= now:
                continue  # the sweeper removes it and says so
            if armed_only and not alert.armed:
                continue
            if reads_indicators(alert.rule_set):
                self._compute(alert, key, bar)
            else:
                self._moved(alert, step(alert, self.bars), key, bar)

    def _moved(self, alert: Alert, moved: Step, key: SeriesId, bar: Bar) -> None:
        if moved is Step.FIRED:
            self._fire(alert, key, bar)
        if moved is not Step.NONE:  # stored with the firing's deliveries, before them
            self.journal.state(alert.id, alert.armed, alert.fired)

    def _compute(self, alert: Alert, key: SeriesId, bar: Bar) -> None:
        """An alert on indicators is computed in a task of its own, one at a time per alert:
        updates that arrive meanwhile are folded into one more run with the newest bar."""
        if alert.id in self._computing:
            self._computing[alert.id] = (key, bar)
            return
        self._computing[alert.id] = None
        self._start(self._computed(alert, key, bar), f"alert {alert.id} indicators")

    async def _computed(self, alert: Alert, key: SeriesId, bar: Bar) -> None:
        try:
            while alert.id in self.alerts:
                async with self._compute_limit:
                    try:
                        values = await symbol_values(
                            alert.rule_set,
                            self._fetch,
                            self.hub.indicating.indicators,
                            self.hub.settings.MAX_COUNT,
                        )
                    except (ProviderError, StorageError, IndicatorError) as exc:
                        logger.warning("alert %d: no values (%s)", alert.id, exc)
                        return
                if self.alerts.get(alert.id) is not alert or alert.expires_at <= time.time():
                    return  # deleted (or expired) while its bars were fetched: it fires no more
                verdict = evaluate(alert.rule_set, _by_operand(values))
                self._moved(alert, advance(alert, verdict), key, bar)
                pending = self._computing.get(alert.id)
                if pending is None:
                    break
                key, bar = pending
                self._computing[alert.id] = None
        finally:
            self._computing.pop(alert.id, None)

    async def _fetch(self, series: SeriesId, count: int) -> list[Bar]:
        answer = await self.hub.planner.latest(series, count, True)
        if answer.error is not None and not answer.bars:
            raise answer.error
        return list(answer.bars)

    def _bind(self, rule_set: RuleSet) -> None:
        """Check the indicators an alert names (``IndicatorError`` with its code), also
        that each needs at most ``MAX_COUNT`` bars."""
        bind_rules(rule_set, self.hub.indicating.indicators, self.hub.settings.MAX_COUNT)

    async def _seed(self, key: SeriesId) -> None:
        """Evaluate ``key``'s armed alerts on its newest cached or stored bars (a new or
        resumed alert whose condition is true already fires at once, as in Tradiny). A
        disarmed one waits for a live update to re-arm: the store keeps a forming bar as
        it was fetched, not as it last changed, so after a restart within that bar it may
        predate the firing, and re-arming on it fired the alert again."""
        hub = self.hub
        answer = await hub.planner.latest(key, 2, True)
        if key not in self.by_key or not answer.bars:
            return
        newest = self.bars.newest(key)
        if newest is not None and newest[0] >= answer.bars[-1][0]:
            self._evaluate(key, newest, armed_only=True)
            return
        for bar in answer.bars:
            self.bars.update(key, bar)
        self._evaluate(key, answer.bars[-1], armed_only=True)

    def _fire(self, alert: Alert, key: SeriesId, bar: Bar) -> None:
        now = time.monotonic()
        if now - alert.logged_at >= FIRING_LOG_SECONDS:
            alert.logged_at = now
            logger.info("alert %d fired (%d times) on %s", alert.id, alert.fired, key)
        else:  # a condition that flips on every tick fires as often: one line a minute
            logger.debug("alert %d fired (%d times) on %s", alert.id, alert.fired, key)
        self.hub.metrics.inc("candlewire_alerts_fired_total")
        creator = self.hub.clients.get(alert.creator) if alert.creator is not None else None
        if creator is not None:
            note = {"type": "notification", "message": alert.message, "alert_id": alert.id}
            self.hub.send(creator, protocol.encode(note))
        self.sending.push(alert, alert.message)
        self.sending.webhooks(alert, key, bar)

    # ------------------------------------------------------------------ delivery

    async def _forget_endpoint(self, endpoint: str) -> None:
        """A push service said the subscription is gone: no alert pushes to it again."""
        for alert in list(self.alerts.values()):
            subscription = alert.subscription
            if subscription is not None and subscription.endpoint == endpoint:
                alert.spec = alert.without_push()
                if self.store is not None:
                    await asyncio.to_thread(self.store.drop_subscription, alert.id, alert.spec)
                logger.info("alert %d: push subscription removed", alert.id)

    def _start(self, job: Any, name: str) -> None:
        tasks.start_owned(self._tasks, job, name, self._failed)

    def _failed(self, error: BaseException) -> None:
        self.hub.metrics.inc("candlewire_internal_errors_total")

    # ------------------------------------------------------------------ background

    async def _sweeper(self) -> None:
        """Remove expired alerts (with the "Alert expired" push) once a second; with several
        workers, first those another worker deleted. Once a minute, drop the stored
        deliveries older than ``PENDING_SECONDS``."""
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if self.worker.count > 1:
                await self._drop_deleted_elsewhere()
            now = time.time()
            expired = [a for a in self.alerts.values() if a.expires_at <= now]
            for alert in expired:
                self._remove(alert)
                self.sending.push(alert, f"Alert expired: {alert.message}")
                logger.info("alert %d expired", alert.id)
            if expired:  # with their pushes, in one transaction
                self.journal.delete([a.id for a in expired])
            if time.monotonic() - pruned >= PRUNE_SECONDS:
                pruned = time.monotonic()
                self.journal.prune(now - PENDING_SECONDS)

    async def _drop_deleted_elsewhere(self) -> None:
        """Drop the alerts of this worker that another one deleted (``alert_deleted``); a
        store that does not answer (locked too long) is tried again at the next sweep."""
        if self.store is None:
            return
        try:
            deleted = await asyncio.to_thread(self.store.tombstones)
            mine = [alert_id for alert_id in deleted if alert_id in self.alerts]
            for alert_id in mine:
                self._remove(self.alerts[alert_id])
                logger.info("alert %d deleted (through another worker)", alert_id)
            if deleted:
                older = time.time() - TOMBSTONE_SECONDS
                await asyncio.to_thread(self.store.forget_tombstones, mine, older)
        except StorageError as exc:
            logger.warning("alerts: deletions by other workers not read (%s); retrying", exc)

    # ------------------------------------------------------------------ registry

    def _add(self, alert: Alert) -> None:
        alert.series = series_of(alert.rule_set)
        self.alerts[alert.id] = alert
        for key in alert.series:
            if key not in self.by_key:
                self.by_key[key] = set()
                self.hub.subs.add(OWNER, key)
                self.hub.listeners.add(OWNER, key, self._listener)
                self.hub.upstream.sync(key)
            self.by_key[key].add(alert.id)

    def _remove(self, alert: Alert) -> None:
        self.alerts.pop(alert.id, None)
        for key in alert.series:
            ids = self.by_key.get(key)
            if ids is None:
                continue
            ids.discard(alert.id)
            if not ids:
                del self.by_key[key]
                self.bars.forget(key)
                self.hub.listeners.remove(OWNER, key)
                self.hub.subs.remove(OWNER, key)
                self.hub.upstream.sync(key)

    def _from_row(self, row: Row) -> Alert | None:
        spec = row["spec"]
        try:
            rule_set = parse_rule_set(spec["rules"], spec["operators"], spec["indicators"])
        except (ProtocolError, KeyError) as exc:
            logger.warning("alert %d: stored rules no longer parse (%s); skipped", row["id"], exc)
            return None
        return Alert(
            row["id"],
            spec,
            rule_set,
            row["peer"],
            row["created_at"],
            row["expires_at"],
            row["armed"],
            row["fired"],
        )


def _by_operand(values: dict[int, Pair]) -> Callable[[Operand], Pair]:
    """The lookup of ``symbol_values``' answer (keyed by ``id(operand)``)."""
    return lambda operand: values[id(operand)]


def _belongs(alert: Alert, endpoint: str | None, owner: str | None) -> bool:
    if endpoint and alert.endpoint == endpoint:
        return True
    return bool(owner) and alert.owner == owner


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
