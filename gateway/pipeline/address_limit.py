"""An ``auth: none`` route's ``rate_limit``, per client address (README "Unauthenticated
traffic"): a sliding window per address and route, decided by the same limiter as key budgets
(in Redis when configured), with the same ``RateLimit-*`` headers, 429 ``rate_limited`` +
``Retry-After``, and ``on_limiter_error``. An IPv6 client is counted by its /64
(``gateway.client_address.budget_of``). Keyed routes build nothing here: their limits are
per key (``gateway.pipeline.rate_limit``)."""

from __future__ import annotations

import math
from collections.abc import Awaitable

from gateway.client_address import budget_of
from gateway.config import RouteConfig
from gateway.errors import RATE_LIMITED, GatewayError, LimiterUnavailable
from gateway.exchange import Check, Exchange
from gateway.limiter.base import ADDRESS_BUDGET, Decision, local_share
from gateway.pipeline.client import client_of
from gateway.pipeline.rate_limit import set_limit_headers
from gateway.services import Services


def answer(exchange: Exchange, decision: Decision) -> None:
    set_limit_headers(exchange, decision)
    if not decision.allowed:
        retry = str(max(1, math.ceil(decision.retry_after)))
        raise GatewayError(RATE_LIMITED, "rate limit exceeded for this client address",
                           {"Retry-After": retry})


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth != "none" or route.rate_limit is None:
        return None
    config = services.config
    policy = route.on_limiter_error or config.defaults.on_limiter_error
    nodes = config.limiter.expected_nodes * config.workers if config.redis else 1
    scope, limit, window = route.name, route.rate_limit.requests, route.rate_limit.window
    share = local_share(limit, nodes)
    limiter, local, metrics = services.limiter, services.local_limiter, services.metrics
    client = client_of(services)

    async def decide(exchange: Exchange, budget: str) -> None:
        try:
            decision = await limiter.admit(budget, scope, limit, window, None)
        except LimiterUnavailable:
            metrics.count_limiter_error(policy)
            if policy == "closed":
                raise  # 503 rate_limit_unavailable, Retry-After: 1 (gateway.errors)
            if policy == "open":
                return
            decision = local.admit_nowait(budget, scope, share, window, None)
        answer(exchange, decision)

    def limit_address(exchange: Exchange) -> Awaitable[None] | None:
        budget = ADDRESS_BUDGET + budget_of(client(exchange))
        decision = limiter.admit_nowait(budget, scope, limit, window, None)
        if decision is None:  # a shared limiter: the driver awaits its answer
            return decide(exchange, budget)
        answer(exchange, decision)
        return None

    return limit_address
