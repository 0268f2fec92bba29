"""Routes: the parsers of a route's keys and the rules that span them (path parameters and
``resource``, ``auth: none``, CORS credentials, unique names and paths)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from ipaddress import IPv6Address
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config.parsers import (
    Ctx,
    Parser,
    join,
    method_keys,
    pattern,
    permission_list,
    port_ok,
    string,
    tuple_of,
)
from gateway.config.section import section

if TYPE_CHECKING:
    from gateway.config.model import CorsConfig, HealthConfig, RouteConfig

# the operations of a route with ``resource`` and no ``operations``
DEFAULT_OPERATIONS: Mapping[str, str] = {
    "GET": "read", "HEAD": "read", "POST": "write", "PUT": "write", "PATCH": "write",
    "DELETE": "delete",
}

_NOT_IN_PATH = (
    ("..", "'..'"), ("//", "'//'"), ("%", "'%' escapes"), ("?", "a query"), ("#", "a fragment"),
    ("\\", "backslashes"),
)
_ROUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PARAM_SEGMENT_RE = re.compile(r"\{([^{}]*)\}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

VERIFY_KEYS = ("name", "path", "mode")  # all a verify route takes (README "Forward auth")

route_name = pattern(_ROUTE_NAME_RE, "must be 1-64 characters of A-Za-z0-9_.-")


def route_table(cls: type[RouteConfig]) -> Parser[tuple[RouteConfig, ...]]:
    """A non-empty list of routes, each read into ``cls`` and checked by ``route_rules``; no
    two with the same name or the same path."""
    routes = tuple_of(section(cls, route_rules), non_empty=True)

    def parse(ctx: Ctx, value: object, path: str) -> tuple[RouteConfig, ...]:
        table = routes(ctx, value, path)
        names: dict[str, int] = {}
        shapes: dict[str, int] = {}
        for i, route in enumerate(table):
            shape = _PARAM_SEGMENT_RE.sub("{}", route.path)  # /a/{x}/ and /a/{y}/: same path
            if route.name in names:
                ctx.fail(f"{path}[{i}].name", f"duplicate of {path}[{names[route.name]}].name",
                         route.name)
            if shape in shapes:
                ctx.fail(f"{path}[{i}].path", f"duplicate of {path}[{shapes[shape]}].path",
                         route.path)
            names[route.name] = shapes[shape] = i
        return table

    return parse


def route_rules(ctx: Ctx, data: Mapping[str, object], path: str, route: RouteConfig) -> RouteConfig:
    if route.mode == "verify":
        return _verify_rules(ctx, data, path, route)
    if "upstream" not in data:
        ctx.fail(path, "missing required key 'upstream'", data)
    route = _resource_rules(ctx, data, path, route)
    if route.algorithm is not None and route.rate_limit is None:  # README "Algorithms"
        what = "applies to the route's own rate_limit, which it does not set"
        ctx.fail(join(path, "algorithm"), what, route.algorithm)
    if route.auth == "none":
        if any(route.permissions.values()):
            what = "cannot be checked with auth: none"
            ctx.fail(join(path, "permissions"), what, data["permissions"])
        if route.resource is not None:
            ctx.fail(join(path, "resource"), "cannot be checked with auth: none", route.resource)
        if route.rate_limit is not None and route.rate_limit.shadow:  # README "Shadow mode"
            what = "is for keyed routes: an auth: none route's limit is per client address"
            ctx.fail(join(path, "rate_limit.shadow"), what, True)
    return route


def _verify_rules(
    ctx: Ctx, data: Mapping[str, object], path: str, route: RouteConfig
) -> RouteConfig:
    """A verify route answers for the route the original request matches: that route's
    settings apply, so any of its own besides ``name``, ``path`` and ``mode`` is a mistake."""
    for key, value in data.items():
        if key == "upstream":
            ctx.fail(join(path, key), "a verify route (mode: verify) has no upstream", value)
        if key not in VERIFY_KEYS:
            what = ("not used by a verify route (mode: verify): the route the original "
                    "request matches decides")
            ctx.fail(join(path, key), what, value)
    return route


def _resource_rules(
    ctx: Ctx, data: Mapping[str, object], path: str, route: RouteConfig
) -> RouteConfig:
    """``resource`` names a path parameter; ``operations`` only with it, else the defaults."""
    if route.resource is None:
        if "operations" in data:
            what = "needs 'resource' (the path parameter it checks)"
            ctx.fail(join(path, "operations"), what, data["operations"])
        return route
    params = path_params(ctx, route.path, join(path, "path"))
    if route.resource not in params:
        what = f"must name a {{param}} of the path ({', '.join(params) or 'none'})"
        ctx.fail(join(path, "resource"), what, route.resource)
    if "operations" not in data:
        return replace(route, operations=dict(DEFAULT_OPERATIONS))
    return route


def cors_rules(ctx: Ctx, data: Mapping[str, object], path: str, cors: CorsConfig) -> CorsConfig:
    if cors.allow_credentials and "*" in cors.allow_origins:
        what = "cannot be true when allow_origins contains '*'"
        ctx.fail(join(path, "allow_credentials"), what, cors.allow_credentials)
    return cors


def health_rules(
    ctx: Ctx, data: Mapping[str, object], path: str, health: HealthConfig
) -> HealthConfig:
    """``max_eject_seconds`` at least ``eject_seconds``; ``interval`` and ``timeout`` only with
    ``path`` (the active checks they shape), ``timeout`` at most ``interval``."""
    if health.max_eject_seconds < health.eject_seconds:
        if "max_eject_seconds" in data:
            what = f"must be at least eject_seconds ({health.eject_seconds:g})"
            ctx.fail(join(path, "max_eject_seconds"), what, data["max_eject_seconds"])
        what = f"must be at most max_eject_seconds ({health.max_eject_seconds:g})"
        ctx.fail(join(path, "eject_seconds"), what, data["eject_seconds"])
    for key in ("interval", "timeout"):
        if health.path is None and key in data:
            ctx.fail(join(path, key), "needs 'path' (the active check it shapes)", data[key])
    if health.timeout > health.interval:
        what = f"must be at most interval ({health.interval:g})"
        ctx.fail(join(path, "timeout"), what, data.get("timeout", health.timeout))
    return health


def health_path(ctx: Ctx, value: object, path: str) -> str:
    """The target of an active check: an absolute path, with a query if need be."""
    text = string(ctx, value, path)
    if not text.startswith("/") or any(ch.isspace() or not ch.isprintable() for ch in text):
        ctx.fail(path, "must be a path starting with '/', without whitespace", text)
    if "#" in text:
        ctx.fail(path, "must not have a fragment", text)
    return text


def route_path(ctx: Ctx, value: object, path: str) -> str:
    text = string(ctx, value, path)
    if not text.startswith("/"):
        ctx.fail(path, "must start with '/'", text)
    for bad, what in _NOT_IN_PATH:
        if bad in text:
            ctx.fail(path, f"must not contain {what}", text)
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        ctx.fail(path, "must not contain whitespace or control characters", text)
    if "/./" in text + "/":
        ctx.fail(path, "must not contain '.' segments", text)
    path_params(ctx, text, path)
    return text if text.endswith("/") else text + "/"


def path_params(ctx: Ctx, route_path: str, path: str) -> list[str]:
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


def _upstream(ctx: Ctx, value: object, path: str) -> str:
    text = string(ctx, value, path)
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


def upstream_urls(ctx: Ctx, value: object, path: str) -> tuple[str, ...]:
    """One base URL, or a non-empty list of them."""
    if isinstance(value, list):
        return tuple_of(_upstream, non_empty=True)(ctx, value, path)
    return (_upstream(ctx, value, path),)


def route_permissions(ctx: Ctx, value: object, path: str) -> dict[str, tuple[str, ...]]:
    """``[perm, ...]`` (every method) or ``{METHOD: [perm, ...], "*": [...]}``."""
    if value is None:
        return {}
    if isinstance(value, list):
        return {"*": permission_list(ctx, value, path)}
    if not isinstance(value, dict):
        ctx.fail(path, "must be a list of permissions or a mapping of method to list", value)
    return {
        method: permission_list(ctx, item, where)
        for method, where, item in method_keys(ctx, value, path, star=True)
    }


def scope_operations(ctx: Ctx, value: object, path: str) -> dict[str, str]:
    """``{METHOD: operation}`` for the scope check."""
    out: dict[str, str] = {}
    for method, where, item in method_keys(ctx, value, path, star=False):
        operation = string(ctx, item, where)
        if not operation or operation != operation.strip():
            what = "must be a non-empty operation name without surrounding spaces"
            ctx.fail(where, what, operation)
        out[method] = operation
    return out


def origin(ctx: Ctx, value: object, path: str) -> str:
    """``*``, ``scheme://host[:port]`` or ``scheme://*.domain[:port]``; http(s), lower-case."""
    text = string(ctx, value, path)
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
    if port is not None and not port_ok(port):
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
