"""Failed authentications per client address (README "Unauthenticated traffic").

Every 401 on the proxy (no key, a malformed, unknown, revoked, expired or disabled one) spends
one request of the address's ``failed_auth`` budget, in the limiter (in Redis when
configured); a success spends nothing. The failure that spends the last of it, or one the
limiter refuses, puts the address in this process's ``BlockedAddresses``; from then on, until
the window frees a request, every request from it to a keyed route is answered 429
``too_many_failed_auth`` + ``Retry-After`` by ``build``'s check, before authenticate looks at
its key: a probe costs the gateway no lookup and tells the prober nothing.

While the limiter fails, failures are counted in this process at its share of the budget
(``limiter.expected_nodes`` times ``workers``), whatever ``on_limiter_error`` says: ``open`` would
let probing run at full speed during an outage, ``closed`` would turn a 401 into a 503.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from gateway.client_address import budget_of
from gateway.config import RouteConfig
from gateway.errors import TOO_MANY_FAILED_AUTH, GatewayError, GatewayFailure, LimiterUnavailable
from gateway.exchange import Check, Exchange
from gateway.limiter.base import FAILED_AUTH_BUDGET, Decision, local_share
from gateway.pipeline.client import client_of
from gateway.services import Services

Counter = Callable[[Exchange, GatewayFailure], Awaitable[GatewayFailure]]


def too_many(seconds: float) -> GatewayError:
    return GatewayError(
        TOO_MANY_FAILED_AUTH,
        "too many failed authentications from this address; try again later",
        {"Retry-After": str(max(1, math.ceil(seconds)))},
    )


def build(route: RouteConfig, services: Services) -> Check | None:
    """The refusal of a blocked address, before authenticate (keyed routes only)."""
    if route.auth == "none" or services.config.failed_auth is None:
        return None
    blocked = services.blocked
    until = blocked.until
    client = client_of(services)

    def refuse_blocked(exchange: Exchange) -> None:
        if until:  # nobody blocked (the usual case): this test is all a request pays
            left = blocked.seconds_left(budget_of(client(exchange)))
            if left:
                raise too_many(left)

    return refuse_blocked


def build_counter(services: Services) -> Counter | None:
    """What a 401 becomes once counted: itself, or 429 when the budget was already spent."""
    budget = services.config.failed_auth
    if budget is None:
        return None
    config = services.config
    nodes = config.limiter.expected_nodes * config.workers if config.redis else 1
    limit, window, share = budget.requests, budget.window, local_share(budget.requests, nodes)
    limiter, local, metrics = services.limiter, services.local_limiter, services.metrics
    blocked = services.blocked
    client = client_of(services)

    async def decide(name: str) -> Decision:
        decision = limiter.admit_nowait(name, "", limit, window, None)
        if decision is not None:
            return decision
        try:
            return await limiter.admit(name, "", limit, window, None)
        except LimiterUnavailable:
            metrics.count_limiter_error("local")
            return local.admit_nowait(name, "", share, window, None)

    async def count(exchange: Exchange, failure: GatewayFailure) -> GatewayFailure:
        address = budget_of(client(exchange))
        decision = await decide(FAILED_AUTH_BUDGET + address)
        if not decision.allowed:
            blocked.block(address, decision.retry_after)
            return too_many(decision.retry_after)
        if decision.remaining <= 0:  # this failure spent the last of it
            blocked.block(address, decision.reset)
        return failure

    return count
