"""Which limit applies (SPEC 8, README "Rate limits"), black-box through a real gateway and a
real upstream, on the in-process limiter and on Redis, with the subscriptions in SQLite and in
Postgres: the key's own budget (override > plan > ``defaults.rate_limit``), a route's
``rate_limit`` as a second budget a request must also fit, concurrency (key > route > plan >
default), and quotas against rate limits (neither refusal spends the other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Tagged, bearer, wait_for
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, require_redis
from tests.test_errors_e2e import problem

Make = Callable[..., Awaitable[Gateway]]

PLANS = {
    "small": {"rate_limit": {"requests": 3, "window": 60}, "max_concurrent": 3},
    "big": {"rate_limit": {"requests": 5, "window": 60}, "quota": {"day": 4}},
    "bare": {},
}
DEFAULTS = {"rate_limit": {"requests": 7, "window": 60}, "max_concurrent": 1}


@pytest.fixture(params=["memory+sqlite", "redis+sqlite", "memory+postgres", "redis+postgres"])
async def make_planned(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, redis_prefix: str
) -> AsyncIterator[Make]:
    """A gateway with ``PLANS`` (``default_plan: small``) on the parametrized limiter and
    store (a fresh Postgres database, a Redis prefix of this test's own)."""
    limiter, store = request.param.split("+")
    top: dict[str, Any] = {"plans": PLANS, "default_plan": "small", "defaults": DEFAULTS}
    if limiter == "redis":
        require_redis()
        top |= {"redis": REDIS_URL, "limiter": {"prefix": redis_prefix}}

    async def factory(routes: list[dict[str, Any]], database: str | None = None) -> Gateway:
        return await make_gateway(routes, **top, **({"database": database} if database else {}))

    if store == "sqlite":
        yield factory
        return
    async with fresh_pg_database() as url:
        async def on_postgres(routes: list[dict[str, Any]]) -> Gateway:
            return await factory(routes, url)

        yield on_postgres
        await make_gateway.close()  # type: ignore[attr-defined]  # before the database goes


async def subscribe(http: aiohttp.ClientSession, gateway: Gateway, workspace: str,
                    plan: str) -> None:
    token = await gateway.admin_key()
    async with http.put(f"{gateway.admin_url}/admin/v1/workspaces/{workspace}/subscription",
                        json={"plan": plan}, headers=bearer(token)) as response:
        assert response.status == 200, await response.text()


async def get(http: aiohttp.ClientSession, url: str, key: str) -> aiohttp.ClientResponse:
    async with http.get(url, headers=bearer(key)) as response:
        await response.read()
        return response


async def test_the_keys_budget_and_the_routes_budget(
    make_planned: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make_planned([
        {"name": "api", "path": "/api/", "upstream": upstream.url},
        {"name": "tight", "path": "/tight/", "upstream": upstream.url,
         "rate_limit": {"requests": 2, "window": 60}},
    ])
    api, tight = f"{gateway.url}/api/x", f"{gateway.url}/tight/x"

    # the key's own budget: its override, else its plan's, else defaults.rate_limit
    on_plan = await gateway.key()
    overridden = await gateway.key(rate_limit_override=4)
    assert (await get(http, api, on_plan)).headers["X-RateLimit-Limit"] == "3"  # default_plan
    assert (await get(http, api, overridden)).headers["X-RateLimit-Limit"] == "4"
    await subscribe(http, gateway, gateway.workspace.id, "bare")  # a plan without rate_limit
    assert (await get(http, api, on_plan)).headers["X-RateLimit-Limit"] == "7"
    await subscribe(http, gateway, gateway.workspace.id, "big")
    response = await get(http, api, on_plan)
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "2"  # 5 - 3: one budget all along
    assert (await get(http, api, overridden)).headers["X-RateLimit-Limit"] == "4"

    # the route's rate_limit is a second budget per key: a request must fit both
    await subscribe(http, gateway, gateway.workspace.id, "small")  # big's quota would refuse
    fresh = await gateway.key(rate_limit_override=4)
    remaining = [(await get(http, tight, fresh)).headers["X-RateLimit-Remaining"]
                 for _ in range(2)]
    assert remaining == ["1", "0"]  # the route's, nearer to running out
    response = await get(http, tight, fresh)
    assert response.status == 429 and response.headers["X-RateLimit-Limit"] == "2"
    # the route's refusal spent none of the key's budget: 2 of 4 left on another route
    assert [(await get(http, api, fresh)).status for _ in range(3)] == [200, 200, 429]
    # and the key's budget refuses on a route whose own budget has room
    other = await gateway.key(rate_limit_override=1)
    assert (await get(http, tight, other)).status == 200
    response = await get(http, tight, other)
    assert response.status == 429 and response.headers["X-RateLimit-Limit"] == "1"


async def test_concurrency_key_then_route_then_plan_then_default(
    make_planned: Make, http: aiohttp.ClientSession
) -> None:
    slow = await Tagged("slow").start()
    try:
        gateway = await make_planned([
            {"name": "slow", "path": "/slow/", "upstream": slow.url},
            {"name": "capped", "path": "/capped/", "upstream": slow.url, "max_concurrent": 2},
        ])

        async def cap(route: str, key: str, expected: int) -> None:
            """``expected`` requests held upstream at once, and the next one refused."""
            slow.released.clear()
            before = slow.arrived
            held = [asyncio.ensure_future(get(http, f"{gateway.url}/{route}/hold", key))
                    for _ in range(expected)]
            await wait_for(lambda: slow.arrived == before + expected)
            async with http.get(f"{gateway.url}/{route}/x", headers=bearer(key)) as refused:
                await problem(refused, 429, "concurrency_limited")
            slow.released.set()
            assert [(await h).status for h in held] == [200] * expected

        key = gateway.key
        await cap("capped", await key(concurrency_limit=4, rate_limit_override=100), 4)  # key's
        await cap("capped", await key(rate_limit_override=100), 2)  # the route's, not plan's 3
        await cap("slow", await key(rate_limit_override=100), 3)  # the plan's (default small)
        await subscribe(http, gateway, gateway.workspace.id, "bare")
        await cap("slow", await key(rate_limit_override=100), 1)  # defaults.max_concurrent
    finally:
        await slow.stop()


async def test_a_quota_refusal_spends_no_rate_budget_and_a_rate_refusal_no_quota(
    make_planned: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make_planned([{"name": "api", "path": "/api/", "upstream": upstream.url}])
    url = f"{gateway.url}/api/x"
    await subscribe(http, gateway, gateway.workspace.id, "big")  # 5 per minute, 4 per day
    slow = await gateway.key(rate_limit_override=1)
    assert [(await get(http, url, slow)).status for _ in range(3)] == [200, 429, 429]
    key = await gateway.key()
    statuses = []
    for _ in range(5):
        response = await get(http, url, key)
        statuses.append(response.status)
    assert statuses == [200, 200, 200, 429, 429]  # 4 a day: 1 (slow) + 3; 429s not counted
    async with http.get(url, headers=bearer(key)) as refused:
        await problem(refused, 429, "quota_exceeded")
    assert response.headers["X-Quota-Limit"] == "4"
    assert response.headers["X-Quota-Remaining"] == "0"
    to_midnight = 86_400 - time.time() % 86_400
    assert abs(int(response.headers["Retry-After"]) - to_midnight) <= 5
    assert response.headers["X-RateLimit-Remaining"] == "2"  # 5 - 3: the refusals spent none
    token = await gateway.admin_key()
    async with http.get(f"{gateway.admin_url}/admin/v1/workspaces/{gateway.workspace.id}/quota",
                        headers=bearer(token)) as quota:
        assert (await quota.json())["day"] == {
            "limit": 4, "used": 4, "reset": pytest.approx(to_midnight, abs=5)
        }
    # a plan with no quota: the key's window still holds only the 3 admitted
    await subscribe(http, gateway, gateway.workspace.id, "bare")
    response = await get(http, url, key)
    assert (response.status, response.headers["X-RateLimit-Remaining"]) == (200, "3")  # 7 - 4
    assert "X-Quota-Limit" not in response.headers
