"""What a key may spend, whatever asks (the request path's rate_limit stage, the key check API):
its own budget and window, a route's second window, its in-flight cap and its workspace's
quotas, from its plan (README "Rate limits"); and the decision when the shared limiter is down
and ``on_limiter_error`` is ``local``."""

from __future__ import annotations

from typing import NamedTuple

from gateway.config import Config, PlanConfig, RouteConfig
from gateway.keys.model import KeyRecord
from gateway.limiter.base import Decision, QuotaAsk, RateLimiter, Window, local_share
from gateway.limiter.shadow import SHADOW_QUOTA, shadow_quota


class PlanLimits(NamedTuple):
    """What a plan (or no plan) means on one route: the key budget, the in-flight cap, the
    quotas (0: none)."""

    limit: int
    window: float
    cap: int | None
    day: int
    month: int


def plan_limits(plan: PlanConfig | None, route: RouteConfig | None, config: Config) -> PlanLimits:
    rate = (plan.rate_limit if plan else None) or config.defaults.rate_limit
    cap = (route and route.max_concurrent) or (plan.max_concurrent if plan else None)
    quota = plan.quota if plan else None
    day, month = ((quota.day or 0), (quota.month or 0)) if quota else (0, 0)
    if quota is not None and quota.shadow:  # README "Shadow mode": counted, never refused
        day, month = shadow_quota(day), shadow_quota(month)
    return PlanLimits(rate.requests, rate.window, cap or config.defaults.max_concurrent, day, month)


class Limits:
    """One route's limits for any key, precomputed per plan (README "Rate limits"); without a
    route (the key check API), the key's own."""

    def __init__(self, route: RouteConfig | None, config: Config) -> None:
        self.algorithm = config.defaults.algorithm  # the key-wide budget's, on every route
        self.cost = route.cost if route is not None else 1  # credits (README "Credits")
        own = (
            Window(route.name, route.rate_limit.requests, route.rate_limit.window,
                   route.algorithm or self.algorithm)
            if route is not None and route.rate_limit is not None else None
        )
        shadowed = route is not None and route.rate_limit is not None and route.rate_limit.shadow
        self.also = None if shadowed else own  # the route's window, enforced
        self.shadow = own if shadowed else None  # ... or in shadow (README "Shadow mode")
        self.shadow_quota = any(p.quota.shadow for p in config.plans.values())
        self._plans = {name: plan_limits(p, route, config) for name, p in config.plans.items()}
        default = config.plans.get(config.default_plan) if config.default_plan else None
        self._default = plan_limits(default, route, config)
        # (workspace, day, month) -> its QuotaAsk, made once rather than per request; as many
        # entries as workspaces with a quota (the pipeline, and this, is rebuilt on reload)
        self._asks: dict[tuple[str, int, int], QuotaAsk] = {}

    def of(self, key: KeyRecord) -> tuple[int, float, int | None, QuotaAsk | None]:
        """(limit, window, cap, quota) for ``key``: a plan no longer declared falls back to
        ``default_plan`` (a reload refuses to drop a plan in use; a restart does not)."""
        plan = self._default if key.plan is None else self._plans.get(key.plan, self._default)
        if key.rate_limit_override is not None:
            limit, window = key.rate_limit_override, 60.0
        else:
            limit, window = plan.limit, plan.window
        quota = None
        if (plan.day or plan.month) and key.workspace_id is not None:
            name = (key.workspace_id, plan.day, plan.month)
            quota = self._asks.get(name)
            if quota is None:
                quota = self._asks[name] = QuotaAsk(*name)
        return limit, window, key.concurrency_limit or plan.cap, quota


def budget_of(key: KeyRecord) -> str:
    """A rotated key spends its predecessor's budget: the first key of the chain names it."""
    return key.rotated_from or key.key_id


async def admit_local_share(
    local: RateLimiter, nodes: int, budget: str, limit: int, window: float, cap: int | None,
    also: Window | None, quota: QuotaAsk | None, algorithm: str, scope: str = "",
) -> Decision:
    """``local``'s decision on this process's share of each limit (quotas included), when the
    shared limiter failed: 1/``nodes`` of each."""
    if cap is not None:
        cap = local_share(cap, nodes)
    if also is not None:
        also = also._replace(limit=local_share(also.limit, nodes))
    if quota is not None:
        quota = quota._replace(day=_quota_share(quota.day, nodes),
                               month=_quota_share(quota.month, nodes))
    return await local.admit(budget, scope, local_share(limit, nodes), window, cap, also, quota,
                             algorithm)


def _quota_share(limit: int, nodes: int) -> int:
    """A quota's local share; a shadow quota's (``gateway.limiter.shadow``) stays in shadow."""
    if limit >= SHADOW_QUOTA:
        return SHADOW_QUOTA + local_share(limit - SHADOW_QUOTA, nodes)
    return limit and local_share(limit, nodes)
