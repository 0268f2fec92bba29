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
    assert limiter._buckets == {}


def test_local_share_never_drops_below_one() -> None:
    assert local_share(100, 3) == 33
    assert local_share(2, 3) == 1
    assert local_share(10, 1) == 10


async def test_a_new_window_keeps_the_admissions_already_counted(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    for _ in range(3):
        assert (await limiter.admit("k", "", 3, 60, None)).allowed
    assert not (await limiter.admit("k", "", 3, 61, None)).allowed  # a reload changed it


# ---- the sliding counter: two fixed windows weighted by the elapsed fraction ----------------


async def test_a_counter_weighs_the_previous_window_by_what_is_left_of_the_current(
    clock: Clock,
) -> None:
    limiter = MemoryRateLimiter(clock)
    for _ in range(10):
        assert (await limiter.admit("k", "", 10, 10, None, algorithm="sliding_counter")).allowed
    clock.now = 17.5  # 10 in [0, 10), a quarter of [10, 20) left: an estimate of 2.5
    decisions = [await limiter.admit("k", "", 10, 10, None, algorithm="sliding_counter")
                 for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 7 + [False]
    assert [d.remaining for d in decisions[:7]] == [6, 5, 4, 3, 2, 1, 0]
    assert decisions[0].reset == pytest.approx(2.5)  # the current fixed window ends
    # 7 in this window and 10 before: the estimate falls to 9 when 0.2 of a window is left
    refused = decisions[7]
    assert refused.retry_after == pytest.approx(0.5)
    clock.now = 17.5 + 0.49
    assert not (await limiter.admit("k", "", 10, 10, None, algorithm="sliding_counter")).allowed
    clock.now = 17.5 + 0.51
    assert (await limiter.admit("k", "", 10, 10, None, algorithm="sliding_counter")).allowed


async def test_a_spent_counter_waits_into_the_next_window(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock)
    for _ in range(4):
        await limiter.admit("k", "", 4, 10, None, algorithm="sliding_counter")
    clock.now = 5.0
    refused = await limiter.admit("k", "", 4, 10, None, algorithm="sliding_counter")
    # 4 in this window: into the next until 4 * (left / 10) + 1 <= 4, i.e. 2.5 s into it
    assert refused.retry_after == pytest.approx(5 + 2.5)
    clock.now = 5 + 7.4
    assert not (await limiter.admit("k", "", 4, 10, None, algorithm="sliding_counter")).allowed
    clock.now = 5 + 7.6
    assert (await limiter.admit("k", "", 4, 10, None, algorithm="sliding_counter")).allowed
    clock.now = 40.0  # two windows later nothing is left, and the sweep drops it
    limiter.sweep()
    assert limiter._buckets == {}


async def test_credits_refill_at_the_utc_boundary(clock: Clock) -> None:
    """README "Credits": the first request of a new UTC day (month) finds the balance at the
    refill amount, whatever was left; before the boundary a short balance waits for it."""
    from gateway.keys.model import Credits
    from gateway.limiter.base import DAY

    wall = Clock()
    wall.now = 20_000 * DAY + DAY - 10  # 10 s before a UTC midnight
    limiter = MemoryRateLimiter(clock, wall=wall)
    daily = Credits(2, 1, 20_000, 0, 3, "day")
    assert [(await limiter.admit("k", "", 100, 60, None, credits=daily)).credits
            for _ in range(2)] == [1, 0]
    short = await limiter.admit("k", "", 100, 60, None, credits=daily)
    assert short.no_credits and short.retry_after == pytest.approx(10)
    wall.now += 10  # midnight: the refill sets the balance to 3
    assert (await limiter.credits_left("k", daily)).remaining == 3
    assert (await limiter.admit("k", "", 100, 60, None, credits=daily)).credits == 2
    wall.now += DAY - 1  # the same day: no second refill
    assert (await limiter.admit("k", "", 100, 60, None, credits=daily)).credits == 1
    wall.now += 1  # the next midnight: back to 3, not 1 + 3
    assert (await limiter.admit("k", "", 100, 60, None, credits=daily)).credits == 2
    # a month: 2026-01-31 23:59:59 UTC, then February
    monthly = Credits(0, 1, 2026 * 12, 0, 5, "month")
    wall.now = 20_485 * DAY - 1
    assert (await limiter.admit("m", "", 100, 60, None, credits=monthly)).no_credits
    wall.now += 1
    assert (await limiter.admit("m", "", 100, 60, None, credits=monthly)).credits == 4


def test_a_long_log_drops_what_left_its_window_and_keeps_its_answers() -> None:
    """The sliding log keeps its times in an array from ``start`` on and drops the expired part
    once it is most of the array: the counts, the wait and the reset are those of the times
    still inside the window, before and after the drop."""
    from gateway.limiter.memory import Log

    log = Log(1.0)
    times = [i / 1000 for i in range(10_000)]  # 0.000 .. 9.999
    for moment in times:
        log.add(moment)
    assert log.used(1.5) == 9499  # every time after 0.5
    assert log.start == 501 and len(log.entries) == 10_000  # not yet worth dropping
    assert log.used(9.0) == 1999  # (8.0, 9.999]
    assert log.start == 0 and len(log.entries) == 1999  # the expired 8001 are gone
    assert log.reset(9.0) == pytest.approx(8.001 + 1.0 - 9.0)
    assert log.wait(1999, 9.0) == pytest.approx(8.001 + 1.0 - 9.0)  # the oldest must leave
    assert log.used(11.0) == 0 and log.is_idle(11.0) and log.reset(11.0) == 1.0
