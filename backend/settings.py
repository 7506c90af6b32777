"""Candlewire settings: environment variables and ``.env``, validated once at startup.

``load_settings()`` builds one frozen :class:`Settings`. A bad value raises
:class:`backend.errors.ConfigError` naming the variable (the files ``API_KEYS_FILE`` and
``JWT_PUBLIC_KEY`` name are read to check them; :func:`jwt_public_keys` loads the JWT keys
for the access layer); secrets are ``SecretStr`` and are masked in ``repr`` and logs. The
names are those of DESIGN section 4, plus the hub's limits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from backend.errors import ConfigError
from backend.runtime.registry import PROVIDER_REGISTRY

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_POLYGON_MARKETS = ("stocks", "crypto", "fx", "indices", "options")

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class AccessTier(BaseModel):
    """One quota tier of ``ACCESS_TIERS`` (a JWT's ``tier`` claim picks it); a field left
    out keeps the global setting of the same name; any other field is an error (a misspelt
    one was ignored, and the tier kept the global setting without a word)."""

    model_config = ConfigDict(extra="forbid")

    upstream_calls_per_second: float | None = Field(default=None, gt=0)
    upstream_burst: int | None = Field(default=None, ge=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    requests_burst: int | None = Field(default=None, ge=1)
    max_subscriptions: int | None = Field(default=None, ge=1)


class Settings(BaseSettings):
    """Every setting of the server, the provider processes and ``populate.py``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=0, le=65535)
    DB: Path = Path("db/candlewire.sqlite3")
    PROVIDERS: CommaList = ("csv",)
    # Providers registered without editing the registry: "key=module:Class,..." (tests, plugins).
    EXTRA_PROVIDERS: CommaList = ()
    # User indicators without editing the registry: "id=module:Class,..." (README).
    EXTRA_INDICATORS: CommaList = ()
    LOG_LEVEL: str = "INFO"

    CSV_FOLDER_PATH: Path = Path("data")
    CSV_REPLAY_SPEED: float = Field(60.0, ge=0, allow_inf_nan=False)  # inf: every history failed
    # The wall time at which every CSV file's replay stood at its midpoint (UTC). Fixed, so
    # that a restarted server continues the replay; move it to start the replay afresh.
    CSV_REPLAY_EPOCH: str = "2026-12-01 00:00:00"
    CSV_DATE_COLUMN: str = ""

    BINANCE_API_KEY: SecretStr = SecretStr("")
    BINANCE_API_SECRET: SecretStr = SecretStr("")
    BINANCE_API_URL: str = "https://api.binance.com/api"
    BINANCE_STREAM_URL: str = "wss://stream.binance.com:9443/"

    POLYGON_API_KEY: SecretStr = SecretStr("")
    POLYGON_API_URL: str = "https://api.polygon.io"
    POLYGON_WS_URL: str = "wss://delayed.polygon.io"
    POLYGON_MARKETS: CommaList = ("stocks", "crypto", "fx", "indices")

    # OpenBB Workspace origins (credentials allowed) and TradingView UDF page origins.
    CORS_ORIGINS: CommaList = (
        "https://pro.openbb.co",
        "https://pro.openbb.dev",
        "https://excel.openbb.co",
        "http://localhost:1420",
    )
    UDF_CORS_ORIGINS: CommaList = ("*",)

    # The bar store: hot bars in memory, everything in SQLite (README, "History and the store").
    CACHE_MAX_BARS: int = Field(500_000, ge=100)
    CACHE_IDLE_SECONDS: float = Field(1800.0, gt=0)
    # Retention per interval in days, off by default: "30" for every interval, or
    # "1m=30,5m=90" per interval (intervals not listed are kept forever).
    BAR_RETENTION_DAYS: str = ""

    # Hub limits (README, "Configuration").
    HISTORY_TIMEOUT: float = Field(30.0, gt=0)
    MAX_COUNT: int = Field(10_000, ge=1)
    MAX_CLIENTS: int = Field(10_000, ge=1)
    MAX_SUBSCRIPTIONS_PER_CLIENT: int = Field(500, ge=1)
    MAX_REQUESTS_PER_FRAME: int = Field(100, ge=1)
    # History bars encoded for one connection per second (data_init, data_history; a frame
    # sent from the encoded cache is free), with a burst: past them its next history reply
    # waits until it is back under (0: no limit).
    HISTORY_BARS_PER_SECOND: float = Field(100_000.0, ge=0)
    HISTORY_BARS_BURST: int = Field(1_000_000, ge=1)
    # A chat prompt carries the chart as a PNG data URL: about 1.2 MB from a 1920x1080 window
    # and 1.6 MB from 2560x1440 (Tradiny renders it at three times the size).
    MAX_FRAME_BYTES: int = Field(8 * 1024 * 1024, ge=1024)
    OUTBOX_MAX_MESSAGES: int = Field(1_000, ge=10)
    # Bytes a client may have pending (outbox plus socket buffer) before it counts as slow;
    # 4x this at any moment closes it at once (DESIGN section 4; backend/wire/outbox.py).
    OUTBOX_MAX_BYTES: int = Field(4 * 1024 * 1024, ge=65_536)
    SLOW_CLIENT_TIMEOUT: float = Field(10.0, gt=0)
    # WebSocket keep-alive (uvicorn's): a ping to every socket this often, closed when its
    # pong is later than the timeout; 0 turns either off (server.py, uvicorn_config).
    WS_PING_INTERVAL: float = Field(20.0, ge=0)
    WS_PING_TIMEOUT: float = Field(20.0, ge=0)
    STREAM_LINGER_SECONDS: float = Field(5.0, ge=0)
    HEARTBEAT_TIMEOUT: float = Field(15.0, gt=0)
    HISTORY_THREADS: int = Field(4, ge=1, le=64)
    # Live indicators: 0 computes after every provider batch; > 0 at most once per this many
    # seconds per series, the newest bar always included (README, "Indicators and the scanner").
    INDICATOR_UPDATE_SECONDS: float = Field(0.0, ge=0, le=60)
    # The event-loop stall probe (README, "Performance"): a timer every LOOP_PROBE_SECONDS
    # (0: off) measures how late it fires; stalls over LOOP_STALL_LOG_MS are logged (0: not
    # logged); LOOP_DEBUG adds asyncio's debug mode, naming callbacks slower than that.
    LOOP_PROBE_SECONDS: float = Field(0.01, ge=0, le=10)
    LOOP_STALL_LOG_MS: float = Field(0.0, ge=0)
    LOOP_DEBUG: bool = False

    # Alerts (README, "Alerts"): lifetime, per-address daily quota, webhook for every alert.
    ALERT_EXPIRE_MINUTES: float = Field(1440.0, gt=0)
    MAX_ALERTS_PER_DAY: int = Field(100, ge=0)
    MAX_RULES_PER_ALERT: int = Field(10, ge=1, le=50)
    ALERT_WEBHOOK_URL: str = ""
    # A client may name its own webhook URL per alert (an extension). Off by default: the
    # server would POST wherever a client says, internal addresses included.
    ALERT_CLIENT_WEBHOOKS: bool = False
    # Client-chosen URLs (push endpoints, client webhooks) must be https:// to public
    # addresses. Off by default: a push service on loopback over http (tests, a local
    # service) keeps working.
    ALERT_PUSH_PUBLIC_ONLY: bool = False
    # The VAPID "sub" claim: a contact for push services (mailto: or https: URL).
    ALERT_CONTACT: str = "mailto:admin@localhost"
    # First delay between delivery attempts (doubled after each, five attempts in all).
    ALERT_RETRY_SECONDS: float = Field(1.0, gt=0, le=300)

    # AI chat (README, "AI chat"): any OpenAI-compatible Chat Completions endpoint.
    LLM_BASE_URL: str = ""
    LLM_API_KEY: SecretStr = SecretStr("")
    LLM_MODEL: str = ""
    # Chat turns one client address may start per rolling hour (Tradiny's rule: 100).
    MAX_LLM_REQUESTS_PER_HOUR: int = Field(100, ge=0)
    # Seconds one chat turn may take in all (the model's stream included); then it ends
    # with an error and the end marker.
    LLM_TIMEOUT_SECONDS: float = Field(120.0, gt=0, le=3600)
    # With AUTH on, seconds a client's conversations outlive its last socket that chatted
    # (a reconnecting page continues them); without AUTH they go with their socket.
    LLM_CONVERSATION_GRACE_SECONDS: float = Field(3600.0, ge=0, le=7 * 86400)

    # Access control and fair use (README, "Security"; backend/access).
    AUTH: str = "none"
    API_KEYS: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    API_KEYS_FILE: Path | None = None
    JWT_SECRET: SecretStr = SecretStr("")
    JWT_PUBLIC_KEY: str = ""  # PEM text, or a path to a PEM or JWKS (.json) file
    JWT_ALGORITHMS: CommaList = ("HS256", "RS256", "ES256", "EdDSA")
    JWT_AUDIENCE: str = ""
    JWT_ISSUER: str = ""
    TOKEN_EXPIRY_GRACE_SECONDS: float = Field(30.0, ge=0)
    # JWT_PUBLIC_KEY a JWKS URL: its keys fetched again after this age (backend/access/jwks.py)
    JWKS_REFRESH_SECONDS: float = Field(300.0, ge=1, le=86400)
    JWT_LEEWAY_SECONDS: float = Field(30.0, ge=0, le=3600)  # clock skew for exp, nbf, iat
    # Origins allowed on every socket route; empty: the page's own origin plus localhost.
    WS_ALLOWED_ORIGINS: CommaList = ()
    METRICS_PUBLIC: bool = False  # with AUTH on, /metrics needs a key unless this is true
    # Where clients reach the server (behind a proxy): the base of the URLs apps.json names.
    PUBLIC_URL: str = ""
    # Host headers served besides this machine's names and addresses (and PUBLIC_URL's):
    # checked with AUTH=none, or whenever set (backend/access/hosts.py: DNS rebinding).
    ALLOWED_HOSTS: CommaList = ()
    # Proxies whose X-Forwarded-For/-Proto are believed (uvicorn's setting; "" = uvicorn's
    # default, 127.0.0.1): a field so that a line in .env counts too, not only the environment.
    FORWARDED_ALLOW_IPS: str = ""
    API_DOCS: bool = True
    # Fair use, per client (a key's subject, else the address) and per address.
    MAX_CONNECTIONS_PER_ADDRESS: int = Field(50, ge=1)
    MAX_CONNECTIONS_PER_CLIENT: int = Field(20, ge=1)
    REQUESTS_PER_SECOND: float = Field(50.0, gt=0)
    REQUESTS_BURST: int = Field(200, ge=1)
    UPSTREAM_CALLS_PER_SECOND: float = Field(5.0, gt=0)
    UPSTREAM_BURST: int = Field(60, ge=1)
    # Subscriptions per client across all its connections (a key's or token's subject,
    # else the address); MAX_SUBSCRIPTIONS_PER_CLIENT is per connection.
    MAX_SUBSCRIPTIONS_PER_CALLER: int = Field(2000, ge=1)
    # Quota tiers by name (JSON): {"free": {"upstream_calls_per_second": 1, ...}}.
    ACCESS_TIERS: dict[str, AccessTier] = Field(default_factory=dict)
    # A provider's history budget, shared fairly between the clients using it.
    PROVIDER_CALLS_PER_SECOND: float = Field(20.0, gt=0)
    # The HTTP front door (server.py): uvicorn's limits plus what it lacks.
    HTTP_HEADER_TIMEOUT: float = Field(10.0, gt=0)
    HTTP_MAX_HEADER_BYTES: int = Field(65_536, ge=1024)
    HTTP_KEEP_ALIVE_SECONDS: int = Field(5, ge=1)
    HTTP_LIMIT_CONCURRENCY: int = Field(0, ge=0)  # 0: MAX_CLIENTS + 2,000

    # Scale-out over Redis (README, "Scale-out"; backend/bus): empty is one process tree.
    BUS_URL: str = ""
    BUS_PREFIX: str = Field("cw", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    BUS_LEASE_SECONDS: float = Field(5.0, ge=0.5, le=300)

    @field_validator("AUTH", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> Any:
        mode = str(value).strip().lower()
        if mode not in ("none", "token", "jwt"):
            raise ValueError("must be one of none, token, jwt")
        return mode

    @field_validator("API_KEYS", mode="before")
    @classmethod
    def _api_keys(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("API_KEYS_FILE", mode="before")
    @classmethod
    def _no_keys_file(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("API_KEYS_FILE")
    @classmethod
    def _keys_file(cls, value: Path | None) -> Path | None:
        # Read whatever AUTH is: server.py masks its keys in the logs (it raised there).
        if value is not None:
            _read_text(value)
        return value

    @field_validator("JWT_PUBLIC_KEY")
    @classmethod
    def _jwt_public_key(cls, value: str) -> str:
        if jwks_url(value):  # fetched by the server's start (check_access)
            parts = urlsplit(jwks_url(value))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value.strip()!r}: a JWKS URL is http(s)://host/path")
        elif value.strip():
            jwt_public_keys(value)  # a key that is none made every token fail (401)
        return value

    @field_validator("JWT_ALGORITHMS")
    @classmethod
    def _jwt_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from jwt.algorithms import get_default_algorithms

        known = sorted(set(get_default_algorithms()) - {"none"})
        for name in value:
            if name not in known:
                never = "never 'none'" if name.lower() == "none" else f"unknown {name!r}"
                raise ValueError(f"{never}; known: {', '.join(known)}")
        if not value:
            raise ValueError(f"needs at least one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _auth_requirements(self) -> Settings:
        if self.AUTH == "token" and not self.api_keys():
            raise ValueError("AUTH=token needs API_KEYS or API_KEYS_FILE")
        if self.AUTH == "jwt" and not (self.JWT_SECRET.get_secret_value() or self.JWT_PUBLIC_KEY):
            raise ValueError("AUTH=jwt needs JWT_SECRET or JWT_PUBLIC_KEY")
        return self

    def api_keys(self) -> tuple[str, ...]:
        """``API_KEYS`` plus the keys of ``API_KEYS_FILE`` (one a line, ``#`` comments)."""
        keys = [key.get_secret_value() for key in self.API_KEYS]
        if self.API_KEYS_FILE is not None:
            try:
                text = _read_text(self.API_KEYS_FILE)
            except ValueError as exc:
                raise ValueError(f"API_KEYS_FILE: {exc}") from None
            keys += [line.split("#")[0].strip() for line in text.splitlines()]
        return tuple(key for key in keys if key)

    @field_validator(
        "PROVIDERS",
        "POLYGON_MARKETS",
        "EXTRA_PROVIDERS",
        "EXTRA_INDICATORS",
        "CORS_ORIGINS",
        "UDF_CORS_ORIGINS",
        "WS_ALLOWED_ORIGINS",
        "ALLOWED_HOSTS",
        "JWT_ALGORITHMS",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("EXTRA_INDICATORS")
    @classmethod
    def _extra_indicators(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            key, sep, path = entry.partition("=")
            if not sep or not key.strip() or ":" not in path:
                raise ValueError(f"{entry!r} must look like 'id=module:Class'")
        return value

    @field_validator("EXTRA_PROVIDERS")
    @classmethod
    def _extra_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            key, sep, path = entry.partition("=")
            if not sep or not key.strip() or ":" not in path:
                raise ValueError(f"{entry!r} must look like 'key=module:Class'")
        return value

    @field_validator("DB", "CSV_FOLDER_PATH", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        # An empty value would be Path(""), the current folder: never what was meant (the
        # CSV provider searched the whole working tree, .venv included, for files).
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (it would be the current folder)")
        return value

    def check_csv_folder(self) -> None:
        """``ConfigError`` when the csv provider is enabled and ``CSV_FOLDER_PATH`` is not a
        folder: the server and ``populate.py`` stop with that line. A server started anyway
        served no CSV symbol (one error line in its log), and populate.py stored none in
        place of the last ones, with exit status 0."""
        folder = self.CSV_FOLDER_PATH
        if "csv" in self.PROVIDERS and not folder.is_dir():
            what = "does not exist" if not folder.exists() else "is not a folder"
            raise ConfigError(f"CSV_FOLDER_PATH: {str(folder)!r} {what}")

    @field_validator("CSV_REPLAY_EPOCH")
    @classmethod
    def _replay_epoch(cls, value: str) -> str:
        from backend.model.intervals import parse_date

        try:
            parse_date(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a UTC date like 2026-12-01 00:00:00") from None
        return value

    def replay_epoch(self) -> int:
        """``CSV_REPLAY_EPOCH`` in UTC seconds."""
        from backend.model.intervals import parse_date

        return parse_date(self.CSV_REPLAY_EPOCH)

    @field_validator("BAR_RETENTION_DAYS")
    @classmethod
    def _retention(cls, value: str) -> str:
        parse_retention(value)
        return value

    def retention(self) -> dict[str, float]:
        """Days of bars to keep per interval (intervals not in the dict: forever)."""
        return parse_retention(self.BAR_RETENTION_DAYS)

    @model_validator(mode="after")
    def _known_providers(self) -> Settings:
        registry = self.provider_registry()
        unknown = [key for key in self.PROVIDERS if key not in registry]
        if unknown:
            raise ValueError(
                f"PROVIDERS: unknown provider {unknown[0]!r}; known: {', '.join(sorted(registry))}"
            )
        if len(set(self.PROVIDERS)) != len(self.PROVIDERS):
            raise ValueError("PROVIDERS: a provider is listed twice")
        return self

    def provider_registry(self) -> dict[str, str]:
        """The registry (:mod:`backend.runtime.registry`) plus ``EXTRA_PROVIDERS``."""
        registry = dict(PROVIDER_REGISTRY)
        for entry in self.EXTRA_PROVIDERS:
            key, _, path = entry.partition("=")
            registry[key.strip()] = path.strip()
        return registry

    @field_validator("POLYGON_MARKETS")
    @classmethod
    def _known_markets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for market in value:
            if market not in _POLYGON_MARKETS:
                raise ValueError(f"unknown market {market!r}; known: {', '.join(_POLYGON_MARKETS)}")
        return value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        level = str(value).upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("BUS_URL")
    @classmethod
    def _bus_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{_no_password(value)!r} must be a redis://host:port/db URL (or empty)"
            )
        problem = _bus_url_problem(value) if value else None
        if problem is not None:  # never the URL itself: it may hold the password
            raise ValueError(f"{problem} (README, Scale-out)")
        return value

    @field_validator("ALERT_WEBHOOK_URL", "LLM_BASE_URL")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must be an http(s) URL")
        return value

    @field_validator("CORS_ORIGINS", "UDF_CORS_ORIGINS", "WS_ALLOWED_ORIGINS")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # An origin is scheme://host[:port], as a browser sends it: "charts.example.com"
        # never matched one, so every page was refused (403) without a word why.
        for origin in value:
            parts = urlsplit(origin)
            bare = not (parts.path.strip("/") or parts.query or parts.fragment)
            if origin not in ("*", "null") and not (parts.scheme and parts.netloc and bare):
                raise ValueError(
                    f"{origin!r} is not an origin like https://charts.example.com[:port] (or *)"
                )
        return value

    @field_validator("ALLOWED_HOSTS")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # a Host header's name, as a browser sends it: no scheme, path or port
        for entry in value:
            name = entry.removeprefix("*.") if entry != "*" else "x"
            if not name or any(c in name for c in "/:@ ") or name.startswith("*"):
                raise ValueError(
                    f"{entry!r} is not a host name like charts.example.com, *.example.com or *"
                )
        return value

    @field_validator("BINANCE_API_URL", "POLYGON_API_URL")
    @classmethod
    def _rest_base(cls, value: str) -> str:
        return _base_url(value, ("http", "https"))

    @field_validator("BINANCE_STREAM_URL", "POLYGON_WS_URL")
    @classmethod
    def _stream_base(cls, value: str) -> str:
        return _base_url(value, ("ws", "wss"))

    @field_validator("PUBLIC_URL")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} must be an http(s) URL such as https://host[:port][/path]")
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError(f"{value!r}: a base URL has no query, fragment or user")
        return value.rstrip("/")

    @field_validator("ALERT_CONTACT")
    @classmethod
    def _contact(cls, value: str) -> str:
        # RFC 8292 section 2.1: push services may use it to reach the operator
        value = value.strip()
        scheme, _, rest = value.partition(":")
        if scheme.lower() == "mailto" and "@" in rest.strip("@"):
            return value
        if scheme.lower() == "https" and urlsplit(value).hostname:
            return value
        raise ValueError(f"{value!r} must be a mailto: address or an https:// URL")

    @model_validator(mode="before")
    @classmethod
    def _contact_of_public_url(cls, data: Any) -> Any:
        # Not set: the server's own https address is a contact every push service takes
        # (Apple's refuses the placeholder at localhost), as RFC 8292 section 2.1 allows.
        if isinstance(data, dict) and not data.get("ALERT_CONTACT"):
            parts = urlsplit(str(data.get("PUBLIC_URL") or "").strip())
            if parts.scheme == "https" and parts.hostname and "ALERT_CONTACT" not in data:
                return {**data, "ALERT_CONTACT": f"https://{parts.netloc}"}
        return data

    @model_validator(mode="after")
    def _provider_requirements(self) -> Settings:
        # A hub on the bus (--role hub) holds no provider credentials; the provider nodes
        # check theirs at start (backend.app.check_role).
        if self.BUS_URL:
            return self
        if "polygon" in self.PROVIDERS and not self.POLYGON_API_KEY.get_secret_value():
            raise ValueError("POLYGON_API_KEY is required when the polygon provider is enabled")
        return self


def _no_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at else url


# What the bus sets on its Redis clients itself (backend.bus.link), which a query argument
# of BUS_URL would override.
_BUS_OWNS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "timeout",
        "max_connections",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
        "single_connection_client",
        "protocol",
        "decode_responses",
    }
)


def _bus_url_problem(url: str) -> str | None:
    """What redis-py would misread in ``BUS_URL``: a ``#``, ``/`` or ``?`` in the user or
    password ends the host part (redis-py then dials a host named after the password's
    rest), a database that is no number (read as database 0), a port out of range, a query
    argument no connection takes (every connection failed with a ``TypeError``)."""
    import inspect

    from redis.asyncio import connection

    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[cut:] and scheme != "unix":
        char = rest[cut]
        return (
            f"a {char!r} in the user name or password of BUS_URL must be written "
            f"{quote(char, safe='')} (percent-encode them; redis-py decodes them)"
        )
    parts = urlsplit(url)
    if scheme == "unix":
        if not parts.path:
            return "BUS_URL names no socket path: unix:///path/to/redis.sock?db=0"
    else:
        try:
            parts.port  # noqa: B018 - raises for a port that is no number or out of range
        except ValueError:
            return "the port of BUS_URL must be a number from 1 to 65535"
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            return "the database of BUS_URL (after the host: /0) must be a number"
    classes: tuple[type, ...] = (connection.Connection, connection.SSLConnection)
    if scheme == "unix":
        classes = (connection.UnixDomainSocketConnection,)
    known = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for cls in classes:
        for base in cls.__mro__:
            if "__init__" in vars(base):
                known |= set(inspect.signature(vars(base)["__init__"]).parameters)
    given = {name for name, _ in parse_qsl(parts.query)}
    unknown = sorted(given - known)
    if unknown:
        return f"BUS_URL names query arguments redis-py does not know: {', '.join(unknown)}"
    owned = sorted(given & _BUS_OWNS)
    if owned:  # redis-py lets the URL override them: ?socket_timeout=0.5 failed every BLPOP
        return (
            f"BUS_URL may not set {', '.join(owned)}: the bus sets its own timeouts, pool "
            "and retries (BUS_LEASE_SECONDS scales them)"
        )
    try:
        connection.parse_url(url)
    except ValueError as exc:
        return f"redis-py cannot read BUS_URL: {exc}"
    return None


def _base_url(value: str, schemes: tuple[str, ...]) -> str:
    """An upstream's base URL: one of ``schemes`` and a host (a provider failed on every call
    with one that had neither)."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes or not parts.hostname:
        shown = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"{value!r} must start with {shown} and name a host")
    return value


def _read_text(path: Path) -> str:
    """A settings file's text (UTF-8, without the byte order mark Windows editors write);
    ``ValueError`` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text") from None


def jwks_url(value: str) -> str:
    """The JWKS URL ``JWT_PUBLIC_KEY`` names (fetched: ``backend.access.jwks``), or ``""``
    for a PEM text, a file or no key."""
    return value.strip() if "://" in value else ""


def jwt_public_keys(value: str) -> list[tuple[str | None, Any]]:
    """``JWT_PUBLIC_KEY``'s verification keys and their ``kid`` (None without one): a PEM
    text (a one-line PEM's literal ``\\n``, as env files and CI secrets carry it, read as line
    breaks), or the path of a PEM file or of a JWKS file (``{"keys": [...]}``).
    ``ValueError`` saying what is wrong."""
    import jwt
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    if value.lstrip().startswith("-----"):
        text = value.strip().replace("\\r\\n", "\n").replace("\\n", "\n")
    elif jwks_url(value):
        raise ValueError(f"{value.strip()!r} is a URL: its keys are fetched (backend.access.jwks)")
    else:
        text = _read_text(Path(value.strip()))
    if text.lstrip().startswith("{"):
        try:
            jwks = jwt.PyJWKSet.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError, jwt.PyJWTError) as exc:
            raise ValueError(f"not a JWKS ({type(exc).__name__}: {exc})") from None
        return [(key.key_id, key.key) for key in jwks.keys]
    try:
        load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        try:  # PyJWT verifies with a private key too
            load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key, nor a PEM or JWKS file") from None
    return [(None, text)]


def parse_retention(value: str) -> dict[str, float]:
    """``"30"`` -> 30 days for every interval; ``"1m=30,1h=365"`` -> per interval."""
    from backend.model.intervals import INTERVALS

    value = value.strip()
    if not value:
        return {}
    if "=" not in value:
        return dict.fromkeys(INTERVALS, _positive_days(value))
    days: dict[str, float] = {}
    for part in value.split(","):
        interval, _, amount = part.strip().partition("=")
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}; known: {', '.join(INTERVALS)}")
        days[interval] = _positive_days(amount)
    return days


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of days") from None
    if days <= 0:
        raise ValueError(f"{text!r}: days must be positive")
    return days


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and ``.env``) once; raise ``ConfigError`` naming a bad variable."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a value pydantic-settings could not decode (JSON)
        field = re.search(r'field "([^"]+)"', str(exc))
        why = exc.__cause__ if exc.__cause__ is not None else exc
        where = field.group(1) if field else "settings"
        raise ConfigError(f"invalid configuration: {where}: not valid JSON ({why})") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
