"""What every limiter promises (in-process and Redis alike), in real time."""

from __future__ import annotations

import asyncio

import pytest

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
