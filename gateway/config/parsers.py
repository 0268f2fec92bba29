"""The small typed parsers a config key names: ``parse(ctx, value, path) -> value``.

A parser returns the typed value or calls ``ctx.fail(path, what, value)``, which raises the one
ConfigError line ``<file>: <dotted.path>: <what>, got <repr>``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import NoReturn, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.connection import parse_url as redis_parse_url

from gateway.errors import ConfigError
from gateway.keys.model import PERMISSION_PATTERN

T = TypeVar("T")
Network = IPv4Network | IPv6Network
T_co = TypeVar("T_co", covariant=True)


class Parser(Protocol[T_co]):
    """Reads the YAML ``value`` at the dotted ``path``, or fails naming both."""

    def __call__(self, ctx: Ctx, value: object, path: str, /) -> T_co: ...


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ENVIRONMENTS = ("live", "test")

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_PERMISSION_RE = re.compile(PERMISSION_PATTERN)  # the admin API checks the same pattern
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")  # no braces: they are hash tags
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (header names)
_HOST_RE = re.compile(r"[A-Za-z0-9_.-]+")
_CREDENTIALS_RE = re.compile(r"(://[^/@:\s'\"]*):[^/@\s'\"]*@")
_MAX_SHOWN = 120


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A listener's certificate chain and private key (PEM), as absolute paths."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    tls: TlsFiles | None = None  # None: plain HTTP

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6, as written in config
        return f"{host}:{self.port}"


@dataclass(slots=True)
class Ctx:
    """The file name (for messages), the environment, and the exact substituted text of every
    scalar that was re-typed by interpolation (so string fields keep e.g. a pepper ``0123``)."""

    source: str
    environ: Mapping[str, str]
    retyped: dict[str, str] = field(default_factory=dict)

    def fail(self, path: str, what: str, value: object) -> NoReturn:
        raise ConfigError(f"{self.source}: {path or '(top level)'}: {what}, got {_show(value)}")


def _show(value: object) -> str:
    """repr of a bad value for a one-line message: credentials masked, long values shortened."""
    text = _CREDENTIALS_RE.sub(r"\1:***@", repr(value))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def mapping(
    ctx: Ctx, value: object, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, object]:
    """A mapping with string keys from ``allowed`` (else "did you mean") and every ``required``."""
    if not isinstance(value, dict):
        ctx.fail(path, "must be a mapping", value)
    for key, item in value.items():
        if not isinstance(key, str):
            ctx.fail(path, "keys must be strings", key)
        if key not in allowed:
            close = get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            ctx.fail(join(path, key), f"unknown key ({hint}allowed: {', '.join(allowed)})", item)
    for key in required:
        if key not in value:
            ctx.fail(path, f"missing required key {key!r}", value)
    return value


def tuple_of(parse: Parser[T], *, non_empty: bool = False) -> Parser[tuple[T, ...]]:
    what = "must be a non-empty list" if non_empty else "must be a list"

    def parse_list(ctx: Ctx, value: object, path: str) -> tuple[T, ...]:
        if not isinstance(value, list) or (non_empty and not value):
            ctx.fail(path, what, value)
        return tuple(parse(ctx, item, f"{path}[{i}]") for i, item in enumerate(value))

    return parse_list


def nullable(parse: Parser[T]) -> Parser[T | None]:
    def parse_nullable(ctx: Ctx, value: object, path: str) -> T | None:
        return None if value is None else parse(ctx, value, path)

    return parse_nullable


def _as_written(ctx: Ctx, value: object, path: str) -> object:
    """For a string field, the text of a ``${VAR}`` that YAML re-typed (``0123``, ``on``)."""
    if not isinstance(value, str) and path in ctx.retyped:
        return ctx.retyped[path]
    return value


def string(ctx: Ctx, value: object, path: str) -> str:
    value = _as_written(ctx, value, path)
    if not isinstance(value, str):
        ctx.fail(path, "must be a string", value)
    return value


def boolean(ctx: Ctx, value: object, path: str) -> bool:
    if not isinstance(value, bool):
        ctx.fail(path, "must be true or false", value)
    return value


def integer(low: int, high: int | None = None) -> Parser[int]:
    what = f"must be an integer {f'>= {low}' if high is None else f'between {low} and {high}'}"

    def parse(ctx: Ctx, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, what, value)
        if value < low or (high is not None and value > high):
            ctx.fail(path, what, value)
        return value

    return parse


def positive_number(ctx: Ctx, value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.fail(path, "must be a number > 0", value)
    if not math.isfinite(value) or value <= 0:
        ctx.fail(path, "must be a number > 0", value)
    return float(value)


def choice(*options: str) -> Parser[str]:
    def parse(ctx: Ctx, value: object, path: str) -> str:
        value = _as_written(ctx, value, path)
        if not isinstance(value, str) or value not in options:
            ctx.fail(path, f"must be one of {', '.join(options)}", value)
        return value

    return parse


def pattern(regex: re.Pattern[str], what: str) -> Parser[str]:
    def parse(ctx: Ctx, value: object, path: str) -> str:
        text = string(ctx, value, path)
        if not regex.fullmatch(text):
            ctx.fail(path, what, text)
        return text

    return parse


count = integer(1)
limiter_policy = choice("open", "closed", "local")
algorithm = choice("sliding_log", "sliding_counter")  # README "Algorithms"
permission = pattern(_PERMISSION_RE, "must be a permission name (1-100 of A-Za-z0-9_.:*-)")
permission_list = tuple_of(permission)
header_names = tuple_of(pattern(_TOKEN_RE, "must be a header name (an RFC 9110 token)"))
redis_prefix = pattern(
    _REDIS_PREFIX_RE,
    "must be at most 64 of A-Z a-z 0-9 _ . : / - (no braces: the gateway adds Redis Cluster "
    "hash tags itself)",
)


def method(ctx: Ctx, value: object, path: str, *, star: bool = False) -> str:
    """An HTTP method name, case-insensitive; returned upper-cased."""
    text = string(ctx, value, path)
    upper = text.upper()
    if upper not in HTTP_METHODS and not (star and upper == "*"):
        extra = " or *" if star else ""
        ctx.fail(path, f"must be an HTTP method ({', '.join(HTTP_METHODS)}){extra}", text)
    return upper


def method_keys(ctx: Ctx, value: object, path: str, *, star: bool) -> list[tuple[str, str, object]]:
    """A mapping METHOD -> value as (METHOD, path of the key, value); each method at most once."""
    if not isinstance(value, dict):
        ctx.fail(path, "must be a mapping of HTTP method to value", value)
    out: list[tuple[str, str, object]] = []
    for key, item in value.items():
        where = join(path, key)
        name = method(ctx, key, where, star=star)
        if any(name == seen for seen, _, _ in out):
            ctx.fail(where, f"method {name} is listed twice", key)
        out.append((name, where, item))
    return out


def port_ok(port: str) -> bool:
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def listen_address(ctx: Ctx, value: object, path: str) -> Listen:
    what = "must be 'host:port' (IPv6 as '[::1]:port'), port 1-65535"
    value = _as_written(ctx, value, path)
    if not isinstance(value, str):
        ctx.fail(path, what, value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port_ok(port):
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


def database_url(ctx: Ctx, value: object, path: str) -> str:
    text = string(ctx, value, path)
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


def public_url(ctx: Ctx, value: object, path: str) -> str:
    """An http(s) base URL with a host and no query or fragment; kept without a trailing "/"."""
    text = string(ctx, value, path)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or any(c.isspace() for c in text):
        ctx.fail(path, "must be an http(s) URL with a host and no query or fragment", text)
    return text.rstrip("/")


SQLITE = "sqlite:///"


def config_relative(source: str, path: str) -> str:
    """``path`` as an absolute path, a relative one taken from the directory of the config file
    ``source`` (README "Config-relative paths"): the CLI and the server then agree on a file
    wherever they are run from."""
    base = os.path.dirname(os.path.abspath(source))
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def anchored_database(source: str, url: str) -> str:
    """A ``sqlite:///`` URL naming a relative file, made absolute by ``config_relative``; any
    other URL (Postgres, ``:memory:``, an absolute file) unchanged."""
    if not url.startswith(SQLITE):
        return url
    file, mark, query = url[len(SQLITE) :].partition("?")
    if file == ":memory:" or os.path.isabs(file):
        return url
    return SQLITE + config_relative(source, file) + mark + query


def display_url(url: str) -> str:
    """``url`` fit for a log line or the terminal: its password replaced by ``***``."""
    return _CREDENTIALS_RE.sub(r"\1:***@", url)


def url_target(url: str, default_port: int) -> str:
    """Where ``url`` connects, for a log line or an error: ``host:port``, or a unix socket's
    path (never a user or password)."""
    if url.startswith(CLUSTER_SCHEMES):
        return "cluster " + ",".join(url_target(s, default_port) for s in cluster_seeds(url))
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{host}:{port}"


def redis_url(ctx: Ctx, value: object, path: str) -> str | None:
    """One Redis (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster: ``{cluster:
    [seed URLs]}`` or ``redis+cluster://h1:p1,h2:p2`` (``rediss+cluster://``), kept as the
    one-string form (README "Redis Cluster")."""
    if isinstance(value, Mapping):
        return cluster_mapping(ctx, value, path)
    text = string(ctx, value, path).strip()
    if not text:
        return None
    if text.startswith(CLUSTER_SCHEMES):
        return cluster_string(ctx, text, path)
    what = ("must be null or a redis://, rediss://, unix://, redis+cluster:// or "
            "rediss+cluster:// URL")
    if not text.startswith(("redis://", "rediss://", "unix://")) or any(c.isspace() for c in text):
        ctx.fail(path, what, text)
    return single_redis(ctx, text, path)


def single_redis(ctx: Ctx, text: str, path: str) -> str:
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


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def cluster_string(ctx: Ctx, text: str, path: str) -> str:
    """``redis+cluster://[user:password@]h1:p1,h2:p2[?options]``: every seed must be a URL
    redis-py accepts, on database 0 (a cluster has no other)."""
    if any(c.isspace() for c in text):
        ctx.fail(path, "must not contain spaces", text)
    for seed in cluster_seeds(text):
        single_redis(ctx, seed, path)
        if urlsplit(seed).path not in ("", "/", "/0"):
            ctx.fail(path, "a Redis Cluster has only database 0", text)
    return text


def cluster_mapping(ctx: Ctx, value: Mapping[object, object], path: str) -> str:
    """``{cluster: [redis://h1:p1, ...]}``: the seeds share scheme, credentials and options."""
    data = mapping(ctx, value, path, ("cluster",), required=("cluster",))
    seeds = tuple_of(string, non_empty=True)(ctx, data["cluster"], join(path, "cluster"))
    parts = []
    for i, seed in enumerate(seeds):
        where = f"{join(path, 'cluster')}[{i}]"
        if not seed.startswith(("redis://", "rediss://")):
            ctx.fail(where, "must be a redis:// or rediss:// URL", seed)
        parts.append(urlsplit(single_redis(ctx, seed, where)))
    first = parts[0]
    for i, part in enumerate(parts[1:], 1):
        if (part.scheme, part.username, part.password, part.query) != (
            first.scheme, first.username, first.password, first.query
        ):
            what = "must have the scheme, user, password and options of the first seed"
            ctx.fail(f"{join(path, 'cluster')}[{i}]", what, seeds[i])
    userinfo = first.netloc.rpartition("@")[0]
    hosts = ",".join(part.netloc.rpartition("@")[2] for part in parts)
    text = f"{first.scheme}+cluster://{userinfo + '@' if userinfo else ''}{hosts}"
    return cluster_string(ctx, text + (f"?{first.query}" if first.query else ""), path)


def cluster_seeds(url: str) -> list[str]:
    """The seed nodes of a ``redis+cluster://`` URL, each as a single-Redis URL."""
    scheme, _, rest = url.partition("+cluster://")
    netloc, slash, tail = rest.partition("/")
    if not slash:
        netloc, mark, query = rest.partition("?")
        tail = mark + query
    else:
        tail = "/" + tail
    userinfo, at, hosts = netloc.rpartition("@")
    return [f"{scheme}://{userinfo}{at}{host}{tail}" for host in hosts.split(",") if host]


def node_url(url: str, host: str, port: int) -> str:
    """A cluster node's URL: the scheme, credentials and options of ``url``'s seeds."""
    seed = urlsplit(cluster_seeds(url)[0])
    userinfo, at, _ = seed.netloc.rpartition("@")
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((seed.scheme, f"{userinfo}{at}{host}:{port}", "", seed.query, ""))


def network(ctx: Ctx, value: object, path: str) -> Network:
    """An IP address or a CIDR range (``10.0.0.0/8``, ``2001:db8::/32``); host bits set below
    the prefix are refused, since they usually mean a typo in the prefix length."""
    text = string(ctx, value, path).strip()
    try:
        return ip_network(text)
    except ValueError as exc:
        if "host bits set" not in str(exc):
            ctx.fail(path, "must be an IP address or a CIDR range such as 10.0.0.0/8", value)
        wider = ip_network(text, strict=False)
        ctx.fail(path, f"has host bits set below the prefix length (did you mean {wider}?)",
                 value)


def key_prefixes(ctx: Ctx, value: object, path: str) -> dict[str, str]:
    data = mapping(ctx, value, path, ENVIRONMENTS, required=ENVIRONMENTS)
    out: dict[str, str] = {}
    for env in ENVIRONMENTS:
        where = join(path, env)
        prefix = string(ctx, data[env], where)
        if len(prefix) > 32 or not _PREFIX_RE.fullmatch(prefix):
            ctx.fail(where, "must be lower-case words joined by '_' (e.g. sk_live), max 32", prefix)
        if prefix in out.values():
            ctx.fail(where, "must differ from the other environment's prefix", prefix)
        out[env] = prefix
    return out


def pepper(ctx: Ctx, value: object, path: str) -> str | None:
    return string(ctx, value, path) or None  # empty: no pepper


def implications(ctx: Ctx, value: object, path: str) -> dict[str, tuple[str, ...]]:
    """``{permission: [permission, ...]}``; null is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(path, "must be a mapping of permission to a list of permissions", value)
    return {
        permission(ctx, key, join(path, key)): permission_list(ctx, item, join(path, key))
        for key, item in value.items()
    }
