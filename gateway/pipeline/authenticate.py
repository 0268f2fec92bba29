"""Authenticate: exactly one ``Authorization: Bearer <key>`` header; the key's checksum is
verified before any cache or store lookup, so typos and random guesses cost nothing."""

from __future__ import annotations

from aiohttp import web

from gateway.config import RouteConfig
from gateway.errors import (
    AUTH_UNAVAILABLE,
    BAD_REQUEST,
    EXPIRED_API_KEY,
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    MISSING_API_KEY,
    REVOKED_API_KEY,
    GatewayError,
    StoreUnavailable,
)
from gateway.keys.model import KeyRecord, is_well_formed, utcnow
from gateway.pipeline import rate_limit
from gateway.pipeline.exchange import Check, Exchange
from gateway.services import Services

_QUERY_KEY_NAMES = ("api_key", "apikey", "key", "access_token", "token")


def bearer_token(request: web.Request) -> str:
    values = request.headers.getall("Authorization", ())
    if not values:
        hint = ""
        if any(name in request.query for name in _QUERY_KEY_NAMES):
            hint = "; keys in query strings are not accepted"
        raise GatewayError(MISSING_API_KEY, "send the key as 'Authorization: Bearer <key>'" + hint)
    if len(values) > 1:
        raise GatewayError(BAD_REQUEST, "exactly one Authorization header is allowed")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise GatewayError(INVALID_API_KEY, "the Authorization scheme must be Bearer")
    token = token.strip()
    if not token:
        raise GatewayError(INVALID_API_KEY, "the Bearer token is empty")
    return token


def check_status(record: KeyRecord) -> None:
    status = record.effective_status(utcnow()) if record.expires_at else record.status
    if status == "revoked":
        raise GatewayError(REVOKED_API_KEY, "this API key has been revoked")
    if status == "expired":
        raise GatewayError(EXPIRED_API_KEY, "this API key has expired")
    if record.workspace_id is None:
        raise GatewayError(
            INSUFFICIENT_PERMISSIONS, "operator admin keys are valid on the admin API only"
        )


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    prefixes = services.prefixes
    hasher = services.hasher
    cache = services.cache
    peek_headers = rate_limit.peek_headers_for(route, services)

    async def lookup(token: str) -> KeyRecord:
        if not is_well_formed(token, prefixes):
            raise GatewayError(INVALID_API_KEY, "the API key is malformed")
        try:
            record = await cache.get(hasher(token))
        except StoreUnavailable:
            raise GatewayError(
                AUTH_UNAVAILABLE, "the key store is unavailable", {"Retry-After": "1"}
            ) from None
        if record is None:
            raise GatewayError(INVALID_API_KEY, "unknown API key")
        check_status(record)
        return record

    async def authenticate(exchange: Exchange) -> None:
        exchange.key = await lookup(bearer_token(exchange.request))
        # a later refusal still reports the key's quota (SPEC §4), without spending any
        exchange.peek_quota = peek_headers

    return authenticate
