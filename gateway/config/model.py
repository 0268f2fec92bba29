"""The config, as frozen dataclasses: every YAML key is one field here, with its parser and its
default (the only place a default is written). ``section.py`` says how a field declares a key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import parsers
from gateway.config.listeners import listener
from gateway.config.parsers import Listen
from gateway.config.plans import plan_table
from gateway.config.routes import (
    cors_rules,
    health_path,
    health_rules,
    origin,
    route_name,
    route_path,
    route_permissions,
    route_table,
    scope_operations,
    upstream_urls,
)
from gateway.config.scanning import PublicKeysSource, public_keys_source
from gateway.config.section import option, required, section, subsection


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests`` admitted per sliding ``window`` seconds."""

    requests: int = required(parsers.count)
    window: float = required(parsers.positive_number)


@dataclass(frozen=True, slots=True)
class RouteRateLimit:
    """A route's own ``rate_limit``; ``shadow: true`` (README "Shadow mode"): it refuses no one,
    and the requests it would refuse are counted (keyed routes only)."""

    requests: int = required(parsers.count)
    window: float = required(parsers.positive_number)
    shadow: bool = option(False, parsers.boolean)


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """``prefixes``: environment -> key prefix; ``hash_pepper``: HMAC-SHA256 key, else SHA-256."""

    prefixes: Mapping[str, str] = option(
        {"live": "sk_live", "test": "sk_test"}, parsers.key_prefixes
    )
    max_active_per_user: int = option(10, parsers.count)
    hash_pepper: str | None = option(None, parsers.pepper)


@dataclass(frozen=True, slots=True)
class KeyCacheConfig:
    """Extension: the in-memory key cache. In seconds: ``ttl`` before a cached key is re-read,
    ``negative_ttl`` an unknown hash is remembered, ``stale_if_error`` a cached key keeps
    working while the store is down, ``poll_interval`` of the change feed (SQLite)."""

    max_entries: int = option(100_000, parsers.count)
    ttl: float = option(60.0, parsers.positive_number)
    negative_ttl: float = option(30.0, parsers.positive_number)
    stale_if_error: float = option(300.0, parsers.positive_number)
    poll_interval: float = option(0.5, parsers.positive_number)


@dataclass(frozen=True, slots=True)
class KeyStoreConfig:
    """Extension: seconds one store call (Postgres command and lock / SQLite busy wait) and one
    Postgres connect may take; the most Postgres connections per process."""

    timeout: float = option(5.0, parsers.positive_number)
    connect_timeout: float = option(5.0, parsers.positive_number)
    pool_size: int = option(10, parsers.integer(1, 1000))


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Extension: the Redis limiter (when ``redis`` is set): the prefix of its keys, seconds a
    decision may take (then ``on_limiter_error``), seconds a dead node's concurrency slots stay
    taken, and the nodes sharing the limits (``local`` gives each 1/(nodes*workers))."""

    prefix: str = option("gw:", parsers.redis_prefix)
    timeout: float = option(0.25, parsers.positive_number)
    lease_ttl: float = option(30.0, parsers.positive_number)
    expected_nodes: int = option(1, parsers.integer(1, 10_000))


LOG_LEVEL = parsers.choice("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Extension: log lines on stderr (gateway.logs); ``access_log``: one per proxied request;
    ``libraries``: the level of the drivers' and aiohttp's own loggers (asyncpg, aiosqlite,
    redis, aiohttp, asyncio), kept apart so ``level: debug`` shows the gateway's decisions."""

    level: str = option("info", LOG_LEVEL)
    format: str = option("json", parsers.choice("json", "text"))
    access_log: bool = option(True, parsers.boolean)
    libraries: str = option("warning", LOG_LEVEL)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Request limits and client deadlines (README "Security and reliability"). The parser's
    (the first three) and the connection's (from ``header_timeout`` on) take effect at start;
    the others on reload too. In seconds: ``header_timeout`` for a whole request head,
    ``body_timeout`` a body may stall (and the grace before ``min_body_rate``, bytes a second,
    applies), ``idle_timeout`` of a keep-alive connection between requests;
    ``max_connections``: open connections on the public listener, per process (None: no cap)."""

    max_target_bytes: int = option(8192, parsers.integer(256))  # past it: 414 uri_too_long
    max_header_line_bytes: int = option(8192, parsers.integer(256))  # 431 headers_too_large
    max_headers: int = option(100, parsers.integer(1, 10_000))  # 431
    max_header_bytes: int = option(64 * 1024, parsers.integer(1024))  # all of them: 431
    admin_max_body_bytes: int = option(1024 * 1024, parsers.integer(1))  # 413 body_too_large
    header_timeout: float = option(10.0, parsers.positive_number)  # 408 request_timeout
    body_timeout: float = option(10.0, parsers.positive_number)  # 408 request_timeout
    min_body_rate: int = option(1024, parsers.integer(0))  # 0: only body_timeout applies
    idle_timeout: float = option(75.0, parsers.positive_number)  # closed
    max_connections: int | None = option(10_000, parsers.nullable(parsers.count))  # closed


@dataclass(frozen=True, slots=True)
class UsageRetention:
    """How long buckets of each granularity are kept (README "Usage over time")."""

    minute_hours: float = option(48.0, parsers.positive_number)
    hour_days: float = option(90.0, parsers.positive_number)
    day_days: float = option(400.0, parsers.positive_number)


@dataclass(frozen=True, slots=True)
class UsageConfig:
    """Usage over time (README "Usage over time"): seconds between a node's writes (a crash
    loses at most that much) and between roll-ups; the buckets (key x minute) a node keeps
    while the store is down, past which the oldest are dropped."""

    flush_interval: float = option(10.0, parsers.positive_number)
    rollup_interval: float = option(60.0, parsers.positive_number)
    max_pending_buckets: int = option(100_000, parsers.integer(1))
    retention: UsageRetention = subsection(UsageRetention)


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The web console (README "Web console"): ``public_url`` is the base of the sign-in links
    (default: the admin listener's address); ``insecure_cookies`` drops the cookie's ``Secure``
    flag (plain-http admin listeners); in seconds, ``idle_timeout`` of a session and
    ``link_ttl`` of a sign-in link; ``sign_in_rate_limit``: sign-in attempts per client address."""

    public_url: str | None = option(None, parsers.public_url)
    insecure_cookies: bool = option(False, parsers.boolean)
    idle_timeout: float = option(12 * 3600.0, parsers.positive_number)
    link_ttl: float = option(15 * 60.0, parsers.positive_number)
    sign_in_rate_limit: RateLimit = option(RateLimit(10, 60.0), section(RateLimit))


