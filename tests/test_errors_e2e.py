"""Every row of SPEC §5, end to end: a real gateway, a real key store, a real upstream."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import LimiterUnavailable
from gateway.keys.model import Credits, utcnow
from gateway.limiter.base import CreditState, Decision, QuotaAsk, QuotaUsage, Window
from tests.conftest import (
    Gateway,
    GatewayFactory,
    Tagged,
    bearer,
    raw_request,
    start_site,
    well_formed_unknown_key,
)


async def problem(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith(code)
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


# 400 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/api/ai/..%2F..%2Fadmin", "/api/ai/a%5Cb", "/api/ai/%00", "/../etc/passwd",
     "/public/../api/ai/models"],
)
async def test_malformed_paths(gateway: Gateway, path: str) -> None:
    key = await gateway.key()
    response = await raw_request(
        gateway.port, f"GET {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
    )
    assert response.status == 400
    assert b'"bad_request"' in response.body
    assert gateway.upstream.log.received == []


async def test_header_names_with_underscore(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "X_Workspace_Id": "ws_evil"}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        await problem(response, 400, "bad_request")
    assert gateway.upstream.log.received == []


async def test_two_authorization_headers(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    headers = [("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")]
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        await problem(response, 400, "bad_request")


# 401 -------------------------------------------------------------------------------------------
async def test_missing_key(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/api/ai/models") as response:
        await problem(response, 401, "missing_api_key")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_key_in_query_string_is_not_accepted(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/models?api_key={key}") as response:
        body = await problem(response, 401, "missing_api_key")
        assert "query" in body["detail"]
        assert key not in body["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk_live_short",
        "Bearer " + "sk_live_" + "A" * 32,  # right shape, wrong checksum
        "Basic dXNlcjpwYXNz",
        "Bearer ",
    ],
)
async def test_invalid_keys(gateway: Gateway, http: aiohttp.ClientSession, header: str) -> None:
    async with http.get(f"{gateway.url}/api/ai/models",
                        headers={"Authorization": header}) as response:
        body = await problem(response, 401, "invalid_api_key")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        token = header.partition(" ")[2]
        assert not token or token not in body["detail"]


async def test_unknown_key(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = well_formed_unknown_key()
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        body = await problem(response, 401, "invalid_api_key")
        assert key not in str(body)


async def test_bad_checksum_never_reaches_the_store(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    misses = gateway.services.cache.stats.misses
    for i in range(20):
        bad = f"sk_live_{i:026d}AAAAAA"
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(bad)) as response:
            assert response.status == 401
    assert gateway.services.cache.stats.misses == misses


async def test_scheme_is_case_insensitive(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/models",
                        headers={"Authorization": f"bEaReR {key}"}) as response:
        assert response.status == 200


async def test_revoked_key(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200  # now cached
    await gateway.keys.revoke_key(gateway.created[-1].key_id, "test")
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        await problem(response, 401, "revoked_api_key")


async def test_expired_key(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    soon = (utcnow() + timedelta(seconds=1)).isoformat()
    key = await gateway.key(expires_at=soon)
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200
    await asyncio.sleep(1.1)
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        await problem(response, 401, "expired_api_key")


# 403 -------------------------------------------------------------------------------------------
async def test_insufficient_permissions(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key(permissions=["read"])
    async with http.post(f"{gateway.url}/api/ai/models", headers=bearer(key),
                         data=b"{}") as response:
        body = await problem(response, 403, "insufficient_permissions")
        assert "write" in body["detail"]
        assert response.headers["RateLimit-Limit"]  # a request with a key carries its quota
    assert gateway.upstream.log.received == []


async def test_permissions_implied(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key(permissions=["admin"])  # admin -> write -> read
    async with http.post(f"{gateway.url}/api/ai/models", headers=bearer(key),
                         data=b"{}") as response:
        assert response.status == 200
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200


async def test_resource_forbidden(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key(scopes=[{"resource_id": "r1", "operations": ["read"]}])
    url = f"{gateway.url}/v1/retrievers"
    async with http.get(f"{url}/r1/search", headers=bearer(key)) as response:
        assert response.status == 200
    async with http.get(f"{url}/r2/search", headers=bearer(key)) as response:
        await problem(response, 403, "resource_forbidden")
    async with http.delete(f"{url}/r1/x", headers=bearer(key)) as response:
        await problem(response, 403, "resource_forbidden")


async def test_empty_scopes_cover_every_resource(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    async with http.get(f"{gateway.url}/v1/retrievers/any/x", headers=bearer(key)) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.com", 200),
        ("https://a.b.example.com", 200),
        ("https://example.com", 403),
        ("https://evil-example.com", 403),
        ("http://app.example.com", 403),
        ("https://app.example.com:8443", 403),
        ("null", 403),
    ],
)
async def test_origin_not_allowed(
    gateway: Gateway, http: aiohttp.ClientSession, origin: str, status: int
) -> None:
    key = await gateway.key(allowed_origins=["https://app.example.com", "https://*.example.com"])
    headers = {**bearer(key), "Origin": origin}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        if status == 200:
            assert response.status == 200
        else:
            await problem(response, 403, "origin_not_allowed")


async def test_no_origin_header_is_not_checked(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key(allowed_origins=["https://app.example.com"])
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200


# 404 -------------------------------------------------------------------------------------------
async def test_route_not_found(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/nowhere") as response:
        await problem(response, 404, "route_not_found")


async def test_project_not_found(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    other = await gateway.keys.create_workspace("other", "test")
    for project in ("proj_doesnotexist", other.default_project_id):
        headers = {**bearer(key), "X-Project-Id": project}
        async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
            await problem(response, 404, "project_not_found")


async def test_namespace_not_found(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "X-Namespace": "nope"}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        await problem(response, 404, "namespace_not_found")
    async with http.get(f"{gateway.url}/api/ai/models?namespace=ns_nope",
                        headers=bearer(key)) as response:
        await problem(response, 404, "namespace_not_found")


# 413 -------------------------------------------------------------------------------------------
async def test_payload_too_large_declared(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    key = await gateway.key()
    async with http.post(f"{gateway.url}/api/ai/upload", headers=bearer(key),
                         data=io.BytesIO(b"x" * (1024 * 1024 + 1))) as response:
        await problem(response, 413, "payload_too_large")
    assert gateway.upstream.log.received == []


async def test_payload_too_large_counted_while_streaming(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"y" * 65536  # 2.5 MiB, chunked: no Content-Length to refuse early

    async with http.post(f"{gateway.url}/api/ai/upload", headers=bearer(key),
                         data=chunks()) as response:
        await problem(response, 413, "payload_too_large")


# 429 -------------------------------------------------------------------------------------------
# (429 rate_limited with its headers and usage: tests/ratelimit/test_limits_e2e.py, on both
# limiters)


async def test_rate_limit_override_wins(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(defaults={"rate_limit": {"requests": 1, "window": 60}})
    key = await gateway.key(rate_limit_override=5)
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
        assert response.headers["RateLimit-Limit"] == "5"


async def test_concurrency_limited(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, first: Tagged
) -> None:
    gateway = await _gateway_with_upstream(make_gateway, first.url)
    key = await gateway.key(concurrency_limit=1)
    held = asyncio.ensure_future(http.get(f"{gateway.url}/slow/a/hold", headers=bearer(key)))
    await first.holding.wait()
    async with http.get(f"{gateway.url}/slow/b", headers=bearer(key)) as response:
        await problem(response, 429, "concurrency_limited")
        assert response.headers["Retry-After"] == "1"
    first.released.set()
    async with await held as response:
        assert response.status == 200
    async with http.get(f"{gateway.url}/slow/c", headers=bearer(key)) as response:
        assert response.status == 200  # the slot was given back


async def _gateway_with_upstream(make: GatewayFactory, url: str, **route: Any) -> Gateway:
    return await make(routes=[{"name": "slow", "path": "/slow/", "upstream": url, **route}])


# 502 / 503 / 504 -------------------------------------------------------------------------------
async def test_upstream_unavailable(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    dead = await _gateway_with_upstream(make_gateway, "http://127.0.0.1:9")  # nothing listens
    key = await dead.key()
    async with http.get(f"{dead.url}/slow/x", headers=bearer(key)) as response:
        body = await problem(response, 502, "upstream_unavailable")
        assert "Refused" not in body["detail"]


async def test_upstream_timeout(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/{tail:.*}", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    port = await start_site(runner)
    try:
        slow = await _gateway_with_upstream(make_gateway, f"http://127.0.0.1:{port}", timeout=0.3)
        key = await slow.key()
        async with http.get(f"{slow.url}/slow/x", headers=bearer(key)) as response:
            await problem(response, 504, "upstream_timeout")
    finally:
        await runner.cleanup()


async def test_auth_unavailable_for_uncached_keys(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    cached = await gateway.key()
    uncached = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(cached)) as response:
        assert response.status == 200
    await gateway.services.store.close()  # the key store goes away
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(uncached)) as response:
        await problem(response, 503, "auth_unavailable")
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(cached)) as response:
        assert response.status == 200  # cached keys keep working


class DownLimiter:
    async def open(self) -> None:
        pass

    async def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = "sliding_log", credits: Credits | None = None, cost: int = 1,
    ) -> Decision:
        raise LimiterUnavailable("down")

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = "sliding_log", credits: Credits | None = None, cost: int = 1,
    ) -> None:
        return None

    async def quota_usage(self, workspace: str) -> QuotaUsage:
        raise LimiterUnavailable("down")

    async def credits_left(self, budget: str, credits: Credits) -> CreditState:
        raise LimiterUnavailable("down")

    async def peek(self, budget: str, scope: str, limit: int, window: float,
                   algorithm: str = "sliding_log") -> Decision:
        raise LimiterUnavailable("down")

    def release(self, budget: str, lease: str) -> None:
        raise LimiterUnavailable("down")

    async def ping(self) -> None:
        raise LimiterUnavailable("down")

    async def close(self) -> None:
        pass

    def stats(self) -> None:
        return None


@pytest.mark.parametrize(("policy", "status"), [("closed", 503), ("open", 200), ("local", 200)])
async def test_limiter_down_follows_policy(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    policy: str, status: int,
) -> None:
    monkeypatch.setattr("gateway.services.create_limiter", lambda config: DownLimiter())
    gateway = await make_gateway(defaults={"on_limiter_error": policy})
    key = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
        if status == 503:
            await problem(response, 503, "rate_limit_unavailable")
            assert response.headers["Retry-After"]
        else:
            assert response.status == 200
    degraded = gateway.services.metrics.sample_value(
        "gateway_limiter_degraded_decisions_total", {"policy": policy}
    )
    assert degraded == 1


@pytest.mark.parametrize(("policy", "status"), [("closed", 503), ("open", 200), ("local", 503)])
async def test_limiter_down_with_credits(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    policy: str, status: int,
) -> None:
    """README "Credits": only the shared limiter knows a balance, so ``local`` refuses a key
    with credits (503) rather than spend a share of it; ``open`` admits without spending; the
    key object shows the stored balance."""
    monkeypatch.setattr("gateway.services.create_limiter", lambda config: DownLimiter())
    gateway = await make_gateway(defaults={"on_limiter_error": policy})
    key = await gateway.key(credits={"remaining": 4})
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
        if status == 503:
            await problem(response, 503, "rate_limit_unavailable")
        else:
            assert response.status == 200 and "X-Credits-Remaining" not in response.headers
    admin = await gateway.admin_key()
    key_id = gateway.created[-1].key_id
    async with http.get(f"{gateway.admin_url}/admin/v1/keys/{key_id}",
                        headers=bearer(admin)) as response:
        assert (await response.json())["credits"]["remaining"] == 4


async def test_every_response_has_a_request_id(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/nowhere") as response:
        assert response.headers["X-Request-Id"]
    async with http.get(f"{gateway.url}/public/x", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    async with http.get(f"{gateway.url}/public/x", headers={"X-Request-Id": "bad id;drop"}) as r:
        assert r.headers["X-Request-Id"] != "bad id;drop"
