"""The rate_limit stage's requests with shadow rules among their limits (README "Shadow mode";
the split itself: ``gateway.limiter.shadow``): the real decision and the shadow one asked in the
same tick, the real one answered as ever, the shadow one's verdict kept as the exchange's
``shadow`` code when the real one admitted the request."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from gateway.errors import LimiterUnavailable
from gateway.exchange import Exchange
from gateway.keys.model import SHADOW, KeyRecord
from gateway.limiter.base import Decision, RateLimiter
from gateway.limiter.budget import Limits, admit_local_share, budget_of
from gateway.limiter.shadow import Ask, split, visible, would_refuse
from gateway.services import Services

# the rate_limit stage's answer to a decision: headers, the slot's release, or the 429
Apply = Callable[[Exchange, Decision, RateLimiter, str, "int | None"], None]


class ShadowLimits:
    """One route's limits with shadow rules, built with the stage."""

    def __init__(self, limits: Limits, services: Services, policy: str, nodes: int,
                 apply: Apply, headers: Callable[[Exchange, Decision], None]) -> None:
        self._limits = limits
        self._limiter = services.limiter
        self._local = services.local_limiter
        self._metrics = services.metrics
        self._policy = policy
        self._nodes = nodes
        self._apply = apply
        self._headers = headers

    def stage(self, exchange: Exchange) -> Awaitable[None] | None:
        """The rate_limit stage itself, for a route where every request has shadow rules."""
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        return self.check(exchange, key)

    def check(self, exchange: Exchange, key: KeyRecord) -> Awaitable[None] | None:
        limits, limiter = self._limits, self._limiter
        limit, window, cap, quota = limits.of(key)
        real, shadow = split(budget_of(key), limit, window, cap, limits.also, quota,
                             limits.algorithm, limits.shadow, key.enforcement == SHADOW,
                             key.credits, limits.cost)
        real_decision = limiter.admit_nowait(*real) if real is not None else None
        if real is None or real_decision is not None:  # in-process: both decided now
            shadow_decision = limiter.admit_nowait(*shadow) if shadow is not None else None
            if shadow is None or shadow_decision is not None:
                self._settle(exchange, real, real_decision, limiter, shadow, shadow_decision)
                return None
        return self._decide(exchange, real, shadow)

    async def _decide(self, exchange: Exchange, real: Ask | None, shadow: Ask | None) -> None:
        """Both asked in this tick (one Redis batch); the real one under ``on_limiter_error``,
        the shadow one not at all while the limiter fails."""
        limiter = self._limiter
        pending = limiter.admit(*shadow) if shadow is not None else None
        decider, real_decision = limiter, None
        try:
            if real is not None:
                decider, real_decision = await self._real(real)
        except BaseException:  # refused or cancelled: a slot the shadow ask took goes back
            shadow_decision = await _outcome(pending)
            if shadow is not None and shadow_decision is not None and shadow_decision.lease:
                limiter.release(shadow.budget, shadow_decision.lease)
            raise
        shadow_decision = await _outcome(pending)
        if real_decision is None:  # on_limiter_error: open admitted it, with nothing to show
            real = None
        self._settle(exchange, real, real_decision, decider, shadow, shadow_decision)

    async def _real(self, real: Ask) -> tuple[RateLimiter, Decision | None]:
        try:
            return self._limiter, await self._limiter.admit(*real)
        except LimiterUnavailable:
            self._metrics.count_limiter_error(self._policy)
            if self._policy == "closed":
                raise  # 503 rate_limit_unavailable
            if self._policy == "open":
                return self._local, None
            if real.credits is not None:  # README "Credits": only the shared limiter has them
                raise
            decision = await admit_local_share(
                self._local, self._nodes, real.budget, real.limit, real.window, real.cap,
                real.also, real.quota, real.algorithm, scope=real.scope)
            return self._local, decision

    def _settle(
        self, exchange: Exchange, real: Ask | None, real_decision: Decision | None,
        decider: RateLimiter, shadow: Ask | None, shadow_decision: Decision | None,
    ) -> None:
        """Headers, slots to give back, the real refusal; else the would-be one."""
        if shadow is not None and shadow_decision is not None and shadow_decision.lease:
            exchange.on_done(functools.partial(self._limiter.release, shadow.budget,
                                               shadow_decision.lease))
        shown = None
        if real is not None and real_decision is not None:
            shown = visible(real_decision)
            self._apply(exchange, shown, decider, real.budget, real.cap)
        if shadow is not None and shadow_decision is not None and shadow.scope == "":
            # a shadow key: its own window is what RateLimit-* show, as for any key, beside
            # the real decision's quota and credits
            quota, credits = (shown.quota, shown.credits) if shown is not None else (None, None)
            self._headers(exchange, shadow_decision._replace(quota=quota, credits=credits))
        rule = would_refuse(real_decision, shadow_decision)
        if rule is not None and exchange.shadow is None:
            exchange.shadow = rule


async def _outcome(pending: Awaitable[Decision] | None) -> Decision | None:
    """A shadow decision, or None when there was none to ask or the limiter failed."""
    if pending is None:
        return None
    try:
        return await pending
    except LimiterUnavailable:
        return None
