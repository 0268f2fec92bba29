"""IP allowlists and shadow mode through a real gateway and a real upstream (README "IP
allowlists", "Shadow mode"), on the in-process limiter with SQLite and on Redis with Postgres:
the client address of README "Client address" against a key's ``allowed_ips`` (403
``ip_not_allowed``), and shadow rules that forward everything and count their would-be refusals
exactly, in the metric and in usage, while enforced limits beside them still hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, bearer
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, redis_prefix, require_redis
from tests.test_errors_e2e import problem

Make = Callable[..., Awaitable[Gateway]]
SHADOW_METRIC = "gateway_shadow_refusals_total"
__all__ = ["redis_prefix"]  # the fixture, a fresh Redis prefix per test


@pytest.fixture(params=["memory+sqlite", "redis+postgres"])
async def make(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, redis_prefix: str
) -> AsyncIterator[Make]:
    if request.param == "memory+sqlite":
        yield make_gateway
        return
    require_redis()
    async with fresh_pg_database() as url:
        async def on_redis(routes: list[dict[str, Any]], **top: Any) -> Gateway:
            return await make_gateway(routes, database=url, redis=REDIS_URL,
                                      limiter={"prefix": redis_prefix}, **top)

        yield on_redis
        await make_gateway.close()  # type: ignore[attr-defined]  # before the database goes


def api(upstream: Any, **route: Any) -> list[dict[str, Any]]:
    return [{"name": "api", "path": "/api/", "upstream": upstream.url,
             "permissions": {"GET": ["read"], "POST": ["write"]}, **route}]


async def call(http: aiohttp.ClientSession, gateway: Gateway, key: str,
               **headers: str) -> aiohttp.ClientResponse:
    async with http.get(f"{gateway.url}/api/x", headers={**bearer(key), **headers}) as response:
        await response.read()
        return response


def shadow_count(gateway: Gateway, rule: str) -> float:
    return gateway.services.metrics.sample_value(SHADOW_METRIC, {"rule": rule})


async def usage_totals(http: aiohttp.ClientSession, gateway: Gateway, key_id: str) -> Any:
    await gateway.services.usage.flush()
    token = await gateway.admin_key()
    async with http.get(f"{gateway.admin_url}/admin/v1/keys/{key_id}/usage",
                        headers=bearer(token)) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["totals"]


async def test_allowlisted_key_passes_and_others_get_ip_not_allowed(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream), trusted_proxies=["127.0.0.1/32"])
    here = await gateway.key(allowed_ips=["127.0.0.1", "2001:db8::/32"])
    elsewhere = await gateway.key(allowed_ips=["10.0.0.0/8"])
    anywhere = await gateway.key()
    assert (await call(http, gateway, here)).status == 200  # the peer, 127.0.0.1
    body = await problem(await call(http, gateway, elsewhere), 403, "ip_not_allowed")
    assert "address" in body["detail"]
    # through the trusted proxy (127.0.0.1): the rightmost untrusted X-Forwarded-For hop
    assert (await call(http, gateway, elsewhere, **{"X-Forwarded-For": "10.20.30.40"})).status \
        == 200
    await problem(await call(http, gateway, here, **{"X-Forwarded-For": "198.51.100.7"}),
                  403, "ip_not_allowed")
    assert (await call(http, gateway, here,
                       **{"X-Forwarded-For": "2001:db8::9, 127.0.0.1"})).status == 200
    # a client-written hop left of an untrusted one proves nothing
    await problem(await call(http, gateway, elsewhere,
                             **{"X-Forwarded-For": "10.0.0.1, 198.51.100.7"}),
                  403, "ip_not_allowed")
    assert (await call(http, gateway, anywhere, **{"X-Forwarded-For": "198.51.100.7"})).status \
        == 200
    metrics = gateway.services.metrics
    assert metrics.sample_value("gateway_auth_failures_total", {"code": "ip_not_allowed"}) == 3
    totals = await usage_totals(http, gateway, gateway.created[1].key_id)
    assert totals["forbidden"] == 2 and totals["success"] == 1


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream))
    elsewhere = await gateway.key(allowed_ips=["10.0.0.0/8"])
    await problem(await call(http, gateway, elsewhere, **{"X-Forwarded-For": "10.1.1.1"}),
                  403, "ip_not_allowed")


async def test_bad_cidrs_are_400_on_create_and_update(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream))
    headers = bearer(await gateway.admin_key())
    keys = f"{gateway.admin_url}/admin/v1/workspaces/{gateway.workspace.id}/keys"
    body = {"name": "pinned", "allowed_ips": ["10.0.0.1/8"]}
    async with http.post(keys, json=body, headers=headers) as response:
        refused = await problem(response, 400, "validation_error")
    assert refused["errors"] == {
        "allowed_ips": "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"}
    body = {"name": "pinned", "allowed_ips": ["2001:DB8::/32"], "enforcement": "shadow"}
    async with http.post(keys, json=body, headers=headers) as response:
        created = await response.json()
        assert response.status == 201, created
    assert created["allowed_ips"] == ["2001:db8::/32"] and created["enforcement"] == "shadow"
    key_url = f"{gateway.admin_url}/admin/v1/keys/{created['key_id']}"
    async with http.patch(key_url, json={"allowed_ips": ["not-an-ip"]},
                          headers=headers) as response:
        refused = await problem(response, 400, "validation_error")
    assert refused["errors"] == {"allowed_ips": "'not-an-ip' is not an IP address or CIDR"}
    async with http.patch(key_url, json={"enforcement": "loud"}, headers=headers) as response:
        await problem(response, 400, "validation_error")
    async with http.patch(key_url, json={"allowed_ips": [], "enforcement": "enforce"},
                          headers=headers) as response:
        changed = await response.json()
    assert changed["allowed_ips"] == [] and changed["enforcement"] == "enforce"


async def test_a_shadow_route_limit_forwards_all_and_counts_exactly(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream, rate_limit={"requests": 5, "window": 60,
                                                   "shadow": True}))
    key = await gateway.key()
    statuses = [(await call(http, gateway, key)).status for _ in range(20)]
    assert statuses == [200] * 20
    assert shadow_count(gateway, "rate_limited") == 15
    totals = await usage_totals(http, gateway, gateway.created[0].key_id)
    assert totals["success"] == 20 and totals["shadow_refused"] == 15
    assert totals["rate_limited"] == 0


async def test_an_enforced_limit_beside_a_shadow_one_still_refuses(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream, rate_limit={"requests": 5, "window": 60,
                                                   "shadow": True}))
    key = await gateway.key(rate_limit_override=10)
    responses = [await call(http, gateway, key) for _ in range(20)]
    assert [r.status for r in responses] == [200] * 10 + [429] * 10
    # the headers show the enforced window only
    assert {r.headers["RateLimit-Limit"] for r in responses} == {"10"}
    assert shadow_count(gateway, "rate_limited") == 5  # forwarded requests 6..10
    totals = await usage_totals(http, gateway, gateway.created[0].key_id)
    assert (totals["success"], totals["rate_limited"], totals["shadow_refused"]) == (10, 10, 5)


async def test_a_shadow_plan_quota_forwards_all_and_counts_exactly(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream), plans={"trial": {"quota": {"day": 5, "shadow": True}}},
                         default_plan="trial")
    key = await gateway.key()
    responses = [await call(http, gateway, key) for _ in range(20)]
    assert [r.status for r in responses] == [200] * 20
    assert not any("X-Quota-Limit" in r.headers for r in responses)  # refuses no one: unseen
    assert shadow_count(gateway, "quota_exceeded") == 15
    totals = await usage_totals(http, gateway, gateway.created[0].key_id)
    assert totals["shadow_refused"] == 15
    headers = bearer(await gateway.admin_key())
    quota_url = f"{gateway.admin_url}/admin/v1/workspaces/{gateway.workspace.id}/quota"
    async with http.get(quota_url, headers=headers) as response:
        quota = await response.json()
    assert quota["day"]["limit"] == 5 and quota["day"]["used"] == 20 and quota["shadow"]


async def test_a_shadow_key_is_forwarded_and_each_would_be_refusal_counted(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    routes = [*api(upstream), {"name": "res", "path": "/res/{rid}/", "upstream": upstream.url,
                               "resource": "rid"}]
    gateway = await make(routes)
    key = await gateway.key(enforcement="shadow", allowed_origins=["https://app.example.com"],
                            allowed_ips=["10.0.0.0/8"], permissions=["other"],
                            scopes=[{"resource_id": "mine", "operations": ["read"]}],
                            rate_limit_override=3)
    # permissions first: every check the key fails refuses nothing
    assert (await call(http, gateway, key)).status == 200
    assert shadow_count(gateway, "insufficient_permissions") == 1
    async with http.get(f"{gateway.url}/res/theirs/x", headers=bearer(key)) as response:
        assert response.status == 200
    assert shadow_count(gateway, "resource_forbidden") == 1
    async with http.get(f"{gateway.url}/res/mine/x", headers={
            **bearer(key), "Origin": "https://evil.example.org"}) as response:
        assert response.status == 200
    assert shadow_count(gateway, "origin_not_allowed") == 1
    async with http.get(f"{gateway.url}/res/mine/x", headers=bearer(key)) as response:
        assert response.status == 200  # from 127.0.0.1, outside 10.0.0.0/8
        assert response.headers["RateLimit-Limit"] == "3"  # its own, shadow, budget shows
    assert shadow_count(gateway, "ip_not_allowed") == 1
    totals = await usage_totals(http, gateway, gateway.created[0].key_id)
    assert totals["success"] == 4 and totals["forbidden"] == 0
    assert totals["shadow_refused"] == 4
    # its own rate limit of 3 (already spent) refuses no one either: counted once per request
    assert shadow_count(gateway, "rate_limited") == 0  # each request above was counted once


async def test_a_shadow_keys_own_limit_is_counted_exactly(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make(api(upstream))
    key = await gateway.key(enforcement="shadow", rate_limit_override=3)
    assert [(await call(http, gateway, key)).status for _ in range(10)] == [200] * 10
    assert shadow_count(gateway, "rate_limited") == 7
    enforced = await gateway.key(rate_limit_override=3)
    assert [(await call(http, gateway, enforced)).status for _ in range(4)] == [200] * 3 + [429]


async def test_forward_auth_judges_the_same_client_address(
    make: Make, upstream: Any, http: aiohttp.ClientSession
) -> None:
    """README "IP allowlists": behind an ingress in ``trusted_proxies``, a verify route judges
    the client the ingress names in ``X-Forwarded-For``; a shadow key is answered 200."""
    routes = [*api(upstream), {"name": "verify", "path": "/_verify/", "mode": "verify"}]
    gateway = await make(routes, trusted_proxies=["127.0.0.1/32"])
    pinned = await gateway.key(allowed_ips=["203.0.113.0/24"])
    shadow = await gateway.key(allowed_ips=["203.0.113.0/24"], enforcement="shadow")

    async def check(key: str, client: str) -> aiohttp.ClientResponse:
        headers = {**bearer(key), "X-Original-Method": "GET", "X-Original-URI": "/api/x",
                   "X-Forwarded-For": client}
        async with http.get(f"{gateway.url}/_verify/", headers=headers) as response:
            await response.read()
            return response

    assert (await check(pinned, "203.0.113.50")).status == 200
    await problem(await check(pinned, "198.51.100.1"), 403, "ip_not_allowed")
    assert (await check(shadow, "198.51.100.1")).status == 200
    assert shadow_count(gateway, "ip_not_allowed") == 1


async def test_without_the_access_log_a_shadow_refusal_is_one_log_line(
    make: Make, upstream: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make(api(upstream), logging={"access_log": False})
    key = await gateway.key(enforcement="shadow", allowed_ips=["10.0.0.0/8"])
    caplog.set_level("INFO", logger="gateway.shadow")
    assert (await call(http, gateway, key)).status == 200
    lines = [r for r in caplog.records if r.name == "gateway.shadow"]
    assert len(lines) == 1 and lines[0].getMessage() == "shadow refusal"
    assert (lines[0].rule, lines[0].key_id, lines[0].route) == (  # type: ignore[attr-defined]
        "ip_not_allowed", gateway.created[0].key_id, "api")


@pytest.mark.parametrize("shadow_route", [False, True])
async def test_credits_are_spent_whatever_is_in_shadow(
    make: Make, upstream: Any, http: aiohttp.ClientSession, shadow_route: bool
) -> None:
    """Credits are never a shadow rule (README "Credits"): a shadow key, on a route with or
    without a shadow window, spends them and is refused when they run out."""
    route = {"rate_limit": {"requests": 100, "window": 60, "shadow": True}} if shadow_route \
        else {}
    gateway = await make(api(upstream, **route))
    key = await gateway.key(enforcement="shadow", credits={"remaining": 3})
    answers = [await call(http, gateway, key) for _ in range(4)]
    assert [r.status for r in answers] == [200, 200, 200, 429]
    assert [r.headers.get("X-Credits-Remaining") for r in answers[:3]] == ["2", "1", "0"]
    assert answers[3].headers.get("X-Credits-Remaining") == "0"
