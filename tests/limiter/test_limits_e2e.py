"""Rate limits and concurrency through a real gateway, on the in-process limiter and on Redis
alike; then what each ``on_limiter_error`` policy does while a Redis of the test's own is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Gateway,
    GatewayFactory,
    Tagged,
    bearer,
    until_slot_returns,
    wait_for,
)
from tests.limiter.conftest import LIMITERS, REDIS_URL, PrivateRedis, require_redis
from tests.test_errors_e2e import problem

MakeLimited = Callable[..., Awaitable[Gateway]]


@pytest.fixture(params=LIMITERS)
def make_limited(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, redis_prefix: str
) -> MakeLimited:
    """A gateway factory on the parametrized limiter (Redis: a prefix of this test's own)."""

    async def factory(routes: list[dict[str, Any]] | None = None, **top: Any) -> Gateway:
        if request.param == "redis":
            require_redis()
            top = {"redis": REDIS_URL, "limiter": {"prefix": redis_prefix}, **top}
        return await make_gateway(routes, **top)

    return factory


@pytest.fixture
async def slow() -> AsyncIterator[Tagged]:
    """Holds requests whose path ends in /hold (or /hold-stream) until ``released`` is set."""
    upstream = await Tagged("slow").start()
    yield upstream
    await upstream.stop()


def slow_routes(url: str, **route: Any) -> list[dict[str, Any]]:
    return [{"name": "slow", "path": "/slow/", "upstream": url, **route}]


async def test_rate_limited(make_limited: MakeLimited, http: aiohttp.ClientSession) -> None:
    gateway = await make_limited(defaults={"rate_limit": {"requests": 3, "window": 60}})
    key = await gateway.key()
    remaining = []
    for _ in range(3):
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
            assert response.status == 200
            remaining.append(response.headers["RateLimit-Remaining"])
            assert response.headers["X-RateLimit-Limit"] == "3"
    assert remaining == ["2", "1", "0"]
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
        await problem(response, 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.headers["RateLimit-Remaining"] == "0"
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
    await gateway.services.usage.flush()
    usage = await gateway.keys.usage(gateway.created[-1].key_id)
    assert (usage.requests, usage.rate_limited) == (3, 1)
    assert usage.last_used_at is not None


async def test_the_configured_algorithms_decide(
    make_limited: MakeLimited, http: aiohttp.ClientSession, slow: Tagged
) -> None:
    """defaults.algorithm counts the key-wide budget, a route's algorithm its own rate_limit
    (README "Algorithms"): the counter's budget is not the log's."""
    routes = slow_routes(slow.url, rate_limit={"requests": 2, "window": 3600},
                         algorithm="sliding_log")
    gateway = await make_limited(routes, defaults={
        "rate_limit": {"requests": 3, "window": 3600}, "algorithm": "sliding_counter"})
    key = await gateway.key()
    statuses = []
    for _ in range(3):
        async with http.get(f"{gateway.url}/slow/x", headers=bearer(key)) as response:
            statuses.append((response.status, response.headers["RateLimit-Remaining"]))
    assert statuses == [(200, "1"), (200, "0"), (429, "0")]
    limiter = gateway.services.limiter
    budget = gateway.created[-1].key_id
    assert (await limiter.peek(budget, "", 3, 3600, "sliding_counter")).remaining == 1
    assert (await limiter.peek(budget, "", 3, 3600, "sliding_log")).remaining == 3
    assert (await limiter.peek(budget, "slow", 2, 3600, "sliding_log")).remaining == 0


async def test_concurrency_slot_comes_back_after_success_disconnect_and_upstream_error(
    make_limited: MakeLimited, http: aiohttp.ClientSession, slow: Tagged
) -> None:
    gateway = await make_limited(routes=slow_routes(slow.url, timeout=30))
    key = await gateway.key(concurrency_limit=1)
    url = f"{gateway.url}/slow"

    # 1. a request in flight holds the slot; it comes back when the response is sent
    first = asyncio.ensure_future(http.get(f"{url}/a/hold", headers=bearer(key)))
    await wait_for(lambda: slow.arrived == 1)
    async with http.get(f"{url}/b", headers=bearer(key)) as response:
        await problem(response, 429, "concurrency_limited")
    slow.released.set()
    async with await first as response:
        assert response.status == 200
    async with http.get(f"{url}/c", headers=bearer(key)) as response:
        assert response.status == 200
    slow.released.clear()

    # 2. the client goes away in the middle of a streamed response
    stream = await http.get(f"{url}/hold-stream", headers=bearer(key))
    assert await stream.content.readline() == b"first\n"
    async with http.get(f"{url}/d", headers=bearer(key)) as response:
        await problem(response, 429, "concurrency_limited")
    stream.close()  # drops the connection
    slow.released.set()
    await until_slot_returns(http, f"{url}/e", key, within=5)

    # 3. the upstream fails: 502, and the slot is free again
    gateway2 = await make_limited(routes=slow_routes("http://127.0.0.1:1"))
    key2 = await gateway2.key(concurrency_limit=1)
    for _ in range(3):
        async with http.get(f"{gateway2.url}/slow/x", headers=bearer(key2)) as response:
            await problem(response, 502, "upstream_unavailable")


async def test_a_rotated_key_shares_its_predecessors_budget(
    make_limited: MakeLimited, http: aiohttp.ClientSession, slow: Tagged
) -> None:
    gateway = await make_limited(
        routes=slow_routes(slow.url), defaults={"rate_limit": {"requests": 5, "window": 60}}
    )
    old = await gateway.key(concurrency_limit=1)
    old_id = gateway.created[-1].key_id
    slow.released.set()
    for _ in range(2):
        async with http.get(f"{gateway.url}/slow/x", headers=bearer(old)) as response:
            assert response.status == 200
    _old, _new, new = await gateway.keys.rotate_key(old_id, 300, "test")
    async with http.get(f"{gateway.url}/slow/x", headers=bearer(new)) as response:
        assert response.headers["RateLimit-Remaining"] == "2"  # 5 - 2 (old) - 1
    # concurrency: the old key holds the one slot, so the new key is refused
    slow.released.clear()
    held = asyncio.ensure_future(http.get(f"{gateway.url}/slow/y/hold", headers=bearer(old)))
    await wait_for(lambda: slow.arrived == 4)
    async with http.get(f"{gateway.url}/slow/z", headers=bearer(new)) as response:
        await problem(response, 429, "concurrency_limited")
    slow.released.set()
    async with await held as response:
        assert response.headers["RateLimit-Remaining"] == "1"  # the refusal was not counted
    async with http.get(f"{gateway.url}/slow/x", headers=bearer(new)) as response:
        assert response.headers["RateLimit-Remaining"] == "0"
    for key in (old, new):
        async with http.get(f"{gateway.url}/slow/x", headers=bearer(key)) as response:
            await problem(response, 429, "rate_limited")


# ---- Redis down: on_limiter_error ------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def scrape(http: aiohttp.ClientSession, gateway: Gateway) -> str:
    async with http.get(f"{gateway.admin_url}/metrics") as response:
        return await response.text()


@pytest.mark.parametrize("policy", ["open", "closed", "local"])
async def test_redis_outage_follows_the_policy_and_limits_return(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, private_redis: PrivateRedis,
    policy: str,
) -> None:
    gateway = await make_gateway(
        redis=private_redis.url,
        limiter={"timeout": 0.2, "expected_nodes": 2},
        defaults={"rate_limit": {"requests": 10, "window": 60}, "on_limiter_error": policy},
    )
    key = await gateway.key()
    url = f"{gateway.url}/api/ai/x"
    async with http.get(url, headers=bearer(key)) as response:
        assert response.headers["RateLimit-Remaining"] == "9"  # counted in Redis

    private_redis.kill()
    statuses = []
    for _ in range(12):
        started = time.monotonic()
        async with http.get(url, headers=bearer(key)) as response:
            statuses.append(response.status)
            assert time.monotonic() - started < 0.4  # never past the Redis timeout
            if policy == "closed":
                await problem(response, 503, "rate_limit_unavailable")
                assert response.headers["Retry-After"] == "1"
            elif policy == "open":
                assert response.status == 200 and "RateLimit-Limit" not in response.headers
            else:  # local: each of the 2 expected nodes enforces 10 / 2
                assert response.headers["RateLimit-Limit"] == "5"
    if policy == "local":
        assert statuses == [200] * 5 + [429] * 7
    text = await scrape(http, gateway)
    assert metric(text, "gateway_limiter_errors_total") == 12
    assert metric(text, "gateway_limiter_degraded_decisions_total", policy=policy) == 12

    private_redis.start()  # an empty Redis: a fresh window
    returned = time.monotonic()
    while True:
        async with http.get(url, headers=bearer(key)) as response:
            if response.headers.get("RateLimit-Limit") == "10":
                assert response.status == 200
                assert response.headers["RateLimit-Remaining"] == "9"
                break
        assert time.monotonic() - returned < 2.0, "limits not enforced within 2 s"
        await asyncio.sleep(0.05)


async def test_round_trips_are_counted_and_coalesced(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    require_redis()
    gateway = await make_gateway(redis=REDIS_URL, limiter={"prefix": redis_prefix})
    key = await gateway.key(concurrency_limit=100)

    async def call() -> None:
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
            assert response.status == 200

    await asyncio.gather(*(call() for _ in range(50)))
    text = await scrape(http, gateway)
    trips = metric(text, "gateway_limiter_round_trips_total")
    commands = metric(text, "gateway_limiter_commands_total")
    assert 0 < trips < 50  # concurrent decisions shared round trips
    assert commands >= 50  # one EVALSHA per decision (+ ZREMs for slots given back)
