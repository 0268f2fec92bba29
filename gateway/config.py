"""The only reader of the YAML config and the environment: frozen dataclasses and one strict loader.

Every error names the file, the dotted path and the bad value, e.g.
``config/gateway.yaml: routes[0].rate_limit.requests: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from ipaddress import IPv6Address
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

import yaml
from redis.asyncio.connection import parse_url as redis_parse_url

from gateway.errors import ConfigError

LIMITER_POLICIES = ("open", "closed", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
AUTH_MODES = ("required", "none")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6, as written in config
        return f"{host}:{self.port}"


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
class KeyStoreConfig:
    """Extension: how the gateway talks to its key store."""

    timeout: float = 5.0  # seconds one store call may take (Postgres command / SQLite busy wait)
    connect_timeout: float = 5.0  # seconds to open a connection (Postgres)
    pool_size: int = 10  # most connections per process (Postgres)


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Extension: the Redis limiter (used when ``redis`` is set)."""

    prefix: str = "gw:"  # every Redis key starts with this
    timeout: float = 0.25  # seconds a decision may take; then on_limiter_error applies
    lease_ttl: float = 30.0  # seconds a dead node's concurrency slots stay taken
    expected_nodes: int = 1  # gateway nodes sharing the limits: `local` gives each 1/(N*workers)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Extension: log lines on stderr (gateway.logs)."""

    level: str = "info"  # debug, info, warning, error: the least severe line written
    format: str = "json"  # json: one object per line; text: for a terminal
    access_log: bool = True  # one line per proxied request


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
    drain_timeout: float = 30.0  # extension: seconds in-flight requests get after SIGTERM
    database: str = "sqlite:///./gateway.db"
    redis: str | None = None
    keys: KeysConfig = KeysConfig(prefixes={"live": "sk_live", "test": "sk_test"})
    implies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: Defaults = Defaults()
    key_cache: KeyCacheConfig = KeyCacheConfig()
    key_store: KeyStoreConfig = KeyStoreConfig()
    logging: LoggingConfig = LoggingConfig()
    limiter: LimiterConfig = LimiterConfig()
    routes: tuple[RouteConfig, ...] = ()


# --------------------------------------------------------------------------------------------
# The loader
#
#   load_config(path, environ)  read + parse the YAML file      -> Config  (or ConfigError)
#   parse_config(data, source, environ)  validate a parsed tree -> Config  (or ConfigError)
#
# Order: the top level must be a mapping; GATEWAY_DATABASE_URL / GATEWAY_REDIS_URL replace
# ``database`` / ``redis`` (never interpolated); every other string scalar is interpolated
# (``${VAR}``, ``${VAR:-default}``, ``$$``); then one validator per section builds the frozen
# dataclasses. Every failure is one ConfigError line: ``<file>: <dotted.path>: <what>, got <repr>``.
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
Parser = Callable[["_Ctx", object, str], T]

DEFAULT_OPERATIONS: Mapping[str, str] = {
    "GET": "read",
    "HEAD": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}

_TOP_KEYS = (
    "listen",
    "admin_listen",
    "workers",
    "drain_timeout",
    "database",
    "redis",
    "keys",
    "permissions",
    "defaults",
    "key_cache",
    "key_store",
    "limiter",
    "logging",
    "routes",
)
_KEYS_KEYS = ("prefixes", "max_active_per_user", "hash_pepper")
_ENVIRONMENTS = ("live", "test")
_PERMISSIONS_KEYS = ("implies",)
_DEFAULTS_KEYS = ("rate_limit", "max_concurrent", "on_limiter_error")
_RATE_LIMIT_KEYS = ("requests", "window")
_KEY_CACHE_KEYS = ("max_entries", "ttl", "negative_ttl", "stale_if_error", "poll_interval")
_KEY_STORE_KEYS = ("timeout", "connect_timeout", "pool_size")
_LOGGING_KEYS = ("level", "format", "access_log")
_LIMITER_KEYS = ("prefix", "timeout", "lease_ttl", "expected_nodes")
_ROUTE_KEYS = (
    "name",
    "path",
    "upstream",
    "strip_prefix",
    "auth",
    "permissions",
    "rate_limit",
    "max_concurrent",
    "on_limiter_error",
    "timeout",
    "max_body_bytes",
    "cors",
    "resource",
    "operations",
)
_ROUTE_REQUIRED = ("name", "path", "upstream")
_CORS_KEYS = (
    "allow_origins",
    "max_age",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "allow_credentials",
)

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_PERMISSION_RE = re.compile(r"[A-Za-z0-9_.:*-]{1,100}")
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")  # no braces: they are hash tags
_ROUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (header names)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HOST_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PARAM_SEGMENT_RE = re.compile(r"\{([^{}]*)\}")
_INTERPOLATION_RE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_WHOLE_EXPRESSION_RE = re.compile(r"\$\{[^}]*\}")
_VARIABLE_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_CREDENTIALS_RE = re.compile(r"(://[^/@:\s'\"]*):[^/@\s'\"]*@")
_MAX_SHOWN = 120

