"""Concurrency: at most N requests in flight per key (the key's ``concurrency_limit``, else the
route's ``max_concurrent``, else the default); the slot is held until the response has been
fully sent or the exchange failed, client disconnects included."""

from __future__ import annotations

from gateway.config import RouteConfig
from gateway.errors import CONCURRENCY_LIMITED, GatewayError, LimiterUnavailable
from gateway.pipeline.exchange import Check, Exchange
from gateway.services import Services


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    route_limit = route.max_concurrent or services.config.defaults.max_concurrent
    limiter = services.limiter

    async def concurrency(exchange: Exchange) -> None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        limit = key.concurrency_limit or route_limit
        if limit is None:
            return
        bucket = f"c:{key.rotated_from or key.key_id}"
        try:
            acquired = await limiter.acquire(bucket, limit)
        except LimiterUnavailable:
            return  # the rate-limit stage applied the on_limiter_error policy
        if not acquired:
            raise GatewayError(
                CONCURRENCY_LIMITED,
                f"at most {limit} requests may be in flight for this key",
                {"Retry-After": "1"},
            )
        exchange.on_done(lambda: limiter.release(bucket))  # after the response is sent

    return concurrency
