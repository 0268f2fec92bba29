"""What every limiter promises (in-process and Redis alike), in real time."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.limiter.base import QuotaAsk, Window, periods
from tests.limiter.conftest import OpenLimiter


async def test_admits_up_to_the_limit_then_refuses(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    decisions = [await limiter.admit("key_a", "", 3, 10, None) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert not decisions[3].busy
    assert 9 < decisions[3].retry_after <= 10
    assert 9 < decisions[0].reset <= 10


async def test_window_slides(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    assert (await limiter.admit("key_a", "", 2, 0.4, None)).allowed
    assert (await limiter.admit("key_a", "", 2, 0.4, None)).allowed
    refused = await limiter.admit("key_a", "", 2, 0.4, None)
    assert not refused.allowed and 0 < refused.retry_after <= 0.4
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await limiter.admit("key_a", "", 2, 0.4, None)).allowed


async def test_concurrent_burst_admits_exactly_the_limit(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    offers = (limiter.admit("key_a", "", 50, 30, None) for _ in range(200))
    decisions = await asyncio.gather(*offers)
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


async def test_budgets_and_scopes_are_independent_and_peek_does_not_count(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    assert (await limiter.admit("key_a", "", 1, 10, None)).allowed
    assert not (await limiter.admit("key_a", "", 1, 10, None)).allowed
    assert (await limiter.admit("key_a", "route_x", 1, 10, None)).allowed  # a route's budget
    assert (await limiter.admit("key_b", "", 1, 10, None)).allowed  # another key
    peek = await limiter.peek("key_c", "", 2, 10)
    assert peek.allowed and peek.remaining == 2
    peek = await limiter.peek("key_c", "", 2, 10)
    assert peek.remaining == 2
    assert (await limiter.peek("key_a", "", 1, 10)).remaining == 0


async def test_concurrency_slots_are_taken_and_given_back(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    first = await limiter.admit("key_a", "", 100, 10, 2)
    second = await limiter.admit("key_a", "", 100, 10, 2)
    assert first.allowed and second.allowed and first.lease and second.lease
    busy = await limiter.admit("key_a", "", 100, 10, 2)
    assert not busy.allowed and busy.busy and busy.lease is None and busy.retry_after >= 1
    assert (await limiter.peek("key_a", "", 100, 10)).remaining == 98  # busy was not counted
    limiter.release("key_a", first.lease)
    third = await limiter.admit("key_a", "", 100, 10, 2)
    assert third.allowed and third.lease
    assert (await limiter.admit("key_b", "", 100, 10, 2)).allowed  # slots are per budget


async def test_a_rate_refusal_takes_no_slot(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    held = await limiter.admit("key_a", "", 1, 10, 1)
    assert held.allowed
    limiter.release("key_a", held.lease)
    refused = await limiter.admit("key_a", "", 1, 10, 1)
    assert not refused.allowed and not refused.busy
    # the slot is still free: another scope of the same key gets it
    assert (await limiter.admit("key_a", "route_x", 1, 10, 1)).allowed


async def test_concurrent_slot_burst_grants_exactly_the_cap(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    decisions = await asyncio.gather(*(limiter.admit("key_a", "", 1000, 10, 5) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 5
    assert sum(d.busy for d in decisions) == 45
    for decision in decisions:
        if decision.lease:
            limiter.release("key_a", decision.lease)
    again = await asyncio.gather(*(limiter.admit("key_a", "", 1000, 10, 5) for _ in range(10)))
    assert sum(d.allowed for d in again) == 5


@pytest.mark.parametrize("same_tick", [True, False])
async def test_release_then_admit_sees_the_slot(open_limiter: OpenLimiter, same_tick: bool) -> None:
    limiter = await open_limiter()
    held = await limiter.admit("key_a", "", 1000, 10, 1)
    limiter.release("key_a", held.lease)
    if not same_tick:  # else the Redis limiter folds the release into the next admit's script
        await asyncio.sleep(0.01)  # the Redis limiter has sent it on its own by now
    again = await limiter.admit("key_a", "", 1000, 10, 1)
    assert again.allowed, again


async def test_ping(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    await limiter.ping()


async def test_admit_nowait_decides_like_admit_or_defers_to_it(open_limiter: OpenLimiter) -> None:
    """In-process: the same decision, counted alike; shared: None, and nothing counted."""
    limiter = await open_limiter()
    now = limiter.admit_nowait("key_a", "", 2, 10, 1)
    if now is None:  # the Redis limiter decides nothing locally
        assert (await limiter.admit("key_a", "", 2, 10, None)).remaining == 1
        return
    assert now.allowed and now.remaining == 1 and now.lease
    busy = limiter.admit_nowait("key_a", "", 2, 10, 1)
    assert busy is not None and busy.busy and not busy.allowed
    limiter.release("key_a", now.lease)
    assert (await limiter.admit("key_a", "", 2, 10, None)).remaining == 0
    refused = limiter.admit_nowait("key_a", "", 2, 10, None)
    assert refused is not None and not refused.allowed and not refused.busy


# ---- a second window (a route's own rate_limit) and quotas ---------------------------------


async def test_a_request_must_fit_both_windows_and_a_refusal_spends_neither(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    route = Window("route_x", 2, 10)
    first = await limiter.admit("key_a", "", 3, 10, None, route)
    assert first.allowed and (first.limit, first.remaining) == (2, 1)  # the nearer one shown
    second = await limiter.admit("key_a", "", 3, 10, None, route)
    assert second.allowed and (second.limit, second.remaining) == (2, 0)
    by_route = await limiter.admit("key_a", "", 3, 10, None, route)
    assert not by_route.allowed and not by_route.busy and not by_route.over_quota
    assert by_route.limit == 2 and 9 < by_route.retry_after <= 10
    assert (await limiter.peek("key_a", "", 3, 10)).remaining == 1  # the key's: 2 spent
    assert (await limiter.admit("key_a", "", 3, 10, None)).remaining == 0  # another route
    other = Window("route_y", 5, 10)
    by_key = await limiter.admit("key_a", "", 3, 10, None, other)
    assert not by_key.allowed and by_key.limit == 3 and 9 < by_key.retry_after <= 10
    assert (await limiter.peek("key_a", "route_y", 5, 10)).remaining == 5  # not spent


async def test_a_quota_counts_a_workspaces_admitted_requests_over_its_keys(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    ask = QuotaAsk("ws_q", 2, 0)
    _, _, to_day_end, to_month_end = periods(time.time())
    first = await limiter.admit("key_a", "", 10, 60, None, quota=ask)
    assert first.allowed and first.quota is not None
    assert (first.quota.limit, first.quota.remaining) == (2, 1)
    assert abs(first.quota.reset - to_day_end) < 2
    assert (await limiter.admit("key_b", "", 10, 60, None, quota=ask)).allowed  # same workspace
    over = await limiter.admit("key_a", "", 10, 60, None, quota=ask)
    assert not over.allowed and over.over_quota and not over.busy
    assert abs(over.retry_after - to_day_end) < 2
    assert over.quota is not None and over.quota.remaining == 0
    assert over.remaining == 9  # the refused request is not in the window
    assert (await limiter.peek("key_a", "", 10, 60)).remaining == 9
    usage = await limiter.quota_usage("ws_q")
    assert (usage.day, usage.month) == (2, 2) and abs(usage.day_reset - to_day_end) < 2
    assert (await limiter.quota_usage("ws_other")).day == 0
    # both periods: the one nearer to running out shows; a spent month refuses to its end
    both = QuotaAsk("ws_m", 5, 2)
    shown = await limiter.admit("key_c", "", 10, 60, None, quota=both)
    assert shown.quota is not None and (shown.quota.limit, shown.quota.remaining) == (2, 1)
    assert abs(shown.quota.reset - to_month_end) < 2
    await limiter.admit("key_c", "", 10, 60, None, quota=both)
    month_over = await limiter.admit("key_c", "", 10, 60, None, quota=both)
    assert month_over.over_quota and abs(month_over.retry_after - to_month_end) < 2


async def test_no_refusal_spends_quota_and_a_quota_refusal_spends_no_window_nor_slot(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    ask = QuotaAsk("ws_r", 100, 1000)
    assert (await limiter.admit("key_a", "", 1, 60, None, quota=ask)).allowed
    rate = await limiter.admit("key_a", "", 1, 60, None, quota=ask)
    assert not rate.allowed and not rate.over_quota
    held = await limiter.admit("key_b", "", 10, 60, 1, quota=ask)
    assert held.allowed and held.lease
    busy = await limiter.admit("key_b", "", 10, 60, 1, quota=ask)
    assert busy.busy
    route = Window("route_x", 1, 60)
    assert (await limiter.admit("key_c", "", 10, 60, None, route, ask)).allowed
    assert not (await limiter.admit("key_c", "", 10, 60, None, route, ask)).allowed
    usage = await limiter.quota_usage("ws_r")
    assert (usage.day, usage.month) == (3, 3)  # the three admitted only

    spent = QuotaAsk("ws_s", 1, 0)
    assert (await limiter.admit("key_d", "", 5, 60, None, quota=spent)).allowed
    refused = await limiter.admit("key_d", "", 5, 60, 1, Window("route_y", 5, 60), spent)
    assert refused.over_quota and refused.lease is None
    assert (await limiter.peek("key_d", "", 5, 60)).remaining == 4
    assert (await limiter.peek("key_d", "route_y", 5, 60)).remaining == 5
    assert (await limiter.admit("key_d", "", 5, 60, 1)).allowed  # the slot is free
    assert (await limiter.quota_usage("ws_s")).day == 1


# ---- the sliding counter (README "Algorithms") ----------------------------------------------

COUNTER = "sliding_counter"


async def test_a_counter_admits_up_to_the_limit_then_refuses(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter()
    decisions = [await limiter.admit("key_a", "", 3, 3600, None, algorithm=COUNTER)
                 for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    # a fresh counter: the refusal waits past this fixed window's end, until its 3 requests,
    # weighed as the previous window's, leave room for one (a third of the next window)
    assert 1200 < decisions[3].retry_after <= 3600 + 1200
    assert decisions[3].reset == decisions[3].retry_after
    assert (await limiter.peek("key_a", "", 3, 3600, COUNTER)).remaining == 0
    assert (await limiter.peek("key_a", "", 3, 3600)).remaining == 3  # the log is another budget


async def test_a_concurrent_burst_on_a_counter_admits_exactly_the_limit(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter()
    offers = (limiter.admit("key_a", "", 50, 3600, None, algorithm=COUNTER) for _ in range(200))
    decisions = await asyncio.gather(*offers)
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


@pytest.mark.parametrize("kinds", [(COUNTER, "sliding_log"), ("sliding_log", COUNTER),
                                   (COUNTER, COUNTER)])
async def test_windows_of_either_kind_are_decided_together(
    open_limiter: OpenLimiter, kinds: tuple[str, str]
) -> None:
    limiter = await open_limiter()
    key_kind, route_kind = kinds
    route = Window("route_x", 2, 3600, route_kind)
    for remaining in (1, 0):
        decision = await limiter.admit("key_a", "", 3, 3600, 5, route, algorithm=key_kind)
        assert decision.allowed and (decision.limit, decision.remaining) == (2, remaining)
        limiter.release("key_a", decision.lease)
    by_route = await limiter.admit("key_a", "", 3, 3600, 5, route, algorithm=key_kind)
    assert not by_route.allowed and by_route.limit == 2 and by_route.lease is None
    assert (await limiter.peek("key_a", "", 3, 3600, key_kind)).remaining == 1  # not spent
    # a quota refusal spends neither window
    spent = QuotaAsk("ws_k", 1, 0)
    assert (await limiter.admit("key_b", "", 5, 3600, None, quota=spent)).allowed
    refused = await limiter.admit("key_c", "", 5, 3600, 1, route, spent, key_kind)
    assert refused.over_quota
    assert (await limiter.peek("key_c", "", 5, 3600, key_kind)).remaining == 5
    assert (await limiter.peek("key_c", "route_x", 2, 3600, route_kind)).remaining == 2
