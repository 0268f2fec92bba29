"""Rate limit and concurrency, decided by one limiter call (one Redis round trip):

* a sliding window per key — ``rate_limit_override`` (per minute) if the key has one, else the
  route's limit, else the default — with ``RateLimit-*`` / ``X-RateLimit-*`` headers on every
  response and 429 ``rate_limited`` + ``Retry-After`` past the limit. The override and the
  default are one budget per key across routes; a route with its own ``rate_limit`` has its own
  budget per key.
* at most N requests in flight per key (the key's ``concurrency_limit``, else the route's
  ``max_concurrent``, else the default): 429 ``concurrency_limited``. The slot is held until the
  response has been fully sent or the exchange failed, client disconnects included.

A request refused for concurrency is not counted against the rate limit. A limiter failure
follows ``on_limiter_error``: ``open`` admits (no quota headers), ``closed`` answers 503
``rate_limit_unavailable``, ``local`` enforces each limit in this process divided by the number of
processes expected to share it (``limiter.expected_nodes`` times ``workers``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

from multidict import istr

from gateway.config import RateLimit, RouteConfig
from gateway.errors import (
    CONCURRENCY_LIMITED,
    RATE_LIMITED,
    RETRY_SOON,
    GatewayError,
    LimiterUnavailable,
)
from gateway.exchange import Check, Exchange
from gateway.keys.model import KeyRecord
from gateway.keys.usage import UsageRecorder
from gateway.limiter.base import Decision, RateLimiter, local_share
from gateway.services import Services

log = logging.getLogger("gateway.limiter")


def quota_for(key: KeyRecord, route: RouteConfig, default: RateLimit) -> tuple[str, int, float]:
    """(scope, limit, window) for this key on this route: scope "" is the key-wide budget."""
    if key.rate_limit_override is not None:
        return "", key.rate_limit_override, 60.0
    if route.rate_limit is not None:
        return route.name, route.rate_limit.requests, route.rate_limit.window
    return "", default.requests, default.window


def budget_of(key: KeyRecord) -> str:
    """A rotated key spends its predecessor's budget: the first key of the chain names it."""
    return key.rotated_from or key.key_id


@functools.lru_cache(maxsize=1024)
def _text(number: int) -> str:
    return str(number)


# istr: the response's CIMultiDict takes these names without case-folding them per request
LIMIT, REMAINING, RESET = (
    istr("RateLimit-Limit"), istr("RateLimit-Remaining"), istr("RateLimit-Reset")
)
X_LIMIT, X_REMAINING, X_RESET = (
    istr("X-RateLimit-Limit"), istr("X-RateLimit-Remaining"), istr("X-RateLimit-Reset")
)


def quota_headers(decision: Decision) -> dict[str, str]:
    limit, remaining = _text(decision.limit), str(decision.remaining)
    reset = _text(max(0, math.ceil(decision.reset)))
    return {
        LIMIT: limit,
        REMAINING: remaining,
        RESET: reset,
        X_LIMIT: limit,
        X_REMAINING: remaining,
        X_RESET: reset,
    }


def peek_headers_for(
    route: RouteConfig, services: Services
) -> Callable[[KeyRecord], Awaitable[dict[str, str]]]:
    """Quota headers without counting, for responses refused before this stage ran."""
    default = services.config.defaults.rate_limit

    async def peek(key: KeyRecord) -> dict[str, str]:
        scope, limit, window = quota_for(key, route, default)
        try:
            return quota_headers(await services.limiter.peek(budget_of(key), scope, limit, window))
        except LimiterUnavailable:
            return {}

    return peek


def apply(
    exchange: Exchange,
    decision: Decision,
    decider: RateLimiter,
    budget: str,
    cap: int | None,
    usage: UsageRecorder,
) -> None:
    """Quota headers on the response; the slot given back once it is sent; 429 if refused."""
    exchange.response_headers.update(quota_headers(decision))
    if decision.lease is not None:
        exchange.on_done(functools.partial(decider.release, budget, decision.lease))
    elif not decision.allowed:
        if decision.busy:
            raise GatewayError(
                CONCURRENCY_LIMITED,
                f"at most {cap} requests may be in flight for this key",
                RETRY_SOON,
            )
        assert exchange.key is not None  # authenticate runs first on every auth route
        usage.rate_limited(exchange.key.key_id)
        retry = str(max(1, math.ceil(decision.retry_after)))
        raise GatewayError(RATE_LIMITED, "rate limit exceeded for this key", {"Retry-After": retry})


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    config = services.config
    default = config.defaults.rate_limit
    route_cap = route.max_concurrent or config.defaults.max_concurrent
    policy = route.on_limiter_error or config.defaults.on_limiter_error
    nodes = config.limiter.expected_nodes * config.workers if config.redis else 1
    limiter = services.limiter
    local = services.local_limiter
    usage = services.usage
    metrics = services.metrics

    async def degraded(
        budget: str, scope: str, limit: int, window: float, cap: int | None
    ) -> tuple[Decision | None, RateLimiter]:
        """The limiter failed and on_limiter_error is ``open`` or ``local``."""
        if policy == "local":  # this process's share of each limit
            local_cap = None if cap is None else local_share(cap, nodes)
            share = local_share(limit, nodes)
            return await local.admit(budget, scope, share, window, local_cap), local
        return None, local  # open: admit without a quota to report

    async def decide(
        exchange: Exchange, budget: str, scope: str, limit: int, window: float, cap: int | None
    ) -> None:
        decision: Decision | None
        decider: RateLimiter = limiter
        try:
            decision = await limiter.admit(budget, scope, limit, window, cap)
        except LimiterUnavailable:
            metrics.count_limiter_error(policy)
            if policy == "closed":
                raise  # 503 rate_limit_unavailable, Retry-After: 1 (gateway.errors)
            decision, decider = await degraded(budget, scope, limit, window, cap)
        if decision is not None:
            apply(exchange, decision, decider, budget, cap, usage)

    def rate_limit(exchange: Exchange) -> Awaitable[None] | None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        budget = budget_of(key)
        scope, limit, window = quota_for(key, route, default)
        cap = key.concurrency_limit or route_cap
        decision = limiter.admit_nowait(budget, scope, limit, window, cap)
        if decision is None:  # a shared limiter: the driver awaits its answer
            return decide(exchange, budget, scope, limit, window, cap)
        apply(exchange, decision, limiter, budget, cap, usage)
        return None

    return rate_limit
