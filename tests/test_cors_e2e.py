"""CORS, end to end (SPEC §4 step 2, README "The request path"): preflights are answered by the
gateway from the route's ``cors`` settings, without a key, and never forwarded; actual requests
from an allowed origin carry the ``Access-Control-*`` response headers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Gateway, GatewayFactory, bearer, start_site

UpstreamHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: UpstreamHandler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    port = await start_site(runner)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def preflight_headers(origin: str, method: str = "POST", **extra: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, **extra}


def vary(response: aiohttp.ClientResponse) -> list[str]:
    return [t.strip().lower() for v in response.headers.getall("Vary", ()) for t in v.split(",")]


async def problem(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code
    return body


# preflights ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com", "https://a.example.com", "https://deep.sub.example.com",
     "https://APP.example.com"],
)
async def test_preflight_from_an_allowed_origin(
    gateway: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    headers = preflight_headers(
        origin, "POST", **{"Access-Control-Request-Headers": "authorization, content-type, x-trace"}
    )
    async with http.options(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 204, await response.text()
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert (response.headers["Access-Control-Allow-Headers"]
                == "authorization, content-type, x-trace")
        assert response.headers["Access-Control-Max-Age"] == "600"
        assert "origin" in vary(response)
        assert "Access-Control-Allow-Credentials" not in response.headers
        assert response.headers["X-Request-Id"]
        assert await response.read() == b""
    assert gateway.upstream.log.received == []


async def test_preflight_needs_no_key_and_ignores_a_bad_one(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**preflight_headers("https://app.example.com", "GET"),
               "Authorization": "Bearer sk_live_not_a_key"}
    async with http.options(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 204
        assert "GET" in response.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Headers" not in response.headers  # none requested
    assert gateway.upstream.log.received == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil-example.com",
        "https://example.com",
        "https://example.com.evil.com",
        "https://app.example.com.evil.com",
        "null",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com/path",
        "not an origin",
        "",
    ],
)
async def test_preflight_from_a_disallowed_origin(
    gateway: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    async with http.options(f"{gateway.url}/api/ai/models",
                            headers=preflight_headers(origin)) as response:
        await problem(response, 403, "origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Methods" not in response.headers
    assert gateway.upstream.log.received == []


@pytest.mark.parametrize("path", ["/v1/retrievers/r1/search", "/public/x", "/based/x"])
async def test_preflight_on_a_route_without_cors(
    gateway: Gateway, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.options(f"{gateway.url}{path}",
                            headers=preflight_headers("https://app.example.com")) as response:
        await problem(response, 403, "origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in response.headers
    assert gateway.upstream.log.received == []


async def test_configured_cors_settings(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(routes=[{
        "name": "app",
        "path": "/app/",
        "upstream": "http://127.0.0.1:9",  # never reached
        "cors": {
            "allow_origins": ["https://app.example.com"],
            "max_age": 42,
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization", "Content-Type"],
            "expose_headers": ["X-Custom"],
            "allow_credentials": True,
        },
    }])
    url = f"{gateway.url}/app/x"
    headers = preflight_headers("https://app.example.com", "POST",
                                **{"Access-Control-Request-Headers": "x-anything"})
    async with http.options(url, headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"
        assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert response.headers["Access-Control-Max-Age"] == "42"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
    async with http.options(url, headers=preflight_headers("https://app.example.com",
                                                           "DELETE")) as response:
        await problem(response, 403, "origin_not_allowed")
    # on an error response too, the browser may read the problem: CORS headers present
    async with http.get(url, headers={"Origin": "https://app.example.com"}) as response:
        await problem(response, 401, "missing_api_key")
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        exposed = response.headers["Access-Control-Expose-Headers"]
        assert "X-Custom" in exposed and "X-Request-Id" in exposed


async def test_options_without_request_method_is_not_a_preflight(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.options(f"{gateway.url}/api/ai/models",
                            headers={"Origin": "https://app.example.com"}) as response:
        await problem(response, 401, "missing_api_key")
    async with http.options(f"{gateway.url}/api/ai/models",
                            headers={"Access-Control-Request-Method": "POST"}) as response:
        await problem(response, 401, "missing_api_key")
    async with http.options(f"{gateway.url}/v1/retrievers/r1/x",
                            headers={"Origin": "https://app.example.com"}) as response:
        await problem(response, 401, "missing_api_key")  # not refused as a preflight either
    assert gateway.upstream.log.received == []


async def test_options_with_a_key_is_forwarded(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "Origin": "https://app.example.com"}
    async with http.options(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert [r.method for r in gateway.upstream.log.received] == ["OPTIONS"]


# actual requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", ["https://app.example.com", "https://x.y.example.com"])
async def test_actual_request_from_an_allowed_origin(
    gateway: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "Origin": origin}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        exposed = [h.strip().lower()
                   for h in response.headers["Access-Control-Expose-Headers"].split(",")]
        for name in ("ratelimit-remaining", "ratelimit-limit", "ratelimit-reset",
                     "x-request-id", "retry-after"):
            assert name in exposed, name
        assert "origin" in vary(response)
        assert response.headers["RateLimit-Remaining"]
    got = gateway.upstream.log.last
    assert got.header("Origin") == origin  # the upstream still sees who called


async def test_actual_request_from_a_disallowed_origin_gets_no_cors_headers(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()  # no allowed_origins on the key: the request itself is fine
    headers = {**bearer(key), "Origin": "https://evil-example.com"}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Expose-Headers" not in response.headers


async def test_rate_limited_answer_is_readable_cross_origin(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(defaults={"rate_limit": {"requests": 1, "window": 60}})
    key = await gateway.key()
    headers = {**bearer(key), "Origin": "https://app.example.com"}
    for status in (200, 429):
        async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
            assert response.status == status
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_upstream_vary_is_kept_next_to_origin(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def varying(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Vary": "Accept-Encoding, Accept-Language"})

    async with serve(varying) as url:
        gateway = await make_gateway(routes=[{
            "name": "app", "path": "/app/", "upstream": url,
            "cors": {"allow_origins": ["https://app.example.com"]},
        }])
        key = await gateway.key()
        # a cache keyed on Origin alone would serve one language to everyone; keyed on the
        # upstream's Vary alone, one origin's Access-Control-Allow-Origin to every origin
        for origin in ("https://app.example.com", "https://evil-example.com", None):
            headers = bearer(key) if origin is None else {**bearer(key), "Origin": origin}
            async with http.get(f"{gateway.url}/app/x", headers=headers) as response:
                assert response.status == 200
                assert vary(response) == ["accept-encoding", "accept-language", "origin"]


async def test_vary_origin_on_every_answer_of_a_cors_route(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    # the answer to a request without Origin (no Access-Control-Allow-Origin) must not be
    # served from a cache to a browser that sends one (Fetch §3.2.5)
    key = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200
        assert vary(response) == ["origin"]
    async with http.get(f"{gateway.url}/api/ai/models") as response:
        assert response.status == 401
        assert vary(response) == ["origin"]
    async with http.get(f"{gateway.url}/based/x", headers=bearer(key)) as response:
        assert response.status == 200
        assert vary(response) == []  # no cors on this route: nothing varies on Origin


async def test_upstream_cors_headers_are_replaced_for_allowed_origins(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def permissive(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Access-Control-Allow-Origin": "*"})

    async with serve(permissive) as url:
        gateway = await make_gateway(routes=[{
            "name": "app", "path": "/app/", "upstream": url,
            "cors": {"allow_origins": ["https://app.example.com"]},
        }])
        key = await gateway.key()
        headers = {**bearer(key), "Origin": "https://app.example.com"}
        async with http.get(f"{gateway.url}/app/x", headers=headers) as response:
            assert response.headers.getall("Access-Control-Allow-Origin") == [
                "https://app.example.com"
            ]
