"""SPEC §4's hardening rules, one test per rule (each failed before its fix): tenancy selectors
given twice, wildcard origins, the gateway owning CORS headers, no ``Server`` banner, and the
admin API refusing a large body from its Content-Length."""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.origins import is_origin_allowed
from tests.conftest import Gateway, GatewayFactory, bearer
from tests.hostile.conftest import UNLIMITED, hostile_routes, send_raw
from tests.hostile.upstream import StrictUpstream


@pytest.mark.parametrize("query, header", [
    ("namespace=mine&namespace=theirs", None),
    ("namespace=mine&namespace=mine", None),
    ("namespace=theirs", "mine"),
])
async def test_repeated_tenancy_selector_is_refused(
    hostile: Gateway, strict: StrictUpstream, query: str, header: str | None
) -> None:
    for name in ("mine", "theirs"):
        await hostile.keys.create_namespace(hostile.workspace.id, name, "test")
    key = await hostile.key()
    extra = f"X-Namespace: {header}\r\n" if header else ""
    answer = await send_raw(hostile.port, (f"GET /api/ai/x?{query} HTTP/1.1\r\nHost: gw\r\n"
                                           f"Authorization: Bearer {key}\r\n{extra}\r\n").encode())
    assert answer.status == 400
    assert json.loads(answer.body)["code"] == "validation_error"
    assert strict.received == []


async def test_one_tenancy_selector_in_header_and_query_agreeing_is_forwarded(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    namespace = await hostile.keys.create_namespace(hostile.workspace.id, "mine", "test")
    key = await hostile.key()
    answer = await send_raw(hostile.port, (
        "GET /api/ai/x?namespace=mine HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {key}\r\nX-Namespace: mine\r\n\r\n").encode())
    assert answer.status == 200
    assert strict.received[-1].all("x-namespace-id") == [namespace.id]


@pytest.mark.parametrize("origin, allowed", [
    ("https://evil.com\\.example.com", False),
    ("https://*.example.com", False),
    ("https://a_b.example.com", False),
    ("https://evil.com%2f.example.com", False),
    ("https://a.example.com", True),
    ("https://a-1.b.example.com", True),
])
def test_wildcard_origin_matches_dns_labels_only(origin: str, allowed: bool) -> None:
    assert is_origin_allowed(origin, ("https://*.example.com",)) is allowed


async def test_wildcard_lookalike_origin_gets_no_allow_header(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    key = await hostile.key()
    for origin in ("https://evil.com\\.example.com", "https://*.example.com"):
        answer = await send_raw(hostile.port, (
            f"GET /api/ai/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            f"Origin: {origin}\r\n\r\n").encode())
        assert answer.header("Access-Control-Allow-Origin") is None, origin


async def test_gateway_owns_cors_headers_on_a_cors_route(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    strict.extra_headers = [("Access-Control-Allow-Origin", "*"),
                            ("Access-Control-Allow-Credentials", "true"),
                            ("Server", "upstream/1.2.3")]
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED)
    key = await gateway.key()
    async with aiohttp.ClientSession() as http:
        headers = {**bearer(key), "Origin": "https://evil.example.org"}
        async with http.get(f"{gateway.url}/api/ai/x", headers=headers) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers
            assert "Access-Control-Allow-Credentials" not in response.headers
        headers["Origin"] = "https://app.example.com"
        async with http.get(f"{gateway.url}/api/ai/x", headers=headers) as response:
            assert response.headers.getall("Access-Control-Allow-Origin") == [
                "https://app.example.com"]
        # a route without cors passes the upstream's own CORS headers on
        async with http.get(f"{gateway.url}/public/x") as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_no_server_banner_from_upstream_or_gateway(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    strict.extra_headers = [("Server", "upstream/1.2.3")]
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED)
    key = await gateway.key()
    async with aiohttp.ClientSession() as http:
        for url, headers in ((f"{gateway.url}/api/ai/x", bearer(key)),
                             (f"{gateway.url}/api/ai/x", {}),
                             (f"{gateway.url}/nowhere", {}),
                             (f"{gateway.admin_url}/healthz", {}),
                             (f"{gateway.admin_url}/admin/v1/workspaces", {})):
            async with http.get(url, headers=headers) as response:
                assert response.headers.getall("Server") == ["gateway"], url
    malformed = b"GET /api/ai/x HTTP/1.1\r\nHost: a\r\nBad\x01: x\r\n\r\n"
    answer = await send_raw(gateway.port, malformed)
    assert answer.status == 400 and answer.header("Server") == "gateway"


async def test_admin_refuses_a_large_body_from_content_length(gateway: Gateway) -> None:
    admin = await gateway.admin_key()
    head = (f"POST /admin/v1/workspaces HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {admin}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 1024 * 1024}\r\n\r\n")
    admin_port = int(gateway.admin_url.rsplit(":", 1)[1])
    answer = await send_raw(admin_port, head.encode() + b"{")
    assert answer.status == 413
    assert answer.header("Content-Type") == "application/problem+json"
    problem = json.loads(answer.body)
    assert problem["code"] == "body_too_large" and problem["request_id"]


async def test_admin_refuses_a_large_chunked_body(gateway: Gateway) -> None:
    admin = await gateway.admin_key()
    body = b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    async with aiohttp.ClientSession() as http:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]
        async with http.post(f"{gateway.admin_url}/admin/v1/workspaces", data=chunks(),
                             headers=bearer(admin)) as response:
            assert response.status == 413
            assert (await response.json())["code"] == "body_too_large"