@dataclass(frozen=True, slots=True)
class GithubScanningConfig:
    """GitHub's secret-scanning reports (README "Leaked keys"): ``public_keys`` is a file or a
    URL (``gateway.config.scanning``); for a URL, in seconds: ``cache_ttl`` fetched keys are
    kept, ``fetch_timeout`` of one fetch, and ``refetch_interval``, the least time between two
    fetches when a report names a key identifier that is not among them (or a fetch failed),
    so forged identifiers cannot make the gateway hammer the URL."""

    public_keys: PublicKeysSource = required(public_keys_source)
    cache_ttl: float = option(3600.0, parsers.positive_number)
    fetch_timeout: float = option(5.0, parsers.positive_number)
    refetch_interval: float = option(60.0, parsers.positive_number)


@dataclass(frozen=True, slots=True)
class SecretScanningConfig:
    """Leaked-key reports from secret scanners (README "Leaked keys"); None: the endpoint of
    that scanner answers 404."""

    github: GithubScanningConfig | None = option(None, section(GithubScanningConfig))


@dataclass(frozen=True, slots=True)
class Defaults:
    rate_limit: RateLimit = option(RateLimit(100, 60.0), section(RateLimit))
    max_concurrent: int | None = option(10, parsers.nullable(parsers.count))
    on_limiter_error: str = option("local", parsers.limiter_policy)
    algorithm: str = option("sliding_log", parsers.algorithm)  # of every key-wide budget


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """A workspace's admitted requests per UTC calendar ``day`` / ``month`` (None: no quota);
    ``shadow: true``: nobody is refused, the requests past it are counted."""

    day: int | None = option(None, parsers.count)
    month: int | None = option(None, parsers.count)
    shadow: bool = option(False, parsers.boolean)  # README "Shadow mode": counted, not refused


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """A plan a workspace subscribes to (README "Rate limits"): each field
    left out falls through to ``defaults`` (``max_active_keys_per_user``: ``keys``')."""

    name: str  # the key of ``plans`` it is declared under (not a key of its own)
    rate_limit: RateLimit | None = option(None, section(RateLimit))
    quota: QuotaConfig = subsection(QuotaConfig)
    max_concurrent: int | None = option(None, parsers.count)
    max_active_keys_per_user: int | None = option(None, parsers.count)


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """Empty ``allow_methods``: the method asked for; empty ``allow_headers``: those asked for."""

    allow_origins: tuple[str, ...] = required(parsers.tuple_of(origin, non_empty=True))
    max_age: int = option(600, parsers.integer(0))
    allow_methods: tuple[str, ...] = option((), parsers.tuple_of(parsers.method))
    allow_headers: tuple[str, ...] = option((), parsers.header_names)
    expose_headers: tuple[str, ...] = option((), parsers.header_names)
    allow_credentials: bool = option(False, parsers.boolean)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """A route's upstream targets (README "Upstream health"): one that fails ``failures``
    requests in a row (``fail_on_5xx``: a 5xx answer counts as failed too) is ejected for
    ``eject_seconds``, then probed with one request; each failed probe doubles the time out, up
    to ``max_eject_seconds``. With ``path``: active checks, a GET of ``path`` on every target
    each ``interval`` seconds (``timeout`` each)."""

    failures: int = option(3, parsers.integer(1, 1000))
    eject_seconds: float = option(10.0, parsers.positive_number)
    max_eject_seconds: float = option(300.0, parsers.positive_number)
    fail_on_5xx: bool = option(False, parsers.boolean)
    path: str | None = option(None, health_path)
    interval: float = option(10.0, parsers.positive_number)
    timeout: float = option(2.0, parsers.positive_number)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """``path``: a prefix ending in "/", may hold {param} segments; ``mode``: ``proxy``
    forwards to ``upstreams`` (round robin, required), ``verify`` answers forward-auth checks
    for the other routes and takes nothing else (README "Forward auth"); ``permissions``:
    method -> permissions ("*": every method not listed); ``resource``: a path parameter checked
    against the key's scopes with ``operations`` (method -> operation)."""

    name: str = required(route_name)
    path: str = required(route_path)
    mode: str = option("proxy", parsers.choice("proxy", "verify"))
    upstreams: tuple[str, ...] = option((), upstream_urls, key="upstream")  # proxy: required
    health: HealthConfig = option(HealthConfig(), section(HealthConfig, health_rules))
    strip_prefix: bool = option(False, parsers.boolean)
    auth: str = option("required", parsers.choice("required", "none"))
    permissions: Mapping[str, tuple[str, ...]] = option({}, route_permissions)
    rate_limit: RouteRateLimit | None = option(None, section(RouteRateLimit))
    max_concurrent: int | None = option(None, parsers.count)  # extension: over the defaults'
    on_limiter_error: str | None = option(None, parsers.limiter_policy)  # extension: likewise
    algorithm: str | None = option(None, parsers.algorithm)  # of its own rate_limit
    cost: int = option(1, parsers.count)  # credits a request spends (README "Credits")
    timeout: float = option(30.0, parsers.positive_number)
    max_body_bytes: int = option(10 * 1024 * 1024, parsers.integer(0))
    cors: CorsConfig | None = option(None, section(CorsConfig, cors_rules))
    resource: str | None = option(None, parsers.string)
    operations: Mapping[str, str] = option({}, scope_operations)


