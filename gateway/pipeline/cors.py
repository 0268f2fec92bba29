"""CORS (Fetch standard §3.2): preflights are answered here from the route's ``cors`` settings,
without a key, and never forwarded; actual requests from an allowed origin get the
``Access-Control-Allow-*`` response headers. A route without ``cors`` refuses preflights."""

from __future__ import annotations

from aiohttp import web

from gateway.config import CorsConfig, RouteConfig
from gateway.errors import ORIGIN_NOT_ALLOWED, GatewayError
from gateway.exchange import Check, Exchange
from gateway.origins import is_origin_allowed
from gateway.services import Services

ALWAYS_EXPOSED = (
    "X-Request-Id",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
)


def is_preflight(request: web.Request) -> bool:
    headers = request.headers
    return (
        request.method == "OPTIONS"
        and "Origin" in headers
        and "Access-Control-Request-Method" in headers
    )


def build(route: RouteConfig, services: Services) -> Check:
    if route.cors is None:
        return _refuse_preflights()
    return _cors(route.cors)


def _refuse_preflights() -> Check:
    def no_cors(exchange: Exchange) -> None:
        if is_preflight(exchange.request):
            raise GatewayError(ORIGIN_NOT_ALLOWED, "CORS is not enabled on this route")

    return no_cors


def _cors(cors: CorsConfig) -> Check:
    origins = cors.allow_origins
    methods = ", ".join(cors.allow_methods) if cors.allow_methods else None
    allow_headers = ", ".join(cors.allow_headers) if cors.allow_headers else None
    exposed = ", ".join(dict.fromkeys((*ALWAYS_EXPOSED, *cors.expose_headers)))
    max_age = str(cors.max_age)

    def allow(origin: str) -> dict[str, str]:
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if cors.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def preflight(exchange: Exchange, origin: str) -> web.Response:
        request = exchange.request
        wanted = request.headers["Access-Control-Request-Method"].upper()
        if cors.allow_methods and wanted not in cors.allow_methods:
            raise GatewayError(ORIGIN_NOT_ALLOWED, f"method {wanted} is not allowed by CORS")
        headers = allow(origin)
        headers["Access-Control-Allow-Methods"] = methods or wanted
        requested = request.headers.get("Access-Control-Request-Headers")
        if allow_headers or requested:
            headers["Access-Control-Allow-Headers"] = allow_headers or requested or ""
        headers["Access-Control-Max-Age"] = max_age
        headers.update(exchange.response_headers)
        return web.Response(status=204, headers=headers)

    def with_cors(exchange: Exchange) -> web.StreamResponse | None:
        # every answer on this route depends on Origin, including one to a request without it
        # (Fetch §3.2.5, "CORS protocol and HTTP caches"): a cache must not reuse it for others
        exchange.response_headers["Vary"] = "Origin"
        origin = exchange.request.headers.get("Origin")
        if origin is None:
            return None
        allowed = is_origin_allowed(origin, origins)
        if is_preflight(exchange.request):
            if not allowed:
                raise GatewayError(ORIGIN_NOT_ALLOWED, "this origin may not call this route")
            return preflight(exchange, origin)
        if allowed:
            exchange.response_headers.update(allow(origin))
            exchange.response_headers["Access-Control-Expose-Headers"] = exposed
        return None

    return with_cors
