"""Credits (README "Credits") on every limiter backend: in-process, one Redis and a Redis
Cluster, where the credit hash sits in a slot of its own and a request refused by one counter
never stays counted in another. The refill on a controllable clock is in test_memory.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.keys.model import Credits
from gateway.limiter.base import QuotaAsk, Window, periods
from tests.limiter.conftest import CONTRACT_LIMITERS, OpenLimiter

pytestmark = pytest.mark.parametrize("open_limiter", CONTRACT_LIMITERS, indirect=True)


def credits(value: int, version: int = 1, added: int = 0, **refill: object) -> Credits:
    return Credits(value, version, 0, added, **refill)  # type: ignore[arg-type]


async def test_spends_down_to_zero_then_refuses_without_retry_after(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    ask = credits(3)
    decisions = [await limiter.admit("key_a", "", 100, 60, None, credits=ask) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.credits for d in decisions] == [2, 1, 0, 0]
    short = decisions[3]
    assert short.no_credits and not short.over_quota and not short.busy
    assert short.retry_after == 0.0  # no refill: nothing to wait for
    assert short.remaining == 97  # the refused request is not in the window
    assert (await limiter.peek("key_a", "", 100, 60)).remaining == 97
    assert (await limiter.credits_left("key_a", ask)).remaining == 0
    other = await limiter.admit("key_b", "", 100, 60, None, credits=ask)
    assert other.allowed and other.credits == 2  # budgets are independent


async def test_a_cost_is_spent_whole_or_not_at_all(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    ask = credits(7)
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=ask, cost=5)).credits == 2
    short = await limiter.admit("key_a", "", 100, 60, None, credits=ask, cost=5)
    assert short.no_credits and short.credits == 2
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=ask, cost=2)).credits == 0
    assert (await limiter.admit("key_b", "", 100, 60, None)).credits is None  # none asked


async def test_a_concurrent_burst_spends_exactly_the_balance(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    ask = credits(25)
    decisions = await asyncio.gather(
        *(limiter.admit("key_a", "", 1000, 60, None, credits=ask) for _ in range(60))
    )
    assert sum(d.allowed for d in decisions) == 25
    assert sorted(d.credits for d in decisions if d.allowed) == list(range(25))
    assert all(d.no_credits for d in decisions if not d.allowed)


async def test_adds_apply_once_and_a_newer_set_starts_again(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    first = credits(2)
    for _ in range(2):
        assert (await limiter.admit("key_a", "", 100, 60, None, credits=first)).allowed
    # an add of 5 (seen first by whichever node): 0 + 5, applied once however often it is seen
    added = credits(2, added=5)
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=added)).credits == 4
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=added)).credits == 3
    # a node that has not heard of the add yet spends from the same live balance
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=first)).credits == 2
    assert (await limiter.credits_left("key_a", added)).remaining == 2
    # a set replaces the balance, whatever was spent or added before it
    reset = credits(10, version=2)
    assert (await limiter.credits_left("key_a", reset)).remaining == 10
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=reset)).credits == 9
    # the node still holding the older set spends from the new balance too
    assert (await limiter.admit("key_a", "", 100, 60, None, credits=added)).credits == 8


async def test_a_balance_set_in_an_earlier_period_is_refilled(open_limiter: OpenLimiter) -> None:
    """The refill, decided by the backend's own clock (Redis's TIME and its Lua calendar): a
    balance set yesterday (last month) starts today (this month) at the refill amount."""
    limiter = await open_limiter()
    day, month, to_day_end, to_month_end = periods(time.time())
    daily = Credits(0, 1, day - 1, 0, 4, "day")
    refilled = await limiter.admit("key_d", "", 100, 60, None, credits=daily)
    assert refilled.allowed and refilled.credits == 3
    monthly = Credits(0, 1, month - 1, 0, 2, "month")
    assert (await limiter.admit("key_m", "", 100, 60, None, credits=monthly)).credits == 1
    assert (await limiter.admit("key_m", "", 100, 60, None, credits=monthly)).credits == 0
    short = await limiter.admit("key_m", "", 100, 60, None, credits=monthly)
    assert short.no_credits and abs(short.retry_after - to_month_end) < 2  # until the refill
    left = await limiter.credits_left("key_d", daily)
    assert left.remaining == 3 and abs(left.refill_in - to_day_end) < 2
    # set this period: no refill before the boundary
    today = Credits(1, 1, day, 0, 50, "day")
    assert (await limiter.admit("key_t", "", 100, 60, None, credits=today)).credits == 0
    assert (await limiter.admit("key_t", "", 100, 60, None, credits=today)).no_credits


async def test_no_other_refusal_spends_credits(open_limiter: OpenLimiter) -> None:
    """Refused by the rate limit, a route's window, the concurrency cap or a quota: the
    credits are untouched (on a cluster: given back by the compensation)."""
    limiter = await open_limiter()
    ask = credits(100)
    assert (await limiter.admit("key_a", "", 1, 60, None, credits=ask)).credits == 99
    rate = await limiter.admit("key_a", "", 1, 60, None, credits=ask)
    assert not rate.allowed and not rate.no_credits and rate.credits == 99
    route = Window("route_x", 1, 60)
    assert (await limiter.admit("key_b", "", 10, 60, None, route, credits=ask)).allowed
    assert not (await limiter.admit("key_b", "", 10, 60, None, route, credits=ask)).allowed
    held = await limiter.admit("key_c", "", 10, 60, 1, credits=ask)
    busy = await limiter.admit("key_c", "", 10, 60, 1, credits=ask)
    assert held.lease and busy.busy and busy.credits == 99
    spent = QuotaAsk("ws_c", 1, 0)
    assert (await limiter.admit("key_d", "", 10, 60, None, quota=spent, credits=ask)).allowed
    over = await limiter.admit("key_d", "", 10, 60, None, quota=spent, credits=ask)
    assert over.over_quota and over.credits == 99
    await asyncio.sleep(0.05)  # compensations are on their way before the answer: let them land
    for budget in ("key_a", "key_b", "key_c", "key_d"):
        assert (await limiter.credits_left(budget, ask)).remaining == 99, budget


async def test_a_credit_refusal_counts_in_no_window_slot_or_quota(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    empty = credits(0)
    ask = QuotaAsk("ws_e", 10, 0)
    route = Window("route_y", 5, 60)
    short = await limiter.admit("key_e", "", 5, 60, 1, route, ask, credits=empty)
    assert short.no_credits and short.lease is None and not short.allowed
    await asyncio.sleep(0.05)
    assert (await limiter.peek("key_e", "", 5, 60)).remaining == 5
    assert (await limiter.peek("key_e", "route_y", 5, 60)).remaining == 5
    assert (await limiter.quota_usage("ws_e")).day == 0
    assert (await limiter.admit("key_e", "", 5, 60, 1)).allowed  # the slot is free
