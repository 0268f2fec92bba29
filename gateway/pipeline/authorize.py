"""Authorize: route permissions (expanded through ``permissions.implies``), the route's resource
against the key's scopes, the request ``Origin`` against the key's ``allowed_origins``, and the
client address (README "Client address") against its ``allowed_ips`` (README "IP allowlists").

A key with ``enforcement: shadow`` (README "Shadow mode") is refused by none of these: the first
refusal becomes the exchange's ``shadow`` code and the request goes on. The checks run inside a
``try`` that costs nothing until one raises, so an enforcing key pays nothing for it."""

from __future__ import annotations

from functools import lru_cache

from aiohttp import web

from gateway.client_address import ip_allowlist
from gateway.config import RouteConfig
from gateway.errors import (
    INSUFFICIENT_PERMISSIONS,
    IP_NOT_ALLOWED,
    ORIGIN_NOT_ALLOWED,
    RESOURCE_FORBIDDEN,
    GatewayError,
)
from gateway.exchange import Check, Exchange
from gateway.keys.access import expand, missing_permission, scope_allows
from gateway.keys.model import SHADOW, KeyRecord
from gateway.origins import is_origin_allowed
from gateway.pipeline.client import client_of
from gateway.services import Services

NOT_FROM_HERE = "this key may not be used from this address"


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
    client = client_of(services)

    @lru_cache(maxsize=4096)
    def granted_for(permissions: tuple[str, ...]) -> frozenset[str]:
        return expand(permissions, implies)

    def authorize(exchange: Exchange) -> None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        request = exchange.request
        try:
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
                        RESOURCE_FORBIDDEN,
                        "this key's scopes do not cover this resource/operation",
                    )
            check_origin(request, key)
            if key.allowed_ips and not ip_allowlist(key.allowed_ips).allows(client(exchange)):
                raise GatewayError(IP_NOT_ALLOWED, NOT_FROM_HERE)
        except GatewayError as refusal:
            if key.enforcement != SHADOW:
                raise
            exchange.shadow = refusal.kind.code  # README "Shadow mode": forwarded, counted

    return authorize
