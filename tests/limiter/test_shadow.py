"""Shadow limits on every limiter backend (README "Shadow mode"; gateway.limiter.shadow): a
shadow rule refuses no one and counts its would-be refusals exactly, and an enforced limit
beside it still holds exactly. Requests are asked concurrently, so on Redis each request's real
and shadow decisions go out in the same batches."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.limiter.base import SLIDING_LOG, Decision, QuotaAsk, Window
from gateway.limiter.budget import _quota_share
from gateway.limiter.shadow import SHADOW_QUOTA, Ask, shadow_quota, split, visible, would_refuse
from tests.limiter.conftest import OpenLimiter

ROUTE = Window("tight", 5, 60, SLIDING_LOG)


async def ask(limiter: Any, real: Ask | None, shadow: Ask | None) -> tuple[Decision | None,
                                                                           Decision | None]:
    """One request: both asked in this tick, as the rate_limit stage does."""
    pending = [limiter.admit(*a) if a is not None else None for a in (real, shadow)]
    decided = [await p if p is not None else None for p in pending]
    return decided[0], decided[1]


async def burst(limiter: Any, n: int, **kw: Any) -> list[tuple[Decision | None, Decision | None]]:
    base: dict[str, Any] = {"budget": "key_a", "limit": 1000, "window": 60.0, "cap": None,
                            "also": None, "quota": None, "algorithm": SLIDING_LOG,
                            "shadow_window": None, "key_shadow": False}
    real, shadow = split(**(base | kw))
    return await asyncio.gather(*(ask(limiter, real, shadow) for _ in range(n)))


def tally(results: list[tuple[Decision | None, Decision | None]]) -> tuple[int, int]:
    """(admitted by the real decision, would-be refusals among them)."""
    admitted = [(r, s) for r, s in results if r is None or r.allowed]
    return len(admitted), sum(would_refuse(r, s) is not None for r, s in admitted)


async def test_a_shadow_window_forwards_all_and_counts_exactly(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    results = await burst(limiter, 20, shadow_window=ROUTE)
    assert tally(results) == (20, 15)
    assert {would_refuse(r, s) for r, s in results} == {None, "rate_limited"}
    # the shadow window is the route's own: enforced later, it starts from what it counted
    assert not (await limiter.admit("key_a", "tight", 5, 60, None)).allowed


async def test_an_enforced_limit_beside_a_shadow_one_holds(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    results = await burst(limiter, 20, limit=10, shadow_window=ROUTE)
    assert tally(results) == (10, 5)  # 10 admitted, of which the shadow limit of 5 refuses 5


async def test_a_shadow_quota_never_refuses_and_counts_exactly(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    quota = QuotaAsk("ws_s", shadow_quota(5), 0)
    results = await burst(limiter, 20, quota=quota)
    assert tally(results) == (20, 15)
    assert {would_refuse(r, s) for r, s in results} == {None, "quota_exceeded"}
    assert all(visible(r).quota is None for r, _ in results if r is not None)  # no X-Quota-*
    assert (await limiter.quota_usage("ws_s")).day == 20  # the workspace's own counters


async def test_an_enforced_quota_beside_a_shadow_key(open_limiter: OpenLimiter) -> None:
    """A shadow key's own window refuses no one; the quota it spends still does (on a PASS
    window when the route has no enforced one)."""
    limiter = await open_limiter()
    results = []
    for _ in range(6):  # one after another: which request the quota refuses is defined
        results += await burst(limiter, 1, limit=2, quota=QuotaAsk("ws_q", 4, 0),
                               key_shadow=True)
    assert [r.allowed for r, _ in results if r is not None] == [True] * 4 + [False] * 2
    assert [r.over_quota for r, _ in results if r is not None][4:] == [True, True]
    assert tally(results) == (4, 2)  # the key's own limit of 2 would have refused 2 of the 4


async def test_a_shadow_key_keeps_the_routes_enforced_window(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    route = Window("r", 6, 60, SLIDING_LOG)
    results = await burst(limiter, 10, limit=3, cap=1, also=route, key_shadow=True)
    assert tally(results) == (6, 5)  # the route's 6 hold; the key's cap of 1 admits one
    for _, shadow in results:  # leases the shadow asks took go back
        if shadow is not None and shadow.lease is not None:
            limiter.release("key_a", shadow.lease)


def test_split_leaves_enforcing_requests_alone() -> None:
    real, shadow = split("key_a", 10, 60.0, 2, ROUTE, None, SLIDING_LOG, None, False)
    assert shadow is None and real == Ask("key_a", "", 10, 60.0, 2, ROUTE, None, SLIDING_LOG)
    assert split("key_a", 10, 60.0, None, None, None, SLIDING_LOG, None, True)[0] is None


def test_a_local_share_of_a_shadow_quota_stays_in_shadow() -> None:
    assert _quota_share(shadow_quota(10), 2) == SHADOW_QUOTA + 5
    assert _quota_share(10, 2) == 5 and _quota_share(0, 2) == 0