_DEFAULT_CONFIG = Config(source="")
_DEFAULT_KEYS = _DEFAULT_CONFIG.keys
_DEFAULT_DEFAULTS = Defaults()
_DEFAULT_KEY_CACHE = KeyCacheConfig()
_DEFAULT_KEY_STORE = KeyStoreConfig()
_DEFAULT_LOGGING = LoggingConfig()
_DEFAULT_LIMITER = LimiterConfig()
_DEFAULT_ROUTE = RouteConfig(name="", path="/", upstreams=())
_DEFAULT_CORS = CorsConfig(allow_origins=())


# ---- public API ----------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML config at ``path``; ``environ`` defaults to
    ``os.environ``. Raises ConfigError (one line naming the file) on any problem."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 (byte offset {exc.start})") from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"{source}: cannot read config file: {reason}") from None
    data = _load_yaml(text, source)
    return parse_config(data, source, os.environ if environ is None else environ)


def parse_config(data: object, source: str, environ: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML tree (``source`` names it in messages)."""
    ctx = _Ctx(source, environ)
    top = _mapping(ctx, data, "", _TOP_KEYS, required=("routes",))
    overrides = _env_overrides(ctx)  # replace the file's value, which is then not even read
    raw = {key: value for key, value in top.items() if key not in overrides}
    database = overrides.get("database") or _DEFAULT_CONFIG.database
    top = _interpolate_mapping(ctx, raw, "")
    listen = _opt(ctx, top, "", "listen", _listen, _DEFAULT_CONFIG.listen)
    admin_listen = _opt(ctx, top, "", "admin_listen", _listen, _DEFAULT_CONFIG.admin_listen)
    if admin_listen.port == listen.port:
        ctx.fail(
            "admin_listen",
            f"must not use the public listener's port {listen.port} (the admin API is never "
            "exposed on the public port)",
            top.get("admin_listen", str(admin_listen)),
        )
    return Config(
        source=source,
        listen=listen,
        admin_listen=admin_listen,
        workers=_opt(ctx, top, "", "workers", _integer(1, 64), _DEFAULT_CONFIG.workers),
        drain_timeout=_opt(
            ctx, top, "", "drain_timeout", _positive_number, _DEFAULT_CONFIG.drain_timeout
        ),
        database=_opt(ctx, top, "", "database", _database, database),
        redis=_opt(ctx, top, "", "redis", _redis, overrides.get("redis")),
        keys=_opt(ctx, top, "", "keys", _keys, _DEFAULT_KEYS),
        implies=_opt(ctx, top, "", "permissions", _permissions_section, {}),
        defaults=_opt(ctx, top, "", "defaults", _defaults, _DEFAULT_DEFAULTS),
        key_cache=_opt(ctx, top, "", "key_cache", _key_cache, _DEFAULT_KEY_CACHE),
        key_store=_opt(ctx, top, "", "key_store", _key_store, _DEFAULT_KEY_STORE),
        logging=_opt(ctx, top, "", "logging", _logging, _DEFAULT_LOGGING),
        limiter=_opt(ctx, top, "", "limiter", _limiter, _DEFAULT_LIMITER),
        routes=_routes(ctx, top["routes"], "routes"),
    )


# ---- context, messages, YAML -----------------------------------------------------------------


class _Ctx:
    """The file name (for messages), the environment, and the exact substituted text of every
    scalar that was re-typed by interpolation (so string fields keep e.g. a pepper ``0123``)."""

    __slots__ = ("environ", "retyped", "source")

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.retyped: dict[str, str] = {}

    def fail(self, path: str, what: str, value: object) -> NoReturn:
        raise ConfigError(f"{self.source}: {path or '(top level)'}: {what}, got {_show(value)}")


def _show(value: object) -> str:
    """repr of a bad value for a one-line message: credentials masked, long values shortened."""
    text = _CREDENTIALS_RE.sub(r"\1:***@", repr(value))
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that also rejects a key repeated in one mapping (YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = str(key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key, got {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


def _load_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if problem.startswith("duplicate key"):
            raise ConfigError(f"{source}: {where}: {problem}") from None
        raise ConfigError(f"{source}: {where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None


# ---- environment: overrides and ${VAR} interpolation -----------------------------------------


def _env_overrides(ctx: _Ctx) -> dict[str, str | None]:
    """GATEWAY_DATABASE_URL (ignored when empty) and GATEWAY_REDIS_URL ("" or "null": None)."""
    out: dict[str, str | None] = {}
    database = ctx.environ.get("GATEWAY_DATABASE_URL", "").strip()
    if database:
        out["database"] = _database(ctx, database, "database (from GATEWAY_DATABASE_URL)")
    if "GATEWAY_REDIS_URL" in ctx.environ:
        redis = ctx.environ["GATEWAY_REDIS_URL"].strip()
        out["redis"] = _redis(
            ctx, None if redis in ("", "null") else redis, "redis (from GATEWAY_REDIS_URL)"
        )
    return out


def _interpolate_mapping(ctx: _Ctx, data: Mapping[str, object], path: str) -> dict[str, object]:
    return {key: _interpolate(ctx, value, _join(path, key)) for key, value in data.items()}


def _interpolate(ctx: _Ctx, value: object, path: str) -> object:
    if isinstance(value, str):
        return _interpolate_scalar(ctx, value, path)
    if isinstance(value, dict):
        return {key: _interpolate(ctx, item, _join(path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(ctx, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def _interpolate_scalar(ctx: _Ctx, text: str, path: str) -> object:
    if "$" not in text:
        return text
    substituted = _INTERPOLATION_RE.sub(lambda match: _substitute(ctx, match, text, path), text)
    if not _WHOLE_EXPRESSION_RE.fullmatch(text):
        return substituted
    # exactly one ${...}: the value gets its YAML type (int, float, bool, null), else stays text
    try:
        typed = yaml.load(substituted, Loader=_StrictLoader)
    except yaml.YAMLError:
        return substituted
    if typed is None or isinstance(typed, bool | int | float):
        ctx.retyped[path] = substituted
        return typed
    return substituted


def _substitute(ctx: _Ctx, match: re.Match[str], text: str, path: str) -> str:
    if match.group(0) == "$$":
        return "$"
    body = match.group("body")
    variable = _VARIABLE_RE.fullmatch(body) if body is not None else None
    if variable is None:
        ctx.fail(path, "bad ${...} expression (use ${VAR}, ${VAR:-default} or $$ for '$')", text)
    default = variable.group("default")
    if default is not None and "${" in default:
        ctx.fail(path, "nested ${...} in a default is not supported", text)
    name = variable.group("name")
    current = ctx.environ.get(name)
    if default is not None and not current:
        return default
    if current is None:
        ctx.fail(path, f"environment variable {name} is not set and has no ':-' default", text)
    return current


# ---- generic validators ----------------------------------------------------------------------


def _opt(
    ctx: _Ctx, data: Mapping[str, object], path: str, key: str, parse: Parser[T], default: T
) -> T:
    """``parse`` the value at ``key`` if present, else ``default``."""
    if key not in data:
        return default
    return parse(ctx, data[key], _join(path, key))


def _mapping(
    ctx: _Ctx, value: object, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, object]:
    if not isinstance(value, dict):
        ctx.fail(path, "must be a mapping", value)
    for key, item in value.items():
        if not isinstance(key, str):
            ctx.fail(path, "keys must be strings", key)
        if key not in allowed:
            close = get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            ctx.fail(_join(path, key), f"unknown key ({hint}allowed: {', '.join(allowed)})", item)
    for key in required:
        if key not in value:
            ctx.fail(path, f"missing required key {key!r}", value)
    return value


def _section(ctx: _Ctx, value: object, path: str, allowed: tuple[str, ...]) -> dict[str, object]:
    """An optional section: ``null`` (e.g. every child commented out) is an empty mapping."""
    return {} if value is None else _mapping(ctx, value, path, allowed)


def _list(ctx: _Ctx, value: object, path: str, *, non_empty: bool = False) -> list[object]:
    if not isinstance(value, list):
        ctx.fail(path, "must be a non-empty list" if non_empty else "must be a list", value)
    if non_empty and not value:
        ctx.fail(path, "must be a non-empty list", value)
    return value


def _as_written(ctx: _Ctx, value: object, path: str) -> object:
    """For a string field, the text of a ``${VAR}`` that YAML re-typed (``0123``, ``on``)."""
    if not isinstance(value, str) and path in ctx.retyped:
        return ctx.retyped[path]
    return value


def _string(ctx: _Ctx, value: object, path: str) -> str:
    value = _as_written(ctx, value, path)
    if not isinstance(value, str):
        ctx.fail(path, "must be a string", value)
    return value


def _boolean(ctx: _Ctx, value: object, path: str) -> bool:
    if not isinstance(value, bool):
        ctx.fail(path, "must be true or false", value)
    return value


def _integer(low: int, high: int | None = None) -> Parser[int]:
    what = (
        f"must be an integer >= {low}"
        if high is None
        else f"must be an integer between {low} and {high}"
    )

    def parse(ctx: _Ctx, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, what, value)
        if value < low or (high is not None and value > high):
            ctx.fail(path, what, value)
        return value

    return parse


def _positive_number(ctx: _Ctx, value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.fail(path, "must be a number > 0", value)
    if not math.isfinite(value) or value <= 0:
        ctx.fail(path, "must be a number > 0", value)
    return float(value)


def _nullable(parse: Parser[T]) -> Parser[T | None]:
    def parse_nullable(ctx: _Ctx, value: object, path: str) -> T | None:
        return None if value is None else parse(ctx, value, path)

    return parse_nullable


def _choice(options: tuple[str, ...]) -> Parser[str]:
    def parse(ctx: _Ctx, value: object, path: str) -> str:
        value = _as_written(ctx, value, path)
        if not isinstance(value, str) or value not in options:
            ctx.fail(path, f"must be one of {', '.join(options)}", value)
        return value

    return parse


def _pattern(regex: re.Pattern[str], what: str) -> Parser[str]:
    def parse(ctx: _Ctx, value: object, path: str) -> str:
        text = _string(ctx, value, path)
        if not regex.fullmatch(text):
            ctx.fail(path, what, text)
        return text

    return parse


def _tuple_of(parse: Parser[T], *, non_empty: bool = False) -> Parser[tuple[T, ...]]:
    def parse_list(ctx: _Ctx, value: object, path: str) -> tuple[T, ...]:
        items = _list(ctx, value, path, non_empty=non_empty)
        return tuple(parse(ctx, item, f"{path}[{i}]") for i, item in enumerate(items))

    return parse_list


def _method(ctx: _Ctx, value: object, path: str, *, star: bool = False) -> str:
    """An HTTP method name, case-insensitive; returned upper-cased."""
    text = _string(ctx, value, path)
    method = text.upper()
    if method not in HTTP_METHODS and not (star and method == "*"):
        extra = " or *" if star else ""
        ctx.fail(path, f"must be an HTTP method ({', '.join(HTTP_METHODS)}){extra}", text)
    return method


def _method_keys(
    ctx: _Ctx, value: object, path: str, *, star: bool
) -> list[tuple[str, str, object]]:
    """A mapping METHOD -> value as (METHOD, path of the key, value); each method at most once."""
    if not isinstance(value, dict):
        ctx.fail(path, "must be a mapping of HTTP method to value", value)
    out: list[tuple[str, str, object]] = []
    for key, item in value.items():
        where = _join(path, key)
        method = _method(ctx, key, where, star=star)
        if any(method == seen for seen, _, _ in out):
            ctx.fail(where, f"method {method} is listed twice", key)
        out.append((method, where, item))
    return out


_permission = _pattern(_PERMISSION_RE, "must be a permission name (1-100 of A-Za-z0-9_.:*-)")
_permission_list = _tuple_of(_permission)
_header_names = _tuple_of(_pattern(_TOKEN_RE, "must be a header name (an RFC 9110 token)"))
_on_limiter_error = _choice(LIMITER_POLICIES)
_route_name = _pattern(_ROUTE_NAME_RE, "must be 1-64 characters of A-Za-z0-9_.-")
_count = _integer(1)


# ---- top-level scalars -----------------------------------------------------------------------


def _port_ok(port: str) -> bool:
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def _listen(ctx: _Ctx, value: object, path: str) -> Listen:
    what = "must be 'host:port' (IPv6 as '[::1]:port'), port 1-65535"
    value = _as_written(ctx, value, path)
    if not isinstance(value, str):
        ctx.fail(path, what, value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _port_ok(port):
        ctx.fail(path, what, value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            IPv6Address(host)
        except ValueError:
            ctx.fail(path, "the host in [...] must be an IPv6 address", value)
    elif ":" in host:
        ctx.fail(path, f"{what}; bracket IPv6 addresses", value)
    elif not _HOST_RE.fullmatch(host):
        ctx.fail(path, f"{what}; the host must be a name or an IP address", value)
    return Listen(host, int(port))


def _database(ctx: _Ctx, value: object, path: str) -> str:
    text = _string(ctx, value, path)
    what = "must be sqlite:///<file>, sqlite:///:memory:, postgresql://... or postgres://..."
    if text.startswith("sqlite:///"):
        if not text[len("sqlite:///") :].strip():
            ctx.fail(path, what, text)
        return text
    if not text.startswith(("postgresql://", "postgres://")) or any(c.isspace() for c in text):
        ctx.fail(path, what, text)
    try:
        urlsplit(text).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ctx.fail(path, "has an invalid port", text)
    return text


def _redis_url(ctx: _Ctx, value: object, path: str) -> str | None:
    text = _string(ctx, value, path).strip()
    if not text:
        return None
    what = "must be null or a redis://, rediss:// or unix:// URL"
    if not text.startswith(("redis://", "rediss://", "unix://")) or any(c.isspace() for c in text):
        ctx.fail(path, what, text)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ctx.fail(path, "has an invalid port", text)
    if parts.scheme == "unix" and not parts.path:
        ctx.fail(path, "a unix:// URL needs a socket path", text)
    if parts.scheme != "unix" and not parts.hostname:
        ctx.fail(path, "must include a host", text)
    try:  # what the limiter connects with: the options in the query must make sense too
        redis_parse_url(text)
    except ValueError as exc:
        ctx.fail(path, f"is not a Redis URL redis-py accepts ({exc})", text)
    return text


_redis = _nullable(_redis_url)


# ---- keys, permissions, defaults, key_cache ----------------------------------------------------


def _keys(ctx: _Ctx, value: object, path: str) -> KeysConfig:
    data = _section(ctx, value, path, _KEYS_KEYS)
    return KeysConfig(
        prefixes=_opt(ctx, data, path, "prefixes", _prefixes, _DEFAULT_KEYS.prefixes),
        max_active_per_user=_opt(
            ctx, data, path, "max_active_per_user", _count, _DEFAULT_KEYS.max_active_per_user
        ),
        hash_pepper=_opt(ctx, data, path, "hash_pepper", _pepper, None),
    )


def _prefixes(ctx: _Ctx, value: object, path: str) -> dict[str, str]:
    data = _mapping(ctx, value, path, _ENVIRONMENTS, required=_ENVIRONMENTS)
    out: dict[str, str] = {}
    for env in _ENVIRONMENTS:
        where = _join(path, env)
        prefix = _string(ctx, data[env], where)
        if len(prefix) > 32 or not _PREFIX_RE.fullmatch(prefix):
            ctx.fail(where, "must be lower-case words joined by '_' (e.g. sk_live), max 32", prefix)
        if prefix in out.values():
            ctx.fail(where, "must differ from the other environment's prefix", prefix)
        out[env] = prefix
    return out


def _pepper(ctx: _Ctx, value: object, path: str) -> str | None:
    if value is None:
        return None
    return _string(ctx, value, path) or None


def _permissions_section(ctx: _Ctx, value: object, path: str) -> dict[str, tuple[str, ...]]:
    data = _section(ctx, value, path, _PERMISSIONS_KEYS)
    implies = data.get("implies")
    where = _join(path, "implies")
    if implies is None:
        return {}
    if not isinstance(implies, dict):
        ctx.fail(where, "must be a mapping of permission to a list of permissions", implies)
    out: dict[str, tuple[str, ...]] = {}
    for key, item in implies.items():
        name = _permission(ctx, key, _join(where, key))
        out[name] = _permission_list(ctx, item, _join(where, key))
    return out


def _rate_limit(ctx: _Ctx, value: object, path: str) -> RateLimit:
    data = _mapping(ctx, value, path, _RATE_LIMIT_KEYS, required=_RATE_LIMIT_KEYS)
    return RateLimit(
        requests=_count(ctx, data["requests"], _join(path, "requests")),
        window=_positive_number(ctx, data["window"], _join(path, "window")),
    )


def _defaults(ctx: _Ctx, value: object, path: str) -> Defaults:
    data = _section(ctx, value, path, _DEFAULTS_KEYS)
    d = _DEFAULT_DEFAULTS
    return Defaults(
        rate_limit=_opt(ctx, data, path, "rate_limit", _rate_limit, d.rate_limit),
        max_concurrent=_opt(ctx, data, path, "max_concurrent", _nullable(_count), d.max_concurrent),
        on_limiter_error=_opt(
            ctx, data, path, "on_limiter_error", _on_limiter_error, d.on_limiter_error
        ),
    )


def _key_cache(ctx: _Ctx, value: object, path: str) -> KeyCacheConfig:
    data = _section(ctx, value, path, _KEY_CACHE_KEYS)
    d = _DEFAULT_KEY_CACHE
    number = _positive_number
    return KeyCacheConfig(
        max_entries=_opt(ctx, data, path, "max_entries", _count, d.max_entries),
        ttl=_opt(ctx, data, path, "ttl", number, d.ttl),
        negative_ttl=_opt(ctx, data, path, "negative_ttl", number, d.negative_ttl),
        stale_if_error=_opt(ctx, data, path, "stale_if_error", number, d.stale_if_error),
        poll_interval=_opt(ctx, data, path, "poll_interval", number, d.poll_interval),
    )


def _key_store(ctx: _Ctx, value: object, path: str) -> KeyStoreConfig:
    data = _section(ctx, value, path, _KEY_STORE_KEYS)
    d = _DEFAULT_KEY_STORE
    number = _positive_number
    return KeyStoreConfig(
        timeout=_opt(ctx, data, path, "timeout", number, d.timeout),
        connect_timeout=_opt(ctx, data, path, "connect_timeout", number, d.connect_timeout),
        pool_size=_opt(ctx, data, path, "pool_size", _integer(1, 1000), d.pool_size),
    )


def _limiter(ctx: _Ctx, value: object, path: str) -> LimiterConfig:
    data = _section(ctx, value, path, _LIMITER_KEYS)
    d = _DEFAULT_LIMITER
    prefix = _opt(ctx, data, path, "prefix", _string, d.prefix)
    if not _REDIS_PREFIX_RE.fullmatch(prefix):
        ctx.fail(f"{path}.prefix", "must be at most 64 of A-Z a-z 0-9 _ . : / - (no braces: "
                 "the gateway adds Redis Cluster hash tags itself)", prefix)
    return LimiterConfig(
        prefix=prefix,
        timeout=_opt(ctx, data, path, "timeout", _positive_number, d.timeout),
        lease_ttl=_opt(ctx, data, path, "lease_ttl", _positive_number, d.lease_ttl),
        expected_nodes=_opt(ctx, data, path, "expected_nodes", _integer(1, 10_000),
                            d.expected_nodes),
    )


def _logging(ctx: _Ctx, value: object, path: str) -> LoggingConfig:
    data = _section(ctx, value, path, _LOGGING_KEYS)
    d = _DEFAULT_LOGGING
    return LoggingConfig(
        level=_opt(ctx, data, path, "level", _choice(LOG_LEVELS), d.level),
        format=_opt(ctx, data, path, "format", _choice(LOG_FORMATS), d.format),
        access_log=_opt(ctx, data, path, "access_log", _boolean, d.access_log),
    )


# ---- routes ----------------------------------------------------------------------------------


def _routes(ctx: _Ctx, value: object, path: str) -> tuple[RouteConfig, ...]:
    items = _list(ctx, value, path, non_empty=True)
    routes: list[RouteConfig] = []
    names: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        route = _route(ctx, item, where)
        if route.name in names:
            ctx.fail(f"{where}.name", f"duplicate of {path}[{names[route.name]}].name", route.name)
        shape = _PARAM_SEGMENT_RE.sub("{}", route.path)  # /a/{x}/ and /a/{y}/ are the same path
        if shape in shapes:
            ctx.fail(f"{where}.path", f"duplicate of {path}[{shapes[shape]}].path", route.path)
        names[route.name] = shapes[shape] = i
        routes.append(route)
    return tuple(routes)


def _route(ctx: _Ctx, value: object, path: str) -> RouteConfig:
    data = _mapping(ctx, value, path, _ROUTE_KEYS, required=_ROUTE_REQUIRED)
    name = _route_name(ctx, data["name"], _join(path, "name"))
    route_path = _route_path(ctx, data["path"], _join(path, "path"))
    auth = _opt(ctx, data, path, "auth", _choice(AUTH_MODES), _DEFAULT_ROUTE.auth)
    permissions: Mapping[str, tuple[str, ...]] = _opt(
        ctx, data, path, "permissions", _route_permissions, {}
    )
    resource, operations = _resource(ctx, data, path, route_path)
    if auth == "none":
        if any(permissions.values()):
            ctx.fail(
                _join(path, "permissions"), "cannot be checked with auth: none", data["permissions"]
            )
        if resource is not None:
            ctx.fail(_join(path, "resource"), "cannot be checked with auth: none", resource)
    d = _DEFAULT_ROUTE
    return RouteConfig(
        name=name,
        path=route_path,
        upstreams=_upstreams(ctx, data["upstream"], _join(path, "upstream")),
        strip_prefix=_opt(ctx, data, path, "strip_prefix", _boolean, d.strip_prefix),
        auth=auth,
        permissions=permissions,
        rate_limit=_opt(ctx, data, path, "rate_limit", _nullable(_rate_limit), None),
        max_concurrent=_opt(ctx, data, path, "max_concurrent", _nullable(_count), None),
        on_limiter_error=_opt(
            ctx, data, path, "on_limiter_error", _nullable(_on_limiter_error), None
        ),
        timeout=_opt(ctx, data, path, "timeout", _positive_number, d.timeout),
        max_body_bytes=_opt(ctx, data, path, "max_body_bytes", _integer(0), d.max_body_bytes),
        cors=_opt(ctx, data, path, "cors", _nullable(_cors), None),
        resource=resource,
        operations=operations,
    )


def _route_path(ctx: _Ctx, value: object, path: str) -> str:
    text = _string(ctx, value, path)
    if not text.startswith("/"):
        ctx.fail(path, "must start with '/'", text)
    for bad, what in (
        ("..", "'..'"),
        ("//", "'//'"),
        ("%", "'%' escapes"),
        ("?", "a query"),
        ("#", "a fragment"),
        ("\\", "backslashes"),
    ):
        if bad in text:
            ctx.fail(path, f"must not contain {what}", text)
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        ctx.fail(path, "must not contain whitespace or control characters", text)
    if "/./" in text + "/":
        ctx.fail(path, "must not contain '.' segments", text)
    _path_params(ctx, text, path)
    return text if text.endswith("/") else text + "/"


def _path_params(ctx: _Ctx, route_path: str, path: str) -> list[str]:
    """The ``{param}`` names of a route path, validated: whole segments, identifiers, unique."""
    names: list[str] = []
    for segment in route_path.split("/"):
        if "{" not in segment and "}" not in segment:
            continue
        match = _PARAM_SEGMENT_RE.fullmatch(segment)
        if match is None:
            ctx.fail(path, "a {param} must be a whole path segment", route_path)
        name = match.group(1)
        if not name.isidentifier():
            ctx.fail(path, f"path parameter {name!r} must be a Python identifier", route_path)
        if name in names:
            ctx.fail(path, f"path parameter {name!r} appears twice", route_path)
        names.append(name)
    return names


def _upstream(ctx: _Ctx, value: object, path: str) -> str:
    text = _string(ctx, value, path)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        ctx.fail(path, "must be a valid http(s) URL", text)
    if parts.scheme not in ("http", "https") or not text.lower().startswith(parts.scheme + "://"):
        ctx.fail(path, "must be an http:// or https:// URL", text)
    if "@" in parts.netloc:
        ctx.fail(path, "must not contain credentials", text)
    if not parts.hostname or port == 0:
        ctx.fail(path, "must include a host (and a port 1-65535 if any)", text)
    if "?" in text or "#" in text:
        ctx.fail(path, "must not have a query or fragment", text)
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        ctx.fail(path, "must not contain whitespace or control characters", text)
    return text


def _upstreams(ctx: _Ctx, value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, list):
        return _tuple_of(_upstream, non_empty=True)(ctx, value, path)
    return (_upstream(ctx, value, path),)


def _route_permissions(ctx: _Ctx, value: object, path: str) -> dict[str, tuple[str, ...]]:
    """``[perm, ...]`` (every method) or ``{METHOD: [perm, ...], "*": [...]}``."""
    if value is None:
        return {}
    if isinstance(value, list):
        return {"*": _permission_list(ctx, value, path)}
    if not isinstance(value, dict):
        ctx.fail(path, "must be a list of permissions or a mapping of method to list", value)
    return {
        method: _permission_list(ctx, item, where)
        for method, where, item in _method_keys(ctx, value, path, star=True)
    }


def _resource(
    ctx: _Ctx, data: Mapping[str, object], path: str, route_path: str
) -> tuple[str | None, dict[str, str]]:
    resource = _opt(ctx, data, path, "resource", _nullable(_string), None)
    if resource is None:
        if "operations" in data:
            ctx.fail(
                _join(path, "operations"),
                "needs 'resource' (the path parameter it checks)",
                data["operations"],
            )
        return None, {}
    params = _path_params(ctx, route_path, _join(path, "path"))
    if resource not in params:
        shown = ", ".join(params) or "none"
        ctx.fail(_join(path, "resource"), f"must name a {{param}} of the path ({shown})", resource)
    if "operations" not in data:
        return resource, dict(DEFAULT_OPERATIONS)
    operations: dict[str, str] = {}
    for method, where, item in _method_keys(
        ctx, data["operations"], _join(path, "operations"), star=False
    ):
        operation = _string(ctx, item, where)
        if not operation or operation != operation.strip():
            ctx.fail(
                where, "must be a non-empty operation name without surrounding spaces", operation
            )
        operations[method] = operation
    return resource, operations


def _cors(ctx: _Ctx, value: object, path: str) -> CorsConfig:
    data = _mapping(ctx, value, path, _CORS_KEYS, required=("allow_origins",))
    d = _DEFAULT_CORS
    origins = _tuple_of(_origin, non_empty=True)(
        ctx, data["allow_origins"], _join(path, "allow_origins")
    )
    credentials = _opt(ctx, data, path, "allow_credentials", _boolean, d.allow_credentials)
    if credentials and "*" in origins:
        ctx.fail(
            _join(path, "allow_credentials"),
            "cannot be true when allow_origins contains '*'",
            credentials,
        )
    return CorsConfig(
        allow_origins=origins,
        max_age=_opt(ctx, data, path, "max_age", _integer(0), d.max_age),
        allow_methods=_opt(ctx, data, path, "allow_methods", _tuple_of(_method), d.allow_methods),
        allow_headers=_opt(ctx, data, path, "allow_headers", _header_names, d.allow_headers),
        expose_headers=_opt(ctx, data, path, "expose_headers", _header_names, d.expose_headers),
        allow_credentials=credentials,
    )


def _origin(ctx: _Ctx, value: object, path: str) -> str:
    """``*``, ``scheme://host[:port]`` or ``scheme://*.domain[:port]``; http(s), lower-case."""
    text = _string(ctx, value, path)
    if text == "*":
        return text
    what = "must be '*', 'http(s)://host[:port]' or 'http(s)://*.domain.tld[:port]'"
    scheme, sep, authority = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        ctx.fail(path, what, text)
    if any(ch in authority for ch in "/?#@") or not authority:
        ctx.fail(path, f"{what} (no path, not even a trailing '/')", text)
    if authority != authority.lower():
        ctx.fail(path, "must be lower-case", text)
    host, port = _split_host_port(authority)
    if port is not None and not _port_ok(port):
        ctx.fail(path, "has an invalid port", text)
    if host.startswith("*.") and "." not in host[2:]:
        ctx.fail(path, "a wildcard must be under a domain (*.example.com), not a whole TLD", text)
    if not _origin_host_ok(host):
        ctx.fail(path, what, text)
    return text


def _split_host_port(authority: str) -> tuple[str, str | None]:
    if authority.startswith("["):
        if "]" not in authority:
            return authority, None  # rejected as a host
        host, _, rest = authority.partition("]")
        return host + "]", (rest[1:] if rest.startswith(":") else None if not rest else "")
    host, sep, port = authority.partition(":")
    return host, (port if sep else None)


def _origin_host_ok(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return bool(_DOMAIN_RE.fullmatch(host.removeprefix("*.")))
