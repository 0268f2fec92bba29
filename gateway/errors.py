"""The error tree of the gateway: every failure a client can see, as data.

Stages raise; exactly one place (``gateway.pipeline.errors``) renders a ``GatewayError`` as an
RFC 9457 ``application/problem+json`` body. Codes are a published contract: never rename one.

    GatewayError(kind, detail, headers)     raised by pipeline stages and the proxy
      kind: ErrorKind(status, code, title)  one constant per row of SPEC §5

    StoreUnavailable      key store unreachable      (asyncpg / sqlite errors, translated in stores)
    LimiterUnavailable    rate-limit backend down    (redis errors, translated in limiters)
    UpstreamError         connect / reset / timeout  (translated in gateway.upstream)
    ConfigError           bad config file            (gateway.config; CLI exit code 2)
    ValidationError       bad admin / CLI input      (field -> message)
    NotFound, Conflict    admin/service lookups and invariants
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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
INSUFFICIENT_PERMISSIONS = ErrorKind(403, "insufficient_permissions", "Insufficient permissions")
RESOURCE_FORBIDDEN = ErrorKind(403, "resource_forbidden", "Resource forbidden")
ORIGIN_NOT_ALLOWED = ErrorKind(403, "origin_not_allowed", "Origin not allowed")
ROUTE_NOT_FOUND = ErrorKind(404, "route_not_found", "Route not found")
PROJECT_NOT_FOUND = ErrorKind(404, "project_not_found", "Project not found")
NAMESPACE_NOT_FOUND = ErrorKind(404, "namespace_not_found", "Namespace not found")
NOT_FOUND = ErrorKind(404, "not_found", "Not found")
METHOD_NOT_ALLOWED = ErrorKind(405, "method_not_allowed", "Method not allowed")
KEY_LIMIT_REACHED = ErrorKind(409, "key_limit_reached", "Key limit reached")
CONFLICT = ErrorKind(409, "conflict", "Conflict")
PAYLOAD_TOO_LARGE = ErrorKind(413, "payload_too_large", "Payload too large")
RATE_LIMITED = ErrorKind(429, "rate_limited", "Rate limit exceeded")
CONCURRENCY_LIMITED = ErrorKind(429, "concurrency_limited", "Too many concurrent requests")
INTERNAL_ERROR = ErrorKind(500, "internal_error", "Internal error")
UPSTREAM_UNAVAILABLE = ErrorKind(502, "upstream_unavailable", "Upstream unavailable")
AUTH_UNAVAILABLE = ErrorKind(503, "auth_unavailable", "Authentication unavailable")
RATE_LIMIT_UNAVAILABLE = ErrorKind(503, "rate_limit_unavailable", "Rate limiting unavailable")
UPSTREAM_TIMEOUT = ErrorKind(504, "upstream_timeout", "Upstream timeout")

UNAUTHORIZED_KINDS = frozenset({MISSING_API_KEY, INVALID_API_KEY, REVOKED_API_KEY, EXPIRED_API_KEY})


class GatewayError(Exception):
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
        self.detail = detail or kind.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class StoreUnavailable(Exception):
    """The key store could not answer (connection refused, timeout, locked database)."""


class LimiterUnavailable(Exception):
    """The rate-limit backend could not answer."""


class UpstreamError(Exception):
    """The upstream exchange failed. ``timeout`` selects 504 over 502."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class ConfigError(Exception):
    """A config file problem; the message names the file, the dotted path and the value."""


@dataclass
class ValidationError(Exception):
    """Bad input to a service function: every failing field with its message."""

    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{name}: {msg}" for name, msg in self.errors.items())


class NotFound(Exception):
    """A workspace, project, namespace or key that does not exist (or is not visible)."""


class KeyLimitReached(Exception):
    """The owner already holds ``keys.max_active_per_user`` active keys."""


class Conflict(Exception):
    """A name or id already taken (e.g. a namespace name inside its workspace)."""
