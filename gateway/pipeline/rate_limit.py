"""Rate limit: a sliding window per key — ``rate_limit_override`` (per minute) if the key has
one, else the route's limit, else the default — with ``RateLimit-*`` / ``X-RateLimit-*``
headers on every response and 429 + ``Retry-After`` past the limit.

Buckets: the override and the default are one budget per key across routes; a route with its
own ``rate_limit`` has its own budget per key. A limiter failure follows ``on_limiter_error``:
``open`` admits, ``closed`` answers 503, ``local`` enforces the limit in this process.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

from gateway.config import RateLimit, RouteConfig
from gateway.errors import (
    RATE_LIMIT_UNAVAILABLE,
    RATE_LIMITED,
    GatewayError,
    LimiterUnavailable,
)
from gateway.keys.model import KeyRecord
from gateway.pipeline.exchange import Check, Exchange
from gateway.ratelimit.base import Decision
from gateway.services import Services

log = logging.getLogger("gateway.ratelimit")


def quota_for(key: KeyRecord, route: RouteConfig, default: RateLimit) -> tuple[str, int, float]:
    """(bucket, limit, window) for this key on this route."""
    budget = key.rotated_from or key.key_id  # a rotated key shares its predecessor's budget
    if key.rate_limit_override is not None:
        return f"k:{budget}", key.rate_limit_override, 60.0
    if route.rate_limit is not None:
        return f"k:{budget}:r:{route.name}", route.rate_limit.requests, route.rate_limit.window
    return f"k:{budget}", default.requests, default.window


@functools.lru_cache(maxsize=1024)
def _text(number: int) -> str:
    return str(number)


def quota_headers(decision: Decision) -> dict[str, str]:
    limit, remaining = _text(decision.limit), str(decision.remaining)
    reset = _text(max(0, math.ceil(decision.reset)))
    return {
        "RateLimit-Limit": limit,
        "RateLimit-Remaining": remaining,
        "RateLimit-Reset": reset,
        "X-RateLimit-Limit": limit,
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": reset,
    }


def peek_headers_for(
    route: RouteConfig, services: Services
) -> Callable[[KeyRecord], Awaitable[dict[str, str]]]:
    """Quota headers without counting, for responses refused before this stage ran."""
    default = services.config.defaults.rate_limit

    async def peek(key: KeyRecord) -> dict[str, str]:
        bucket, limit, window = quota_for(key, route, default)
        try:
            return quota_headers(await services.limiter.peek(bucket, limit, window))
        except LimiterUnavailable:
            return {}

    return peek


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    default = services.config.defaults.rate_limit
    policy = route.on_limiter_error or services.config.defaults.on_limiter_error
    limiter = services.limiter
    usage = services.usage
    metrics = services.metrics

    async def degraded(bucket: str, limit: int, window: float) -> Decision | None:
        """The limiter failed: apply on_limiter_error."""
        metrics.count_limiter_error(policy)
        if policy == "closed":
            raise GatewayError(
                RATE_LIMIT_UNAVAILABLE, "rate limiting is unavailable", {"Retry-After": "1"}
            )
        if policy == "local":
            return await services.local_limiter.hit(bucket, limit, window)
        return None  # open: admit without a quota to report

    async def rate_limit(exchange: Exchange) -> None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        bucket, limit, window = quota_for(key, route, default)
        decision: Decision | None
        try:  # no nested coroutine on the hot path: this runs on every keyed request
            decision = await limiter.hit(bucket, limit, window)
        except LimiterUnavailable:
            decision = await degraded(bucket, limit, window)
        if decision is not None:
            exchange.response_headers.update(quota_headers(decision))
            if not decision.allowed:
                usage.rate_limited(key.key_id)
                retry = str(max(1, math.ceil(decision.retry_after)))
                raise GatewayError(
                    RATE_LIMITED, "rate limit exceeded for this key", {"Retry-After": retry}
                )

    return rate_limit
