"""The Redis limiter's own promises: key hygiene, batching, scripts, leases, outages."""

from __future__ import annotations

import asyncio
import calendar
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.crc import key_slot

from gateway.config import LimiterConfig
from gateway.errors import LimiterUnavailable
from gateway.limiter.base import counter_wait, periods
from gateway.limiter.redis import CALENDAR, RedisRateLimiter
from tests.limiter.conftest import REDIS_URL, PrivateRedis, require_redis


@pytest.fixture
async def limiter(redis_prefix: str) -> RedisRateLimiter:
    require_redis()
    limiter = RedisRateLimiter(REDIS_URL, LimiterConfig(prefix=redis_prefix))
    await limiter.open()
    yield limiter  # type: ignore[misc]
    await limiter.close()


async def test_keys_carry_the_prefix_a_hash_tag_and_an_expiry(
    limiter: RedisRateLimiter, redis_prefix: str, redis_client: redis.Redis
) -> None:
    await limiter.admit("key_a", "", 10, 30, 2)
    await limiter.admit("key_a", "route_x", 10, 5, None)
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}*"))
    assert keys == [
        f"{redis_prefix}{{key_a}}:c",
        f"{redis_prefix}{{key_a}}:r",
        f"{redis_prefix}{{key_a}}:r:route_x",
    ]
    assert 29_000 < redis_client.pttl(f"{redis_prefix}{{key_a}}:r") <= 30_000
    assert 4_000 < redis_client.pttl(f"{redis_prefix}{{key_a}}:r:route_x") <= 5_000
    assert 29_000 < redis_client.pttl(f"{redis_prefix}{{key_a}}:c") <= 30_000
    # one hash slot per key: its log and leases can live on one Redis Cluster shard
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_memory_per_key_is_bounded_by_the_limit(
    limiter: RedisRateLimiter, redis_prefix: str, redis_client: redis.Redis
) -> None:
    key = f"{redis_prefix}{{key_a}}:r"
    for _ in range(100):
        await limiter.admit("key_a", "", 100, 60, None)
    full = redis_client.memory_usage(key)
    await asyncio.gather(*(limiter.admit("key_a", "", 100, 60, None) for _ in range(500)))
    assert redis_client.memory_usage(key) == full  # refused requests add nothing
    assert redis_client.zcard(key) == 100
    assert full < 100 * 64  # listpack encoding: well under 64 bytes per admitted request


async def test_decisions_in_one_tick_share_one_round_trip(limiter: RedisRateLimiter) -> None:
    before = limiter.batches
    await asyncio.gather(*(limiter.admit(f"key_{i}", "", 10, 10, 1) for i in range(200)))
    assert limiter.batches - before == 1
    assert limiter.commands >= 200


