"""An alert: the ``alert`` request (spec 3.2) parsed and checked, and its stored state.

Rules are parsed by the one rule engine (:mod:`backend.indicators.rules`, no ``eval``). The
push subscription is ``PushSubscription.toJSON()``: an http(s) endpoint with a host, a
``p256dh`` that is an uncompressed P-256 point and a 16-byte ``auth`` (base64url), checked
when the alert is made; ``webhook`` (an extension) and ``owner`` (a client-chosen key for
``alerts`` / ``alert_delete``) are optional. What is stored is what was parsed: the rule
fields the engine reads, the indicators the rules name (their id, inputs and ``dataMap``),
the subscription's endpoint and keys; any other key is dropped, and a spec over
:data:`MAX_SPEC_BYTES` of JSON is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from backend.alerts.destinations import host_of, public_problem
from backend.errors import ProtocolError
from backend.indicators.rules import IndicatorOperand, RuleSet, parse_rule_set
from backend.model.bars import SeriesId

MAX_MESSAGE = 1_000
MAX_URL = 2_000
MAX_OWNER = 200
OWNER_KEY_BYTES = 16  # an owner key the server makes (22 characters)
MAX_KEY = 200  # characters of a subscription key (p256dh: 87, auth: 22)
MAX_SPEC_BYTES = 64 * 1024  # the stored alert as JSON
P256DH_BYTES = 65  # an uncompressed P-256 point
AUTH_BYTES = 16
RULE_FIELDS = (
    "type",
    "source",
    "name",
    "interval",
    "key",
    "indicator",
    "indicator_interval",
    "output",
    "value",
)
RULE_KEYS = frozenset({"comparator", "near", *(f"{f}{n}" for f in RULE_FIELDS for n in (1, 2))})
SERIES_KEYS = ("source", "name", "interval", "value", "dataKey")


@dataclass(frozen=True)
class Subscription:
    """A browser's push subscription (RFC 8030 endpoint, RFC 8291 keys)."""

    endpoint: str
    p256dh: str
    auth: str

    def info(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()`` without ``expirationTime``: what is stored."""
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
    logged_at: float = float("-inf")  # monotonic time its firing was last logged at INFO

    @property
    def message(self) -> str:
        return str(self.spec["message"])

    @property
    def owner(self) -> str | None:
        owner = self.spec.get("owner")
        return owner if isinstance(owner, str) else None

    @property
    def subscription(self) -> Subscription | None:
        """Where to push: None without a subscription, or once its service said it is gone."""
        return parse_subscription(self.spec.get("subscription"))

    @property
    def endpoint(self) -> str | None:
        """The push endpoint the alert was made with (its owner), even once it is gone."""
        subscription = self.spec.get("subscription")
        endpoint = subscription.get("endpoint") if isinstance(subscription, dict) else None
        return endpoint if isinstance(endpoint, str) else None

    def without_push(self) -> dict[str, Any]:
        """The spec once the push service said the subscription is gone (404/410): its
        keys go, its endpoint stays (it still identifies the owner)."""
        return {**self.spec, "subscription": {"endpoint": self.endpoint, "keys": None}}

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


def parse_alert(
    raw: dict[str, Any], max_rules: int, public_only: bool = False
) -> tuple[dict[str, Any], RuleSet]:
    """The stored spec and the parsed rules of an ``alert`` request; ``ProtocolError`` (or
    its ``RuleError``) names what is wrong. ``public_only``: ``ALERT_PUSH_PUBLIC_ONLY``."""
    message = raw.get("message")
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE:
        raise ProtocolError("invalid_field", f"'message' must be 1 to {MAX_MESSAGE} characters")
    rules = raw.get("rules")
    if isinstance(rules, list) and len(rules) > max_rules:
        raise ProtocolError("limit_reached", f"at most {max_rules} rules per alert")
    rule_set = parse_rule_set(rules, raw.get("operators"), raw.get("indicators"))
    assert isinstance(rules, list)  # parse_rule_set refuses anything else
    subscription = raw.get("subscription")
    if subscription is not None:
        subscription = check_subscription(subscription, public_only).info()
    webhook = raw.get("webhook")
    if webhook is not None:
        check_url(webhook, "'webhook'", public_only)
    owner = raw.get("owner")
    if owner is not None and (not isinstance(owner, str) or not 0 < len(owner) <= MAX_OWNER):
        raise ProtocolError("invalid_field", f"'owner' must be 1 to {MAX_OWNER} characters")
    if owner is None and subscription is None:
        # Nothing else would name it: an owner key of its own, sent back in alert_created,
        # so that whoever made it can list and delete it.
        owner = secrets.token_urlsafe(OWNER_KEY_BYTES)
    spec = {
        "message": message,
        "rules": [{k: v for k, v in rule.items() if k in RULE_KEYS} for rule in rules],
        "operators": raw.get("operators") or [],
        "indicators": _indicators_read(rules, raw.get("indicators") or {}),
        "subscription": subscription,
        "webhook": webhook,
        "owner": owner,
    }
    size = len(json.dumps(spec))
    if size > MAX_SPEC_BYTES:
        raise ProtocolError(
            "invalid_field",
            f"the alert is too large ({size} bytes as JSON; at most {MAX_SPEC_BYTES})",
        )
    return spec, rule_set


def _indicators_read(rules: list[Any], indicators: dict[str, Any]) -> dict[str, Any]:
    """The ``indicators`` entries the rules name, with only what the engine reads."""
    kept: dict[str, Any] = {}
    for rule in rules:
        for n in (1, 2):
            label = rule.get(f"indicator{n}") if rule.get(f"type{n}") == "indicator" else None
            if isinstance(label, str) and label not in kept:
                config = indicators[label]["indicator"]
                kept[label] = {"indicator": _config_read(config)}
    return kept


def _config_read(config: dict[str, Any]) -> dict[str, Any]:
    catalogue = config["indicator"]
    return {
        "type": "indicator",
        "id": config["id"],
        "indicator": {k: catalogue[k] for k in ("id", "name", "type") if k in catalogue},
        "inputs": config.get("inputs") or {},
        "dataMap": {
            column: {k: entry[k] for k in SERIES_KEYS if k in entry}
            for column, entry in config["dataMap"].items()
        },
    }


def series_of(rule_set: RuleSet) -> tuple[SeriesId, ...]:
    """The series keys the rules read (indicators: their ``dataMap``), in order, once each."""
    return rule_set.series()


def reads_indicators(rule_set: RuleSet) -> bool:
    return any(isinstance(operand, IndicatorOperand) for operand in rule_set.operands())


def parse_subscription(value: object) -> Subscription | None:
    """A stored push subscription (three strings), or None (none, or its push is off)."""
    if not isinstance(value, dict) or not isinstance(value.get("keys"), dict):
        return None
    endpoint, p256dh, auth = (
        value.get("endpoint"),
        value["keys"].get("p256dh"),
        value["keys"].get("auth"),
    )
    if isinstance(endpoint, str) and isinstance(p256dh, str) and isinstance(auth, str):
        return Subscription(endpoint, p256dh, auth)
    return None


def check_subscription(value: object, public_only: bool = False) -> Subscription:
    """A ``PushSubscription.toJSON()`` a push can be encrypted for, else ``ProtocolError``
    (``invalid_field``) naming what is wrong."""
    found = parse_subscription(value)
    if found is None:
        raise ProtocolError(
            "invalid_field", "'subscription' must be a PushSubscription: endpoint, keys"
        )
    check_url(found.endpoint, "'subscription.endpoint'", public_only)
    point = _base64url(found.p256dh, "'subscription.keys.p256dh'", P256DH_BYTES)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise ProtocolError(
            "invalid_field", "'subscription.keys.p256dh' is not a P-256 public key"
        ) from None
    if point[0] != 4:
        raise ProtocolError("invalid_field", "'subscription.keys.p256dh' must be uncompressed")
    _base64url(found.auth, "'subscription.keys.auth'", AUTH_BYTES)
    return found


def _base64url(text: str, what: str, size: int) -> bytes:
    bad = ProtocolError("invalid_field", f"{what} must be {size} bytes in base64url")
    if len(text) > MAX_KEY:
        raise bad
    stripped = text.rstrip("=")
    standard = stripped.replace("-", "+").replace("_", "/") + "=" * (-len(stripped) % 4)
    try:
        raw = base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if len(raw) != size:
        raise bad
    return raw


def check_url(value: object, what: str, public_only: bool = False) -> str:
    """An http(s) URL with a host (``public_only``: https to a public address)."""
    if not isinstance(value, str) or len(value) > MAX_URL or host_of(value) is None:
        raise ProtocolError("invalid_field", f"{what} must be an http(s) URL with a host")
    problem = public_problem(value) if public_only else None
    if problem is not None:
        raise ProtocolError("invalid_field", f"{what} {problem} (ALERT_PUSH_PUBLIC_ONLY)")
    return value
