"""Routing: refuse malformed requests (400), normalise the path, pick the route (404); the
query loses any parameter that carries an API key.

What a request target resolves to depends on the target alone (and the routes, fixed for a
pipeline), so the last few thousand targets are remembered, as Kong's router caches its
matches: a client calling the same paths again skips normalisation and matching. A target
that holds anything key-shaped (a key prefix anywhere in it) is never remembered, so no
plaintext key outlives its request (README "Decisions where the spec was silent")."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from operator import itemgetter

from aiohttp import web

from gateway.errors import BAD_REQUEST, HEADERS_TOO_LARGE, ROUTE_NOT_FOUND, GatewayError
from gateway.exchange import Exchange
from gateway.http import without_keys
from gateway.routing import BadPath, NormalizedPath, RouteMatch, RouteTable, normalize_path
from gateway.services import Services

REMEMBERED = 4096  # request targets whose resolution is kept (all forgotten when full)
REMEMBERED_LENGTH = 512  # the longest target kept

_name = itemgetter(0)


def check_headers(request: web.Request, max_bytes: int, line_bytes: int) -> None:
    """Header names with ``_`` are refused: proxies disagree on whether ``X_User_Id`` means
    ``X-User-Id``, which is how identity headers get smuggled past a gateway. The headers in
    all are at most ``max_bytes`` (each line's limit, ``line_bytes``, is the parser's:
    proxy_server; so few headers cannot pass it, and are not counted)."""
    raw = request.raw_headers
    if b"_" in b" ".join(map(_name, raw)):
        raise GatewayError(BAD_REQUEST, "header names may not contain '_'")
    lines = len(raw)
    if lines * line_bytes > max_bytes:
        size = sum(map(len, chain.from_iterable(raw))) + 4 * lines  # ": " and CRLF
        if size > max_bytes:
            raise GatewayError(HEADERS_TOO_LARGE, f"the headers exceed {max_bytes} bytes")


def resolve(
    exchange: Exchange, target: str, table: RouteTable, prefixes: frozenset[str]
) -> NormalizedPath:
    """Route the request target ``target``: 400 when it cannot be normalised safely, 404 when
    no route matches; the exchange's path, query and match are set."""
    try:
        normalized = normalize_path(target)
        found = table.resolve(normalized)
    except BadPath as exc:
        raise GatewayError(BAD_REQUEST, str(exc)) from None
    if found is None:
        raise GatewayError(ROUTE_NOT_FOUND, "no route matches this path")
    exchange.path = normalized.path
    # a key in the query string is never forwarded; without a header it is a 401 (http.py)
    exchange.query = without_keys(normalized.query, prefixes) if normalized.query else ""
    exchange.match = found
    return normalized


def build(services: Services) -> Callable[[Exchange], None]:
    table = RouteTable(services.config.routes)
    prefixes = services.prefixes
    limits = services.config.limits
    max_header_bytes = limits.max_header_bytes
    line_bytes = limits.max_header_line_bytes + 2  # a field's limit, with ": " and CRLF
    # target -> (path, query, match): see the module docstring
    remembered: dict[str, tuple[str, str, RouteMatch]] = {}

    def route(exchange: Exchange) -> None:
        request = exchange.request
        check_headers(request, max_header_bytes, line_bytes)
        target = request.raw_path
        known = remembered.get(target)
        if known is not None:
            exchange.path, exchange.query, exchange.match = known
            return
        resolve(exchange, target, table, prefixes)
        if len(target) <= REMEMBERED_LENGTH and not any(p in target for p in prefixes):
            if len(remembered) >= REMEMBERED:
                remembered.clear()
            assert exchange.match is not None  # resolve raised route_not_found otherwise
            remembered[target] = (exchange.path, exchange.query, exchange.match)

    route.remembered = remembered  # type: ignore[attr-defined]  # for the tests to look into
    return route
