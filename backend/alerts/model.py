"""An alert: the ``alert`` request (spec 3.2) parsed and checked, and its stored state.

Rules are parsed by the one rule engine (:mod:`backend.indicators.rules`, no ``eval``). The
push subscription is ``PushSubscription.toJSON()``; ``webhook`` (an extension) and
``owner`` (a client-chosen key for ``alerts`` / ``alert_delete``) are optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.errors import ProtocolError
from backend.indicators.rules import DataOperand, IndicatorOperand, RuleSet, parse_rule_set
from backend.model.bars import SeriesId

MAX_MESSAGE = 1_000
MAX_URL = 2_000
MAX_OWNER = 200


@dataclass(frozen=True)
class Subscription:
    """A browser's push subscription (RFC 8030 endpoint, RFC 8291 keys)."""

    endpoint: str
    p256dh: str
    auth: str

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass
class Alert:
    """One stored alert; ``armed`` is Tradiny's ``next_tick`` (true: fires on a true)."""

    id: int
    spec: dict[str, Any]  # message, rules, operators, indicators, subscription, webhook, owner
    rule_set: RuleSet
    peer: str
    created_at: float
    expires_at: float
    armed: bool = True
    fired: int = 0
    creator: int | None = None  # the hub client that created it, while connected
    series: tuple[SeriesId, ...] = field(default=())

    @property
    def message(self) -> str:
        return str(self.spec["message"])

    @property
    def owner(self) -> str | None:
        owner = self.spec.get("owner")
        return owner if isinstance(owner, str) else None

    @property
    def subscription(self) -> Subscription | None:
        return parse_subscription(self.spec.get("subscription"))

    @property
    def webhook(self) -> str | None:
        hook = self.spec.get("webhook")
        return hook if isinstance(hook, str) else None

    def public(self) -> dict[str, Any]:
        """What ``alerts`` and ``/api/alerts`` show (never the subscription's keys)."""
        return {
            "id": self.id,
            "message": self.message,
            "rules": self.spec["rules"],
            "operators": self.spec["operators"],
            "owner": self.owner,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "armed": self.armed,
            "fired": self.fired,
            "push": self.subscription is not None,
            "webhook": self.webhook is not None,
        }


def parse_alert(raw: dict[str, Any], max_rules: int) -> tuple[dict[str, Any], RuleSet]:
    """The stored spec and the parsed rules of an ``alert`` request; ``ProtocolError`` (or
    its ``RuleError``) names what is wrong."""
    message = raw.get("message")
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE:
        raise ProtocolError("invalid_field", f"'message' must be 1 to {MAX_MESSAGE} characters")
    rules = raw.get("rules")
    if isinstance(rules, list) and len(rules) > max_rules:
        raise ProtocolError("limit_reached", f"at most {max_rules} rules per alert")
    rule_set = parse_rule_set(rules, raw.get("operators"), raw.get("indicators"))
    subscription = raw.get("subscription")
    if subscription is not None:
        parse_subscription(subscription, strict=True)
    webhook = raw.get("webhook")
    if webhook is not None:
        check_url(webhook, "'webhook'")
    owner = raw.get("owner")
    if owner is not None and (not isinstance(owner, str) or not 0 < len(owner) <= MAX_OWNER):
        raise ProtocolError("invalid_field", f"'owner' must be 1 to {MAX_OWNER} characters")
    spec = {
        "message": message,
        "rules": rules,
        "operators": raw.get("operators") or [],
        "indicators": raw.get("indicators") or {},
        "subscription": subscription,
        "webhook": webhook,
        "owner": owner,
    }
    return spec, rule_set


def series_of(rule_set: RuleSet) -> tuple[SeriesId, ...]:
    """The series keys the rules read (indicators: their ``dataMap``), in order, once each."""
    keys: list[SeriesId] = []
    for operand in rule_set.operands():
        if isinstance(operand, DataOperand):
            keys.append(operand.series)
        elif isinstance(operand, IndicatorOperand):
            keys.extend(binding.series for binding in operand.config.bindings)
    return tuple(dict.fromkeys(keys))


def reads_indicators(rule_set: RuleSet) -> bool:
    return any(isinstance(operand, IndicatorOperand) for operand in rule_set.operands())


def parse_subscription(value: object, strict: bool = False) -> Subscription | None:
    """A push subscription, or None (``strict``: a malformed one is a ``ProtocolError``)."""
    found = _subscription(value)
    if found is not None and (not strict or check_url(found.endpoint, "'subscription.endpoint'")):
        return found
    if strict:
        raise ProtocolError(
            "invalid_field", "'subscription' must be a PushSubscription: endpoint, keys"
        )
    return None


def _subscription(value: object) -> Subscription | None:
    if not isinstance(value, dict) or not isinstance(value.get("keys"), dict):
        return None
    endpoint, p256dh, auth = (
        value.get("endpoint"),
        value["keys"].get("p256dh"),
        value["keys"].get("auth"),
    )
    if isinstance(endpoint, str) and isinstance(p256dh, str) and isinstance(auth, str):
        return Subscription(endpoint, p256dh[:200], auth[:200])
    return None


def check_url(value: object, what: str) -> bool:
    if (
        not isinstance(value, str)
        or len(value) > MAX_URL
        or not value.startswith(("https://", "http://"))
    ):
        raise ProtocolError("invalid_field", f"{what} must be an http(s) URL")
    return True
