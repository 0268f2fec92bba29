"""The only reader of the YAML config and the environment: frozen dataclasses and one strict loader.

Every error names the file, the dotted path and the bad value, e.g.
``config/gateway.yaml: routes[0].rate_limit.requests: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LIMITER_POLICIES = ("open", "closed", "local")
AUTH_MODES = ("required", "none")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests`` admitted per sliding ``window`` seconds."""

    requests: int
    window: float


@dataclass(frozen=True, slots=True)
class KeysConfig:
    prefixes: Mapping[str, str]  # environment ("live" | "test") -> prefix, e.g. "sk_live"
    max_active_per_user: int = 10
    hash_pepper: str | None = None  # HMAC-SHA256 key when set, else plain SHA-256


@dataclass(frozen=True, slots=True)
class KeyCacheConfig:
    """Extension: the in-memory key cache."""

    max_entries: int = 100_000
    ttl: float = 60.0  # positive entries are re-read after this many seconds
    negative_ttl: float = 30.0  # unknown hashes are remembered this long
    stale_if_error: float = 300.0  # a cached key keeps working this long while the store is down
    poll_interval: float = 0.5  # change-feed poll (SQLite); other nodes' changes seen within this


@dataclass(frozen=True, slots=True)
class Defaults:
    rate_limit: RateLimit = RateLimit(100, 60.0)
    max_concurrent: int | None = 10
    on_limiter_error: str = "local"


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...]
    max_age: int = 600
    allow_methods: tuple[str, ...] = ()  # empty: the route's methods as requested
    allow_headers: tuple[str, ...] = ()  # empty: echo Access-Control-Request-Headers
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    path: str  # prefix, may hold {param} segments; always ends with "/"
    upstreams: tuple[str, ...]  # base URLs, round robin
    strip_prefix: bool = False
    auth: str = "required"
    # method -> required permissions; key "*" applies to every method not listed
    permissions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    max_concurrent: int | None = None  # extension: overrides defaults.max_concurrent
    on_limiter_error: str | None = None  # extension: overrides defaults.on_limiter_error
    timeout: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    cors: CorsConfig | None = None
    resource: str | None = None  # a path parameter of ``path`` checked against key scopes
    operations: Mapping[str, str] = field(default_factory=dict)  # method -> scope operation


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it was read from, for messages
    listen: Listen = Listen("0.0.0.0", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 8081)
    workers: int = 1
    database: str = "sqlite:///./gateway.db"
    redis: str | None = None
    keys: KeysConfig = KeysConfig(prefixes={"live": "sk_live", "test": "sk_test"})
    implies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: Defaults = Defaults()
    key_cache: KeyCacheConfig = KeyCacheConfig()
    routes: tuple[RouteConfig, ...] = ()
