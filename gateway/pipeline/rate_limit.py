"""Rate limit, concurrency and quotas, decided by one limiter call (one Redis round trip):

* the key's own budget, a sliding window per key — its ``rate_limit_override`` (per minute),
  else its plan's ``rate_limit``, else ``defaults.rate_limit`` — shared by every route; and a
  route with its own ``rate_limit`` adds a second budget per key, in addition. The nearer to
  running out shows in ``RateLimit-*`` / ``X-RateLimit-*`` on every response; past either, 429
  ``rate_limited`` + ``Retry-After``.
* at most N requests in flight per key (the key's ``concurrency_limit``, else the route's
  ``max_concurrent``, else the plan's, else the default): 429 ``concurrency_limited``. The slot
  is held until the response has been fully sent or the exchange failed, client disconnects
  included.
* the workspace's plan quotas (admitted requests per UTC day and month): 429 ``quota_exceeded``
  with ``Retry-After`` = seconds until that period ends; ``X-Quota-*`` for the quota nearer to
  running out.

* the key's credits (README "Credits"), when it has any: the route's ``cost`` is spent from
  them; short, 429 ``credits_exhausted`` (``Retry-After`` only when a refill is due: seconds
  until it); ``X-Credits-Remaining`` on the responses of such keys. Never in shadow.

Shadow rules (README "Shadow mode": a route ``rate_limit`` or a plan ``quota`` with ``shadow:
true``, a key with ``enforcement: shadow``) refuse no one: ``gateway.limiter.shadow`` splits the
request's limits into the real decision and a second one asked in the same tick, and a request
the real one admits but a shadow rule would have refused gets that rule's code as the exchange's
``shadow``. A route without shadow rules pays one attribute test per request for them.

The plan comes with the cached key (``KeyRecord.plan``, read with it): no store lookup here.
A request refused for any reason spends nothing. A limiter failure follows ``on_limiter_error``:
``open`` admits (no limit headers), ``closed`` answers 503 ``rate_limit_unavailable``, ``local``
enforces each limit (quotas included) in this process divided by the number of processes
expected to share it (``limiter.expected_nodes`` times ``workers``) — except a key's credits,
whose live balance only the shared limiter knows: with ``local``, a key with credits gets 503
``rate_limit_unavailable`` rather than spend credits no other process would see.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

from gateway.config import RouteConfig
from gateway.errors import (
    CONCURRENCY_LIMITED,
    CREDITS_EXHAUSTED,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    RETRY_SOON,
    GatewayError,
    LimiterUnavailable,
)
from gateway.exchange import Check, Exchange, header_pairs
from gateway.keys.model import SHADOW, Credits, KeyRecord
from gateway.limiter.base import Decision, QuotaAsk, RateLimiter
from gateway.limiter.budget import Limits, admit_local_share, budget_of
from gateway.pipeline.shadow_limit import ShadowLimits
from gateway.services import Services

log = logging.getLogger("gateway.limiter")


# the lower-cased names of the lines below, which replace an upstream's headers of those names
RATE_NAMES = frozenset({"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
                        "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"})
QUOTA_NAMES = RATE_NAMES | {"x-quota-limit", "x-quota-remaining", "x-quota-reset"}
# by (a quota decided, credits shown)
LINE_NAMES = {(False, False): RATE_NAMES, (True, False): QUOTA_NAMES,
              (False, True): RATE_NAMES | {"x-credits-remaining"},
              (True, True): QUOTA_NAMES | {"x-credits-remaining"}}


@functools.lru_cache(maxsize=1024)
def _rate_parts(limit: int, reset: int) -> tuple[str, str, str]:
    """The six ``RateLimit-*`` lines around their two ``remaining`` values, for one limit and
    reset: those repeat from request to request, ``remaining`` does not."""
    return (f"RateLimit-Limit: {limit}\r\nRateLimit-Remaining: ",
            f"\r\nRateLimit-Reset: {reset}\r\nX-RateLimit-Limit: {limit}\r\n"
            "X-RateLimit-Remaining: ",
            f"\r\nX-RateLimit-Reset: {reset}")


@functools.lru_cache(maxsize=1024)
def _quota_parts(limit: int, reset: int) -> tuple[str, str]:
    return f"\r\nX-Quota-Limit: {limit}\r\nX-Quota-Remaining: ", f"\r\nX-Quota-Reset: {reset}"


def limit_lines(decision: Decision) -> str:
    """``RateLimit-*`` and ``X-RateLimit-*``, ``X-Quota-*`` when a quota was decided and
    ``X-Credits-Remaining`` for a key with credits, as header lines joined by CRLF: one string
    built per request, which a response written whole takes as it is
    (``Exchange.limit_lines``)."""
    head, middle, tail = _rate_parts(decision.limit, max(0, math.ceil(decision.reset)))
    remaining = decision.remaining
    lines = f"{head}{remaining}{middle}{remaining}{tail}"
    quota = decision.quota
    if quota is not None:
        head, tail = _quota_parts(quota.limit, max(0, math.ceil(quota.reset)))
        lines = f"{lines}{head}{quota.remaining}{tail}"
    if decision.credits is not None:
        lines = f"{lines}\r\nX-Credits-Remaining: {decision.credits}"
    return lines


def set_limit_headers(exchange: Exchange, decision: Decision) -> None:
    exchange.limit_lines = limit_lines(decision)
    exchange.limit_names = LINE_NAMES[decision.quota is not None, decision.credits is not None]


def quota_headers(decision: Decision) -> dict[str, str]:
    """The same headers as a dict (for a response refused before this stage ran)."""
    return dict(header_pairs(limit_lines(decision)))


def peek_headers_for(
    route: RouteConfig, services: Services
) -> Callable[[KeyRecord], Awaitable[dict[str, str]]]:
    """Rate-limit headers of the key's own budget without counting, for responses refused
    before this stage ran."""
    limits = Limits(route, services.config)

    async def peek(key: KeyRecord) -> dict[str, str]:
        limit, window, _, _ = limits.of(key)
        try:
            decision = await services.limiter.peek(budget_of(key), "", limit, window,
                                                   limits.algorithm)
            return quota_headers(decision)
        except LimiterUnavailable:
            return {}

    return peek


def apply(
    exchange: Exchange,
    decision: Decision,
    decider: RateLimiter,
    budget: str,
    cap: int | None,
) -> None:
    """Limit headers on the response; the slot given back once it is sent; 429 if refused."""
    set_limit_headers(exchange, decision)
    if decision.lease is not None:
        exchange.on_done(functools.partial(decider.release, budget, decision.lease))
    elif not decision.allowed:
        if decision.busy:
            raise GatewayError(
                CONCURRENCY_LIMITED,
                f"at most {cap} requests may be in flight for this key",
                RETRY_SOON,
            )
        if decision.no_credits:
            raise out_of_credits(decision)
        retry = str(max(1, math.ceil(decision.retry_after)))
        if decision.over_quota:
            raise GatewayError(QUOTA_EXCEEDED, "the workspace's plan quota is spent",
                               {"Retry-After": retry})
        raise GatewayError(RATE_LIMITED, "rate limit exceeded for this key", {"Retry-After": retry})


def out_of_credits(decision: Decision) -> GatewayError:
    """429 ``credits_exhausted``; ``Retry-After`` only when a refill is due (README
    "Credits")."""
    wait = math.ceil(decision.retry_after)
    return GatewayError(CREDITS_EXHAUSTED, "this key's credits are spent",
                        {"Retry-After": str(max(1, wait))} if wait > 0 else None)


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    config = services.config
    limits = Limits(route, config)
    also, algorithm, cost = limits.also, limits.algorithm, limits.cost
    policy = route.on_limiter_error or config.defaults.on_limiter_error
    nodes = config.limiter.expected_nodes * config.workers if config.redis else 1
    limiter = services.limiter
    local = services.local_limiter
    metrics = services.metrics

    async def degraded(
        budget: str, limit: int, window: float, cap: int | None, quota: QuotaAsk | None,
        credits: Credits | None,
    ) -> tuple[Decision | None, RateLimiter]:
        """The limiter failed and on_limiter_error is ``open`` or ``local``."""
        if policy == "local":  # this process's share of each limit
            if credits is not None:
                raise LimiterUnavailable("credits are only spent on the shared limiter")
            decision = await admit_local_share(local, nodes, budget, limit, window, cap, also,
                                               quota, algorithm)
            return decision, local
        return None, local  # open: admit without a quota to report

    async def decide(
        exchange: Exchange, budget: str, limit: int, window: float, cap: int | None,
        quota: QuotaAsk | None, credits: Credits | None,
    ) -> None:
        decision: Decision | None
        decider: RateLimiter = limiter
        try:
            decision = await limiter.admit(budget, "", limit, window, cap, also, quota, algorithm,
                                           credits, cost)
        except LimiterUnavailable:
            metrics.count_limiter_error(policy)
            if policy == "closed":
                raise  # 503 rate_limit_unavailable, Retry-After: 1 (gateway.errors)
            decision, decider = await degraded(budget, limit, window, cap, quota, credits)
        if decision is not None:
            apply(exchange, decision, decider, budget, cap)

    def rate_limit(exchange: Exchange) -> Awaitable[None] | None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        if key.enforcement == SHADOW:
            return shadowed(exchange, key)
        budget = budget_of(key)
        limit, window, cap, quota = limits.of(key)
        credits = key.credits
        decision = limiter.admit_nowait(budget, "", limit, window, cap, also, quota, algorithm,
                                        credits, cost)
        if decision is None:  # a shared limiter: the driver awaits its answer
            return decide(exchange, budget, limit, window, cap, quota, credits)
        apply(exchange, decision, limiter, budget, cap)
        return None

    shadowing = ShadowLimits(limits, services, policy, nodes, apply, set_limit_headers)
    shadowed = shadowing.check

    if limits.shadow is None and not limits.shadow_quota:
        return rate_limit
    # a route with a shadow window, or plans with a shadow quota: every request takes the
    # shadow-aware path
    return shadowing.stage