@dataclass(frozen=True, slots=True)
class Config:
    """``drain_timeout`` (extension): seconds in-flight requests get after SIGTERM."""

    source: str  # the file it was read from, for messages (not a key)
    listen: Listen = option(Listen("0.0.0.0", 8080), listener)  # "host:port" or {address, tls}
    admin_listen: Listen = option(Listen("127.0.0.1", 8081), listener)
    workers: int = option(1, parsers.integer(1, 64))
    drain_timeout: float = option(30.0, parsers.positive_number)
    database: str = option("sqlite:///./gateway.db", parsers.database_url)
    redis: str | None = option(None, parsers.redis_url)
    # README "Client address": the proxies whose X-Forwarded-For is believed
    trusted_proxies: tuple[parsers.Network, ...] = option((), parsers.tuple_of(parsers.network))
    # README "Unauthenticated traffic": failed authentications per client address (null: none)
    failed_auth: RateLimit | None = option(
        RateLimit(600, 60.0), parsers.nullable(section(RateLimit))
    )
    keys: KeysConfig = subsection(KeysConfig)
    implies: Mapping[str, tuple[str, ...]] = option(
        {}, parsers.implications, key="permissions.implies"
    )
    defaults: Defaults = subsection(Defaults)
    key_cache: KeyCacheConfig = subsection(KeyCacheConfig)
    key_store: KeyStoreConfig = subsection(KeyStoreConfig)
    limiter: LimiterConfig = subsection(LimiterConfig)
    logging: LoggingConfig = subsection(LoggingConfig)
    limits: LimitsConfig = subsection(LimitsConfig)
    usage: UsageConfig = subsection(UsageConfig)
    console: ConsoleConfig = subsection(ConsoleConfig)
    secret_scanning: SecretScanningConfig = subsection(SecretScanningConfig)
    plans: Mapping[str, PlanConfig] = option({}, plan_table(PlanConfig))
    default_plan: str | None = option(None, parsers.string)  # for workspaces without one
    routes: tuple[RouteConfig, ...] = required(route_table(RouteConfig), kw_only=True)
