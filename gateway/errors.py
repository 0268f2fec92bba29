"""The error tree of the gateway: every failure a client can see, as data.

Every failure the gateway raises on purpose is a ``GatewayFailure``: its ``kind`` says how a
client sees it (status, stable code, title), ``detail`` what the client reads, ``str()`` what
the log says. Exactly one function (``gateway.problem.problem_response``) turns a failure into
an RFC 9457 ``application/problem+json`` body. Codes are a published contract: never rename one.

    Exception
     └── GatewayFailure                 kind: ErrorKind(status, code, title)
          ├── GatewayError(kind, detail, headers, extra)   raised by stages, proxy, admin
          ├── StoreUnavailable          503 store_unavailable  (asyncpg / sqlite errors,
          │                                                      translated in the stores)
          ├── LimiterUnavailable        503 rate_limit_unavailable (redis errors, in limiters)
          ├── UpstreamError             502 upstream_unavailable, or 504 upstream_timeout
          │                                 (per instance; translated in gateway.upstream)
          ├── ValidationError           400 validation_error  (field -> message)
          ├── NotFound                  404 not_found         (admin/service lookups)
          │    └── MemberNotFound       404 member_not_found  (no such member in the workspace)
          ├── KeyLimitReached           409 key_limit_reached
          ├── Conflict                  409 conflict
          └── ConfigError               500 internal_error    (never served: CLI exit code 2)

Outside the tree, never served: ``AddressInUse`` (an ``OSError``), a listen address that
another process holds, found before the gateway starts (``gateway.launch``).

A failure's HTTP meaning is its ``kind``. Where the listener changes it, the listener says so
in one place: the proxy answers a store outage as 503 ``auth_unavailable``, because there the
store is only asked who a key belongs to (``gateway.pipeline.failure``). A failure of kind
``internal_error``, or any other exception, is a bug (``as_failure``): logged with the request
id and answered 500. CLI exit codes per class: ``gateway.cli.EXIT_CODES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    code: str
    title: str

    @property
    def type_uri(self) -> str:
        return f"https://gateway.dev/errors/{self.code}"


BAD_REQUEST = ErrorKind(400, "bad_request", "Bad request")
VALIDATION_ERROR = ErrorKind(400, "validation_error", "Validation failed")
MISSING_API_KEY = ErrorKind(401, "missing_api_key", "Missing API key")
INVALID_API_KEY = ErrorKind(401, "invalid_api_key", "Invalid API key")
REVOKED_API_KEY = ErrorKind(401, "revoked_api_key", "Revoked API key")
EXPIRED_API_KEY = ErrorKind(401, "expired_api_key", "Expired API key")
DISABLED_API_KEY = ErrorKind(401, "disabled_api_key", "Disabled API key")
# a secret-scanning report (README "Leaked keys") unsigned, or not signed by a listed key
INVALID_SIGNATURE = ErrorKind(401, "invalid_signature", "Invalid signature")
INSUFFICIENT_PERMISSIONS = ErrorKind(403, "insufficient_permissions", "Insufficient permissions")
RESOURCE_FORBIDDEN = ErrorKind(403, "resource_forbidden", "Resource forbidden")
ORIGIN_NOT_ALLOWED = ErrorKind(403, "origin_not_allowed", "Origin not allowed")
IP_NOT_ALLOWED = ErrorKind(403, "ip_not_allowed", "IP address not allowed")
ROUTE_NOT_FOUND = ErrorKind(404, "route_not_found", "Route not found")
PROJECT_NOT_FOUND = ErrorKind(404, "project_not_found", "Project not found")
NAMESPACE_NOT_FOUND = ErrorKind(404, "namespace_not_found", "Namespace not found")
NOT_FOUND = ErrorKind(404, "not_found", "Not found")
MEMBER_NOT_FOUND = ErrorKind(404, "member_not_found", "Member not found")
METHOD_NOT_ALLOWED = ErrorKind(405, "method_not_allowed", "Method not allowed")
KEY_LIMIT_REACHED = ErrorKind(409, "key_limit_reached", "Key limit reached")
CONFLICT = ErrorKind(409, "conflict", "Conflict")
REQUEST_TIMEOUT = ErrorKind(408, "request_timeout", "Request timeout")  # a slow client
PAYLOAD_TOO_LARGE = ErrorKind(413, "payload_too_large", "Payload too large")
BODY_TOO_LARGE = ErrorKind(413, "body_too_large", "Body too large")  # admin API, from the head
URI_TOO_LONG = ErrorKind(414, "uri_too_long", "URI too long")
HEADERS_TOO_LARGE = ErrorKind(431, "headers_too_large", "Request headers too large")
RATE_LIMITED = ErrorKind(429, "rate_limited", "Rate limit exceeded")
CONCURRENCY_LIMITED = ErrorKind(429, "concurrency_limited", "Too many concurrent requests")
QUOTA_EXCEEDED = ErrorKind(429, "quota_exceeded", "Quota exceeded")
CREDITS_EXHAUSTED = ErrorKind(429, "credits_exhausted", "Credits exhausted")
TOO_MANY_FAILED_AUTH = ErrorKind(
    429, "too_many_failed_auth", "Too many failed authentications"
)
INTERNAL_ERROR = ErrorKind(500, "internal_error", "Internal error")
UPSTREAM_UNAVAILABLE = ErrorKind(502, "upstream_unavailable", "Upstream unavailable")
AUTH_UNAVAILABLE = ErrorKind(503, "auth_unavailable", "Authentication unavailable")
STORE_UNAVAILABLE = ErrorKind(503, "store_unavailable", "Key store unavailable")
RATE_LIMIT_UNAVAILABLE = ErrorKind(503, "rate_limit_unavailable", "Rate limiting unavailable")
UPSTREAM_TIMEOUT = ErrorKind(504, "upstream_timeout", "Upstream timeout")
# the public keys of secret-scanning reports could not be fetched (and none are cached)
SIGNING_KEYS_UNAVAILABLE = ErrorKind(503, "signing_keys_unavailable", "Signing keys unavailable")

UNAUTHORIZED_KINDS = frozenset(
    {MISSING_API_KEY, INVALID_API_KEY, REVOKED_API_KEY, EXPIRED_API_KEY, DISABLED_API_KEY}
)

NO_HEADERS: Mapping[str, str] = MappingProxyType({})
RETRY_SOON: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})
NO_EXTRA: Mapping[str, object] = MappingProxyType({})


class GatewayFailure(Exception):
    """Base of every failure raised on purpose. Subclasses name their ``kind``; ``detail``
    (what a client reads) is ``public_detail`` if set, else the message, else the title."""

    kind: ErrorKind = INTERNAL_ERROR
    headers: Mapping[str, str] = NO_HEADERS
    extra: Mapping[str, object] = NO_EXTRA  # problem+json extension members
    public_detail = ""  # set where the message is for the log only

    @property
    def detail(self) -> str:
        return self.public_detail or str(self) or self.kind.title


class GatewayError(GatewayFailure):
    """A failure with a client-facing status and stable code; rendered once, never logged raw."""

    def __init__(
        self,
        kind: ErrorKind,
        detail: str = "",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(detail or kind.title)
        self.kind = kind
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class StoreUnavailable(GatewayFailure):
    """The key store could not answer (connection refused, timeout, locked database).
    The message names the driver's error: it goes to the log, never to a client."""

    kind = STORE_UNAVAILABLE
    public_detail = "the key store is unavailable"


