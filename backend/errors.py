"""The one exception hierarchy of Candlewire.

    CandlewireError
    ├── ConfigError                 a setting is missing or invalid (names the variable)
    ├── ProtocolError               a client request cannot be served (carries a wire `code`)
    │   ├── IndicatorError          an indicator request cannot be computed
    │   └── RuleError               a scanner or alert rule is malformed
    ├── StorageError                the SQLite databases failed
    ├── AccessDenied                a caller without (enough) credentials (HTTP 401/403)
    └── ProviderError               a provider could not answer
        ├── ProviderUnavailable     retryable: process down, upstream unreachable, timeout
        │   └── RateLimited         retryable after `retry_after` seconds
        └── ProviderFatal           not retryable: bad credentials, unknown symbol, ...
            ├── AuthFailed
            └── UnknownSymbol

Vendor exceptions are translated into these at the adapter edge and chained with ``from``.
Every exception here can be pickled, so a provider process can send it to the hub.
"""

from __future__ import annotations


class CandlewireError(Exception):
    """Root of every error Candlewire raises on purpose."""


class ConfigError(CandlewireError):
    """A configuration value is missing or invalid; the message names the variable."""


class StorageError(CandlewireError):
    """Reading or writing one of the SQLite databases failed."""


class AccessDenied(CandlewireError):
    """A caller that may not do this: 401 without valid credentials, 403 without permission
    (or from a foreign ``Origin``). The message never contains the credential."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[AccessDenied], tuple[int, str]]:
        return (type(self), (self.status, self.message))


class ProtocolError(CandlewireError):
    """A client request that cannot be served.

    ``code`` is the machine-readable error code sent in the ``error`` message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str]]:
        return (type(self), (self.code, self.message))


class IndicatorError(ProtocolError):
    """An indicator request that cannot be computed: unknown indicator, bad inputs, missing
    columns, too little history. The hub answers ``error`` and the empty reply the front end
    waits for (``indicator_init`` / ``indicator_history`` with ``data: []``)."""


class RuleError(ProtocolError):
    """A scanner or alert rule that is malformed or names an unknown operator."""


class ProviderError(CandlewireError):
    """A provider could not answer a request."""

    code = "provider_error"


class ProviderUnavailable(ProviderError):
    """Retryable: the provider process is down, its upstream unreachable, or it timed out."""

    code = "provider_unavailable"


class RateLimited(ProviderUnavailable):
    """Retryable after ``retry_after`` seconds: the upstream asked us to slow down."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[RateLimited], tuple[str, float | None]]:
        return (type(self), (str(self), self.retry_after))


class ProviderFatal(ProviderError):
    """Not retryable: asking again will give the same answer."""

    code = "provider_fatal"


class AuthFailed(ProviderFatal):
    """The upstream rejected our credentials."""

    code = "auth_failed"


class UnknownSymbol(ProviderFatal):
    """The upstream does not know this symbol or interval."""

    code = "unknown_symbol"
