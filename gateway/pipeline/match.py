"""Routing: refuse malformed requests (400), normalise the path, pick the route (404); the
query loses any parameter that carries an API key."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.errors import BAD_REQUEST, HEADERS_TOO_LARGE, ROUTE_NOT_FOUND, GatewayError
from gateway.exchange import Exchange
from gateway.http import without_keys
from gateway.routing import BadPath, NormalizedPath, RouteTable, normalize_path
from gateway.services import Services


def check_headers(request: web.Request, max_bytes: int) -> None:
    """Header names with ``_`` are refused: proxies disagree on whether ``X_User_Id`` means
    ``X-User-Id``, which is how identity headers get smuggled past a gateway. The headers in
    all are at most ``max_bytes`` (each line's limit is the parser's: proxy_server)."""
    size = 0
    for name, value in request.raw_headers:
        if b"_" in name:
            raise GatewayError(BAD_REQUEST, "header names may not contain '_'")
        size += len(name) + len(value) + 4  # ": " and CRLF
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
    max_header_bytes = services.config.limits.max_header_bytes

    def route(exchange: Exchange) -> None:
        request = exchange.request
        check_headers(request, max_header_bytes)
        resolve(exchange, request.raw_path, table, prefixes)

    return route
