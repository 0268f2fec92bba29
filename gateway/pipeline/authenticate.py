"""Authenticate: exactly one ``Authorization: Bearer <key>`` header; the key's checksum is
verified before any cache or store lookup, so typos and random guesses cost nothing."""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.config import RouteConfig
from gateway.exchange import Check, Exchange
from gateway.http import bearer_token, invalid_key
from gateway.keys.access import check_status
from gateway.keys.cache import MISS
from gateway.keys.model import KeyRecord, is_well_formed
from gateway.pipeline import rate_limit
from gateway.services import Services


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    prefixes = services.prefixes
    hasher = services.hasher
    cache = services.cache
    peek_headers = rate_limit.peek_headers_for(route, services)

    def accept(exchange: Exchange, record: KeyRecord | None) -> None:
        if record is None:
            raise invalid_key()  # unknown: reads as a malformed one does
        exchange.key = record  # known, even if refused below: its usage counts it (rejected)
        check_status(record)
        # a later refusal still reports the key's quota (README "The request path"), without
        # spending any
        exchange.peek_quota = peek_headers

    async def load(exchange: Exchange, key_hash: str) -> None:
        # StoreUnavailable passes through: the proxy answers it (gateway.pipeline.failure)
        accept(exchange, await cache.load(key_hash))

    def authenticate(exchange: Exchange) -> Awaitable[None] | None:
        token = bearer_token(exchange.request)
        if not is_well_formed(token, prefixes):
            raise invalid_key()  # malformed or a bad checksum
        key_hash = hasher(token)
        record = cache.get_nowait(key_hash)
        if record is MISS:
            return load(exchange, key_hash)  # only the store can tell: the driver awaits it
        accept(exchange, record)  # a cache hit (or a remembered unknown key) waits for nothing
        return None

    return authenticate