class LimiterUnavailable(GatewayFailure):
    """The rate-limit backend could not answer (the message, for the log, says why)."""

    kind = RATE_LIMIT_UNAVAILABLE
    headers = RETRY_SOON
    public_detail = "rate limiting is unavailable"


class UpstreamError(GatewayFailure):
    """The upstream exchange failed. ``timeout`` selects 504 over 502; the message (which
    may name the upstream's address) goes to the log only."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.kind = UPSTREAM_TIMEOUT if timeout else UPSTREAM_UNAVAILABLE
        if timeout:
            self.public_detail = "the upstream did not answer"
        else:
            self.public_detail = "the upstream could not be reached"


class ConfigError(GatewayFailure):
    """A config file problem; the message names the file, the dotted path and the value."""


class ValidationError(GatewayFailure):
    """Bad input to a service function: every failing field with its message."""

    kind = VALIDATION_ERROR
    public_detail = "the request has invalid fields"

    def __init__(self, errors: dict[str, str] | None = None) -> None:
        super().__init__()
        self.errors = errors if errors is not None else {}
        self.extra = {"errors": self.errors}

    def __str__(self) -> str:
        return "; ".join(f"{name}: {msg}" for name, msg in self.errors.items())


class NotFound(GatewayFailure):
    """A workspace, project, namespace or key that does not exist (or is not visible)."""

    kind = NOT_FOUND


class MemberNotFound(NotFound):
    """No member with that id or email in the workspace (a key's owner, or the member named)."""

    kind = MEMBER_NOT_FOUND


class KeyLimitReached(GatewayFailure):
    """The owner already holds ``keys.max_active_per_user`` active keys."""

    kind = KEY_LIMIT_REACHED


class Conflict(GatewayFailure):
    """A name or id already taken (e.g. a namespace name inside its workspace)."""

    kind = CONFLICT


# what a client learns of a bug (the listener logs the exception itself); rendered, never raised
INTERNAL = GatewayError(INTERNAL_ERROR, "internal error")


def as_failure(exc: BaseException) -> GatewayFailure | None:
    """``exc`` if it is a failure that says what went wrong; None for anything else (a bug)."""
    if isinstance(exc, GatewayFailure) and exc.kind is not INTERNAL_ERROR:
        return exc
    return None


class AddressInUse(OSError):
    """A listen address another process holds (``gateway.launch``); the message names it."""
