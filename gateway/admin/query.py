"""Unknown query parameters are rejected like unknown body fields: each endpoint takes the
ones its route lists (``Route.query``), which are also the ones the OpenAPI document shows."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.admin.route import Handler, Route
from gateway.errors import ValidationError


def query_allowlist(
    routes: Iterable[Route], public_paths: frozenset[str], own_rules: tuple[str, ...] = ()
) -> Middleware:
    """``own_rules``: prefixes of mounted apps that read their own query (the web console)."""
    allowed = {
        (route.method, route.path): frozenset(p["name"] for p in route.query) for route in routes
    }

    @web.middleware
    async def check_query(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if (resource is not None and request.path not in public_paths
                and not request.path.startswith(own_rules)):
            names = allowed.get((request.method, resource.canonical), frozenset())
            unknown = sorted(set(request.query) - names)
            if unknown:
                raise ValidationError({name: "unknown query parameter" for name in unknown})
        return await handler(request)

    return check_query