async def test_credits_ride_in_the_same_round_trip_and_keep_without_refill(
    limiter: RedisRateLimiter, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """README "Credits": the credit script goes in the batch of the rate and quota scripts (one
    round trip on one Redis); its hash is the balance, so it never expires without a refill,
    and expires a day after its period ends with one."""
    from gateway.keys.model import Credits
    from gateway.limiter.base import QuotaAsk

    before = limiter.batches, limiter.commands
    decision = await limiter.admit("key_a", "", 10, 60, None, quota=QuotaAsk("ws", 5, 0),
                                   credits=Credits(5, 1, 0))
    assert decision.allowed and decision.credits == 4
    assert (limiter.batches - before[0], limiter.commands - before[1]) == (1, 3)
    credit_key = f"{redis_prefix}{{cr:key_a}}"
    assert redis_client.pttl(credit_key) == -1  # no expiry: it is the balance
    day, _, to_day_end, _ = periods(time.time())
    await limiter.admit("key_d", "", 10, 60, None, credits=Credits(5, 1, day, 0, 5, "day"))
    ttl = redis_client.pttl(f"{redis_prefix}{{cr:key_d}}") / 1000
    assert abs(ttl - (to_day_end + 86_400)) < 5


async def test_a_flushed_script_is_reloaded(
    limiter: RedisRateLimiter, redis_client: redis.Redis
) -> None:
    assert (await limiter.admit("key_a", "", 10, 10, None)).allowed
    redis_client.script_flush()
    assert (await limiter.admit("key_a", "", 10, 10, None)).remaining == 8


async def test_a_batch_hitting_noscript_is_sent_once_more_then_fails(
    limiter: RedisRateLimiter, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decision of the batch is retried after the reload; one that meets NOSCRIPT again
    fails as LimiterUnavailable instead of going round for ever."""
    redis_client.script_flush()
    many = await asyncio.gather(*(limiter.admit("key_a", "", 10, 10, None) for _ in range(5)))
    assert sorted(d.remaining for d in many) == [5, 6, 7, 8, 9]

    async def reload_that_does_nothing() -> None:
        return None

    monkeypatch.setattr(limiter, "_load_script", reload_that_does_nothing)
    redis_client.script_flush()
    with pytest.raises(LimiterUnavailable, match="NOSCRIPT"):
        await limiter.admit("key_a", "", 10, 10, None)
    monkeypatch.undo()
    assert (await limiter.admit("key_a", "", 10, 10, None)).remaining == 4  # nothing counted
    assert not limiter._second_tries  # nothing kept once answered


async def test_a_dead_nodes_lease_expires_and_a_live_one_is_renewed(redis_prefix: str) -> None:
    require_redis()
    options = LimiterConfig(prefix=redis_prefix, lease_ttl=0.3)
    dead = RedisRateLimiter(REDIS_URL, options)
    live = RedisRateLimiter(REDIS_URL, options)
    other = RedisRateLimiter(REDIS_URL, options)
    for limiter in (dead, live, other):
        await limiter.open()
    try:
        assert (await dead.admit("key_dead", "", 100, 10, 1)).lease
        assert (await live.admit("key_live", "", 100, 10, 1)).lease
        await dead.close()  # the node dies holding its lease
        assert (await other.admit("key_dead", "", 100, 10, 1)).busy
        await asyncio.sleep(0.8)  # well past the TTL; the live node renewed twice meanwhile
        assert (await other.admit("key_dead", "", 100, 10, 1)).allowed
        assert (await other.admit("key_live", "", 100, 10, 1)).busy
    finally:
        await live.close()
        await other.close()


async def test_a_dead_redis_fails_fast_and_recovery_is_quick(
    private_redis: PrivateRedis,
) -> None:
    limiter = RedisRateLimiter(private_redis.url, LimiterConfig(timeout=0.25), retry_interval=0.1)
    await limiter.open()
    try:
        assert (await limiter.admit("key_a", "", 100, 10, 1)).allowed
        private_redis.kill()
        for _ in range(20):
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable):
                await limiter.admit("key_a", "", 100, 10, 1)
            assert time.monotonic() - started < 0.3  # never past the Redis timeout
        with pytest.raises(LimiterUnavailable):
            await limiter.ping()
        private_redis.start()
        returned = time.monotonic()
        while True:
            try:
                decision = await limiter.admit("key_a", "", 100, 10, 1)
                break
            except LimiterUnavailable:
                assert time.monotonic() - returned < 2.0
                await asyncio.sleep(0.02)
        assert decision.allowed and decision.remaining == 99  # a fresh Redis: a fresh window
        await limiter.ping()
    finally:
        await limiter.close()


async def test_a_hung_redis_times_out(private_redis: PrivateRedis) -> None:
    limiter = RedisRateLimiter(private_redis.url, LimiterConfig(timeout=0.2), retry_interval=0.1)
    await limiter.open()
    try:
        private_redis.pause()
        started = time.monotonic()
        results = await asyncio.gather(
            *(limiter.admit("key_a", "", 100, 10, None) for _ in range(10)),
            return_exceptions=True,
        )
        assert all(isinstance(r, LimiterUnavailable) for r in results)
        assert time.monotonic() - started < 0.3
        private_redis.resume()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                assert (await limiter.admit("key_a", "", 100, 10, None)).allowed
                break
            except LimiterUnavailable:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("limits were not enforced again within 2 s of Redis returning")
    finally:
        await limiter.close()


async def test_an_unreachable_redis_at_start_is_not_fatal(private_redis: PrivateRedis) -> None:
    private_redis.kill()
    limiter = RedisRateLimiter(private_redis.url, LimiterConfig(timeout=0.1), retry_interval=0.05)
    started = time.monotonic()
    await limiter.open()
    assert time.monotonic() - started < 0.5
    try:
        with pytest.raises(LimiterUnavailable):
            await limiter.admit("key_a", "", 1, 1, None)
        private_redis.start()
        await asyncio.sleep(0.5)
        assert (await limiter.admit("key_a", "", 1, 1, None)).allowed
    finally:
        await limiter.close()


async def test_a_slot_given_back_rides_with_the_next_admit(limiter: RedisRateLimiter) -> None:
    """One client, one request after another: one round trip and one command per request."""
    first = await limiter.admit("key_a", "", 100, 10, 1)
    batches, commands = limiter.batches, limiter.commands
    for _ in range(20):
        limiter.release("key_a", first.lease)
        first = await limiter.admit("key_a", "", 100, 10, 1)
        assert first.allowed
    assert (limiter.batches - batches, limiter.commands - commands) == (20, 20)


async def test_a_slot_given_back_alone_still_goes_out(limiter: RedisRateLimiter) -> None:
    held = await limiter.admit("key_a", "", 100, 10, 1)
    limiter.release("key_a", held.lease)
    await asyncio.sleep(0.05)  # nobody else asks: the release goes on its own
    other = RedisRateLimiter(REDIS_URL, LimiterConfig(prefix=limiter._prefix.decode()))
    await other.open()
    try:
        assert (await other.admit("key_a", "", 100, 10, 1)).allowed
    finally:
        await other.close()


async def test_closing_gives_pending_slots_back(redis_prefix: str) -> None:
    require_redis()
    first = RedisRateLimiter(REDIS_URL, LimiterConfig(prefix=redis_prefix))
    second = RedisRateLimiter(REDIS_URL, LimiterConfig(prefix=redis_prefix))
    await first.open()
    await second.open()
    try:
        held = await first.admit("key_a", "", 100, 10, 1)
        first.release("key_a", held.lease)
        await first.close()  # before the release timer fired
        assert (await second.admit("key_a", "", 100, 10, 1)).allowed
    finally:
        await second.close()


async def test_a_slot_carried_by_a_script_redis_lost_is_given_back(
    limiter: RedisRateLimiter, redis_client: redis.Redis
) -> None:
    held = await limiter.admit("key_a", "", 100, 10, 1)
    redis_client.script_flush()
    limiter.release("key_a", held.lease)
    # the release rides in this admit's script, which fails with NOSCRIPT and is retried
    again = await limiter.admit("key_a", "", 100, 10, 1)
    for _ in range(50):
        if again.allowed:
            break
        await asyncio.sleep(0.01)  # the release went again on its own
        again = await limiter.admit("key_a", "", 100, 10, 1)
    assert again.allowed, again


async def test_a_cancelled_request_neither_fails_its_batch_nor_keeps_its_slot(
    limiter: RedisRateLimiter,
) -> None:
    doomed = asyncio.ensure_future(limiter.admit("key_a", "", 100, 10, 1))
    sibling = asyncio.ensure_future(limiter.admit("key_b", "", 100, 10, 1))
    await asyncio.sleep(0)  # both are in the batch, which is on its way
    doomed.cancel()
    assert (await sibling).allowed
    with pytest.raises(asyncio.CancelledError):
        await doomed
    for _ in range(50):  # the slot the cancelled request got is given back
        decision = await limiter.admit("key_a", "", 100, 10, 1)
        if decision.allowed:
            break
        await asyncio.sleep(0.01)
    assert decision.allowed


def calendar_moments() -> list[int]:
    """Epoch ms at the edges of days, months and years: each month's first and last ms of
    1970, 1999-2001 (2000: leap by 400), 2023-2024 (2024: leap) and 2100 (not leap), and the
    last ms of every day around each February's end."""
    moments: list[int] = [0, int(time.time() * 1000)]
    for year in (1970, 1999, 2000, 2001, 2023, 2024, 2100):
        for month in range(1, 13):
            start = datetime(year, month, 1, tzinfo=UTC)
            moments += [_ms(start), _ms(start) - 1, _ms(start) + 86_400_000 - 1]
        for day in range(26, 30):  # Feb 26 .. Feb 28/29 .. Mar 1: each day's last ms
            moments.append(_ms(datetime(year, 2, 1, tzinfo=UTC)) + day * 86_400_000 - 1)
    return sorted(m for m in moments if m >= 0)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


PERIODS = CALENDAR + b"""
local out = {}
for i = 1, #ARGV do
  local day, month, day_end, month_end = periods(tonumber(ARGV[i]))
  for _, v in ipairs({day, month, day_end, month_end}) do out[#out + 1] = v end
end
return out
"""


def test_the_quota_calendar_in_lua_agrees_with_python(redis_client: redis.Redis) -> None:
    """The quota script's ``periods`` (CALENDAR), run on real Redis, against ``base.periods``
    (and ``calendar``): the day and month numbers and where each ends, to the ms."""
    moments = calendar_moments()
    flat = redis_client.eval(PERIODS, 0, *moments)
    assert len(flat) == 4 * len(moments)
    for i, now in enumerate(moments):
        day, month, day_end, month_end = flat[4 * i: 4 * i + 4]
        p_day, p_month, p_day_reset, p_month_reset = periods(now / 1000)
        moment = datetime.fromtimestamp(now / 1000, UTC)
        assert (day, month) == (p_day, p_month) == (
            now // 86_400_000, moment.year * 12 + moment.month - 1
        ), moment
        assert day_end - now == round(p_day_reset * 1000), moment
        assert month_end - now == round(p_month_reset * 1000), moment
        last = calendar.monthrange(moment.year, moment.month)[1]
        assert datetime.fromtimestamp(month_end / 1000, UTC) == (
            datetime(moment.year, moment.month, last, tzinfo=UTC) + timedelta(days=1)
        ), moment


async def test_a_counter_is_one_small_hash_whatever_the_limit(
    limiter: RedisRateLimiter, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """Constant memory per key (README "Algorithms"), in the budget's slot."""
    key = f"{redis_prefix}{{key_a}}:n"
    await limiter.admit("key_a", "", 10_000, 30, None, algorithm="sliding_counter")
    small = redis_client.memory_usage(key)
    await asyncio.gather(*(limiter.admit("key_a", "", 10_000, 30, None,
                                         algorithm="sliding_counter") for _ in range(500)))
    assert redis_client.memory_usage(key) == small < 128
    assert int(redis_client.hget(key, "c")) == 501
    assert 59_000 < redis_client.pttl(key) <= 60_000  # two windows: the previous one counts
    assert key_slot(key.encode()) == key_slot(f"{redis_prefix}{{key_a}}:c".encode())


async def test_the_scripts_counter_arithmetic_is_base_counter_wait(
    limiter: RedisRateLimiter, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """The previous fixed window's count set by hand: Redis's refusal waits as long as the
    Python formula says (they are written twice: Lua and gateway.limiter.base)."""
    window = 100_000  # seconds: the previous count, one per second, weighs ``left`` requests
    key = f"{redis_prefix}{{key_a}}:n"
    redis_client.hset(key, mapping={"n": int(time.time() // window) - 1, "c": window, "p": 0})
    refused = await limiter.admit("key_a", "", 10, window, None, algorithm="sliding_counter")
    left = window - time.time() % window
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(counter_wait(window, 0, left, window, 10), abs=0.1)
    assert refused.retry_after == pytest.approx(left - 9, abs=0.1)
