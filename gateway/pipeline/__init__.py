"""THE request path, in order (SPEC §4). Read this file to know what runs before what.

Front stages run for every request; route stages are built once per route at start-up, and a
stage that does not apply to a route (``auth: none``, no ``cors``) installs nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway import proxy
from gateway.config import RouteConfig
from gateway.pipeline import (
    authenticate,
    authorize,
    concurrency,
    cors,
    errors,
    rate_limit,
    request_id,
    routing,
    tenancy,
)
from gateway.pipeline.exchange import Exchange, Handler
from gateway.services import Services

FrontStage = Callable[[Services, Handler], Handler]
RouteStage = Callable[[RouteConfig, Services, Handler], Handler]

FRONT_STAGES: tuple[FrontStage, ...] = (
    errors.build,  # problem+json for every GatewayError; 500 for anything else
    request_id.build,  # X-Request-Id in and out
    routing.build,  # 400 malformed path/headers, 404 route_not_found
)

ROUTE_STAGES: tuple[RouteStage, ...] = (
    cors.build,  # preflights answered here, never forwarded
    authenticate.build,  # Bearer key -> key record (401, 503 auth_unavailable)
    authorize.build,  # permissions, resource scopes, allowed origins (403)
    tenancy.build,  # X-Project-Id, X-Namespace (404)
    rate_limit.build,  # sliding window per key (429)
    concurrency.build,  # in-flight requests per key (429)
)
# ... and then proxy.build: forward to the upstream, count usage.


def build_route_handler(route: RouteConfig, services: Services) -> Handler:
    handler = proxy.build(route, services)
    for stage in reversed(ROUTE_STAGES):
        handler = stage(route, services, handler)
    return handler


def build_pipeline(services: Services) -> Callable[[web.Request], object]:
    by_route = {r.name: build_route_handler(r, services) for r in services.config.routes}

    async def dispatch(exchange: Exchange) -> web.StreamResponse:
        assert exchange.match is not None  # routing raised route_not_found otherwise
        return await by_route[exchange.match.route.name](exchange)

    handler: Handler = dispatch
    for stage in reversed(FRONT_STAGES):
        handler = stage(services, handler)
    front = handler

    async def handle(request: web.Request) -> web.StreamResponse:
        return await front(Exchange(request))

    return handle
