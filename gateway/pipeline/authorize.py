"""Authorize: route permissions (expanded through ``permissions.implies``), the route's resource
against the key's scopes, and the request ``Origin`` against the key's ``allowed_origins``."""

from __future__ import annotations

from functools import lru_cache

from aiohttp import web

from gateway.config import RouteConfig
from gateway.errors import (
    INSUFFICIENT_PERMISSIONS,
    ORIGIN_NOT_ALLOWED,
    RESOURCE_FORBIDDEN,
    GatewayError,
)
from gateway.exchange import Check, Exchange
from gateway.keys.access import expand, missing_permission, scope_allows
from gateway.keys.model import KeyRecord
from gateway.origins import is_origin_allowed
from gateway.services import Services


def check_origin(request: web.Request, key: KeyRecord) -> None:
    if not key.allowed_origins:
        return
    origin = request.headers.get("Origin")
    if origin is not None and not is_origin_allowed(origin, key.allowed_origins):
        raise GatewayError(ORIGIN_NOT_ALLOWED, "this key may not be used from this origin")


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    implies = services.config.implies
    required_by_method = route.permissions
    default_required = required_by_method.get("*", ())
    resource = route.resource
    operations = route.operations

    @lru_cache(maxsize=4096)
    def granted_for(permissions: tuple[str, ...]) -> frozenset[str]:
        return expand(permissions, implies)

    def authorize(exchange: Exchange) -> None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        request = exchange.request
        required = required_by_method.get(request.method, default_required)
        if required:
            missing = missing_permission(required, granted_for(key.permissions))
            if missing is not None:
                raise GatewayError(
                    INSUFFICIENT_PERMISSIONS, f"this key lacks the permission '{missing}'"
                )
        if resource is not None and exchange.match is not None:
            resource_id = exchange.match.params[resource]
            if not scope_allows(key, resource_id, operations.get(request.method)):
                raise GatewayError(
                    RESOURCE_FORBIDDEN, "this key's scopes do not cover this resource/operation"
                )
        check_origin(request, key)

    return authorize
