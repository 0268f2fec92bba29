"""The in-process limiter on a fake clock (its window logic, exactly); the behaviour it shares
with the Redis limiter is in test_contract.py."""

import pytest

from gateway.limiter.base import local_share
from gateway.limiter.memory import MemoryRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_admits_up_to_the_limit_then_refuses(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    decisions = [await limiter.admit("k", "", 3, 10, None) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after == pytest.approx(10)


async def test_window_slides(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    await limiter.admit("k", "", 2, 10, None)
    clock.now = 6
    await limiter.admit("k", "", 2, 10, None)
    clock.now = 9.9
    refused = await limiter.admit("k", "", 2, 10, None)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.1)
    clock.now = 10.0  # the first hit left the window
    assert (await limiter.admit("k", "", 2, 10, None)).allowed
    assert not (await limiter.admit("k", "", 2, 10, None)).allowed


async def test_never_more_than_limit_in_any_window(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    admitted: list[float] = []
    for step in range(3000):
        clock.now = step * 0.013
        if (await limiter.admit("k", "", 50, 5, None)).allowed:
            admitted.append(clock.now)
    for i, t in enumerate(admitted):
        in_window = [a for a in admitted[i:] if a < t + 5]
        assert len(in_window) <= 50
    # and nobody under the limit was refused: 3000 offers over 39 s at 50/5 s ~ 390
    assert len(admitted) >= 380


async def test_sweep_drops_idle_buckets(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    await limiter.admit("k", "", 5, 10, None)
    clock.now = 11
    limiter.sweep()
    assert limiter._logs == {}


def test_local_share_never_drops_below_one() -> None:
    assert local_share(100, 3) == 33
    assert local_share(2, 3) == 1
    assert local_share(10, 1) == 10


async def test_a_new_window_keeps_the_admissions_already_counted(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    for _ in range(3):
        assert (await limiter.admit("k", "", 3, 60, None)).allowed
    assert not (await limiter.admit("k", "", 3, 61, None)).allowed  # a reload changed it
