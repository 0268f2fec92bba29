"""Forward auth (README "Forward auth"), end to end on both backends: a real gateway with a
``mode: verify`` route is asked about original requests the way nginx's ``auth_request`` and
Traefik's ``forwardAuth`` ask, and answers as the matched route would have, without forwarding
anything to its upstream."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, bearer, well_formed_unknown_key
from tests.verify.conftest import VERIFY_PATH, check, until_usage, verify_routes


async def test_allowed_request_answers_200_with_identity_and_limits(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"])
    record = gateway.created[-1]
    answer = await check(http, gateway, "GET", "/api/ai/models?x=1", key,
                         {"X-Request-Id": "req-123"})
    assert answer.status == 200, answer.body
    assert answer.body == b""
    headers = answer.headers
    assert headers["X-Workspace-Id"] == gateway.workspace.id
    assert headers["X-Project-Id"] == gateway.workspace.default_project_id
    assert headers["X-Api-Key-Id"] == record.key_id
    assert headers["X-Api-Key-Permissions"] == "read"
    assert headers["X-Principal-Id"] == record.principal_id
    assert headers["X-Request-Id"] == "req-123"
    assert headers.getall("X-Request-Id") == ["req-123"]  # once, not twice
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                 "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert name in headers, name
    assert "X-Forwarded-For" not in headers  # the ingress sets its own
    assert gateway.upstream.log.received == []  # nothing was forwarded


async def test_traefik_headers_are_read_too(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"])
    headers = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/api/ai/chat",
               "X-Forwarded-Host": "api.example.com", "X-Forwarded-Proto": "https",
               **bearer(key)}
    async with http.get(gateway.url + VERIFY_PATH, headers=headers) as response:
        assert response.status == 403  # POST on models needs write
        assert (await response.json())["code"] == "insufficient_permissions"
    headers["X-Forwarded-Method"] = "GET"
    async with http.get(gateway.url + VERIFY_PATH, headers=headers) as response:
        assert response.status == 200


async def test_x_original_headers_win_over_x_forwarded(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"])
    answer = await check(http, gateway, "POST", "/api/ai/x", key,
                         {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/x"})
    assert (answer.status, answer.code()) == (403, "insufficient_permissions")


@pytest.mark.parametrize("headers", [
    {},
    {"X-Original-Method": "GET"},
    {"X-Original-URI": "/api/ai/x"},
    {"X-Forwarded-Uri": "/api/ai/x"},
    {"X-Original-Method": "GET", "X-Original-URI": ""},
], ids=["none", "method-only", "uri-only", "forwarded-uri-only", "empty-uri"])
async def test_missing_original_request_is_400(
    http: aiohttp.ClientSession, gateway: Gateway, headers: dict[str, str]
) -> None:
    key = await gateway.key()
    async with http.get(gateway.url + VERIFY_PATH, headers={**headers, **bearer(key)}) as r:
        body = await r.json()
        assert r.status == 400, body
        assert r.content_type == "application/problem+json"
    assert body["code"] == "bad_request"
    assert "X-Original-Method and X-Original-URI" in body["detail"]


@pytest.mark.parametrize(("method", "uri", "detail"), [
    ("GET", "api/ai/x", "X-Original-URI must be a path"),
    ("GET", "/api/ai/a b", "X-Original-URI must be a path"),
    ("GE T", "/api/ai/x", "X-Original-Method must be an HTTP method"),
    ("GET", "/api/ai/%2e%2e/%2e%2e/admin", "dot segments"),
    ("GET", "/api/ai/x%2Fy", "encoded slashes"),
    ("GET", "/api/ai/x;a=b", "';' parameters"),
])
async def test_bad_original_request_is_400(
    http: aiohttp.ClientSession, gateway: Gateway, method: str, uri: str, detail: str
) -> None:
    key = await gateway.key()
    answer = await check(http, gateway, method, uri, key)
    assert answer.status == 400, answer.body
    assert answer.code() == "bad_request"
    assert detail in answer.body.decode()


async def test_two_original_uris_are_400(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    key = await gateway.key()
    headers = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/ai/a"),
               ("X-Original-URI", "/public/b"), ("Authorization", f"Bearer {key}")]
    async with http.get(gateway.url + VERIFY_PATH, headers=headers) as response:
        assert response.status == 400
        assert "at most one X-Original-URI" in (await response.json())["detail"]


async def test_refusals_are_the_matched_routes(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"])
    missing = await check(http, gateway, "GET", "/api/ai/x")
    assert (missing.status, missing.code()) == (401, "missing_api_key")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await check(http, gateway, "GET", "/api/ai/x", well_formed_unknown_key())
    assert (unknown.status, unknown.code()) == (401, "invalid_api_key")
    wrong_method = await check(http, gateway, "POST", "/api/ai/x", key)
    assert (wrong_method.status, wrong_method.code()) == (403, "insufficient_permissions")
    assert "'write'" in wrong_method.body.decode()
    assert "RateLimit-Remaining" in wrong_method.headers  # a known key's limits, not spent
    no_route = await check(http, gateway, "GET", "/nowhere/x", key)
    assert (no_route.status, no_route.code()) == (404, "route_not_found")
    # the verify route is not a route an original request can match
    itself = await check(http, gateway, "GET", VERIFY_PATH + "x", key)
    assert (itself.status, itself.code()) == (404, "route_not_found")
    assert gateway.upstream.log.received == []


async def test_revoked_key_is_refused(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    key = await gateway.key()
    await gateway.keys.revoke_key(gateway.created[-1].key_id, "test")
    answer = await check(http, gateway, "GET", "/api/ai/x", key)
    assert (answer.status, answer.code()) == (401, "revoked_api_key")


async def test_scopes_and_tenancy_of_the_original_request(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(scopes=[{"resource_id": "r1", "operations": ["read"]}])
    allowed = await check(http, gateway, "GET", "/v1/retrievers/r1/search", key)
    assert allowed.status == 200, allowed.body
    other = await check(http, gateway, "GET", "/v1/retrievers/r2/search", key)
    assert (other.status, other.code()) == (403, "resource_forbidden")
    namespace = await gateway.keys.create_namespace(gateway.workspace.id, "docs", "test")
    by_query = await check(http, gateway, "GET", "/v1/retrievers/r1/x?namespace=docs", key)
    assert by_query.status == 200, by_query.body
    assert by_query.headers["X-Namespace-Id"] == namespace.id
    assert by_query.headers["X-Namespace"] == "docs"
    by_header = await check(http, gateway, "GET", "/v1/retrievers/r1/x", key,
                            {"X-Namespace": namespace.id})
    assert by_header.headers["X-Namespace"] == "docs"
    unknown = await check(http, gateway, "GET", "/v1/retrievers/r1/x?namespace=nope", key)
    assert (unknown.status, unknown.code()) == (404, "namespace_not_found")
    project = await check(http, gateway, "GET", "/v1/retrievers/r1/x", key,
                          {"X-Project-Id": "prj_nope"})
    assert (project.status, project.code()) == (404, "project_not_found")


async def test_origin_of_the_original_request(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(allowed_origins=["https://app.example.com"])
    ok = await check(http, gateway, "GET", "/api/ai/x", key, {"Origin": "https://app.example.com"})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    refused = await check(http, gateway, "GET", "/api/ai/x", key,
                          {"Origin": "https://evil.example.org"})
    assert (refused.status, refused.code()) == (403, "origin_not_allowed")


async def test_preflight_is_answered_without_a_key(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    allowed = await check(http, gateway, "OPTIONS", "/api/ai/x", None, preflight)
    assert allowed.status == 204, allowed.body
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST"
    no_cors = await check(http, gateway, "OPTIONS", "/v1/retrievers/r1/x", None, preflight)
    assert (no_cors.status, no_cors.code()) == (403, "origin_not_allowed")


async def test_route_without_auth_answers_200_without_identity(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    answer = await check(http, gateway, "GET", "/public/x")
    assert answer.status == 200
    assert "X-Request-Id" in answer.headers and "X-Api-Key-Id" not in answer.headers


async def test_checks_spend_the_keys_budget_like_requests(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"], rate_limit_override=3)
    first = await check(http, gateway, "GET", "/api/ai/x", key)
    assert (first.status, first.headers["RateLimit-Remaining"]) == (200, "2")
    async with http.get(gateway.url + "/api/ai/x", headers=bearer(key)) as response:
        assert response.status == 200  # a proxied request spends from the same budget
        assert response.headers["RateLimit-Remaining"] == "1"
    second = await check(http, gateway, "GET", "/api/ai/x", key)
    assert (second.status, second.headers["RateLimit-Remaining"]) == (200, "0")
    over = await check(http, gateway, "GET", "/api/ai/x", key)
    assert (over.status, over.code()) == (429, "rate_limited")
    assert int(over.headers["Retry-After"]) >= 1
    assert over.headers["RateLimit-Remaining"] == "0"


async def test_a_check_gives_its_concurrency_slot_back_at_once(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"], concurrency_limit=1)
    for _ in range(5):
        answer = await check(http, gateway, "GET", "/api/ai/x", key)
        assert answer.status == 200, answer.body


async def test_check_with_a_body_and_keep_alive(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    """An ingress that sends the original body along gets the same answer, and its connection
    stays usable for the next check."""
    key = await gateway.key(permissions=["read", "write"])
    headers = {"X-Original-Method": "POST", "X-Original-URI": "/api/ai/x", **bearer(key)}
    for _ in range(3):
        async with http.post(gateway.url + VERIFY_PATH, data=b"x" * 1000,
                             headers=headers) as response:
            assert response.status == 200
            assert await response.read() == b""


async def test_checks_count_usage_like_requests(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    key = await gateway.key(permissions=["read"], rate_limit_override=2)
    record = gateway.created[-1]
    statuses = [(await check(http, gateway, method, "/api/ai/x", key)).status
                for method in ("GET", "POST", "GET", "GET")]
    assert statuses == [200, 403, 200, 429]
    await gateway.keys.revoke_key(record.key_id, "test")
    assert (await check(http, gateway, "GET", "/api/ai/x", key)).status == 401
    await until_usage(gateway, record.key_id,
                      {"success": 2, "forbidden": 1, "rate_limited": 1, "rejected": 1})


async def test_debug_decisions_name_the_checked_routes_stages(
    make_gateway: GatewayFactory, upstream: Upstream, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With debug on (README "Metrics and logs"), a check logs the matched route's stages and
    its own verdict; the answer is ``verify``'s."""
    with caplog.at_level(logging.DEBUG, logger="gateway.decision"):
        gateway = await make_gateway(verify_routes(upstream.url))
        key = await gateway.key(permissions=["read"])
        answer = await check(http, gateway, "GET", "/api/ai/x", key, {"X-Request-Id": "dbg-1"})
        assert answer.status == 200
    decisions = [(r.stage, r.decision) for r in caplog.records  # type: ignore[attr-defined]
                 if getattr(r, "request_id", None) == "dbg-1"]
    assert decisions == [
        ("request_id", "pass"), ("match", "pass"), ("cors", "pass"), ("failed_auth", "pass"),
        ("authenticate", "pass"), ("authorize", "pass"), ("tenancy", "pass"),
        ("rate_limit", "pass"), ("verify", "answered 200"), ("forward_auth", "answered 200"),
    ]


async def test_a_check_spends_the_keys_credits(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    """README "Credits": a forward-auth check spends as the request it describes would."""
    key = await gateway.key(permissions=["read"], credits={"remaining": 2})
    answers = [await check(http, gateway, "GET", "/api/ai/models", key) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert [a.headers["X-Credits-Remaining"] for a in answers] == ["1", "0", "0"]
    assert answers[2].code() == "credits_exhausted" and "Retry-After" not in answers[2].headers
