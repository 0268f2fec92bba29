"""Concurrency: at most N requests in flight per key (the key's ``concurrency_limit``, else the
route's ``max_concurrent``, else the default); the slot is held until the response has been
fully sent or the exchange failed, client disconnects included."""

from __future__ import annotations

from aiohttp import web

from gateway.config import RouteConfig
from gateway.errors import CONCURRENCY_LIMITED, GatewayError, LimiterUnavailable
from gateway.pipeline.exchange import Exchange, Handler
from gateway.services import Services


def build(route: RouteConfig, services: Services, next_handler: Handler) -> Handler:
    if route.auth == "none":
        return next_handler
    route_limit = route.max_concurrent or services.config.defaults.max_concurrent
    limiter = services.limiter

    async def concurrency(exchange: Exchange) -> web.StreamResponse:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        limit = key.concurrency_limit or route_limit
        if limit is None:
            return await next_handler(exchange)
        bucket = f"c:{key.rotated_from or key.key_id}"
        try:
            acquired = await limiter.acquire(bucket, limit)
        except LimiterUnavailable:
            return await next_handler(exchange)  # the rate-limit stage applied the policy
        if not acquired:
            raise GatewayError(
                CONCURRENCY_LIMITED,
                f"at most {limit} requests may be in flight for this key",
                {"Retry-After": "1"},
            )
        try:
            return await next_handler(exchange)
        finally:
            await limiter.release(bucket)

    return concurrency
