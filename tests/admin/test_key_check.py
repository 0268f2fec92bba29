"""The key check API (README "Key check API"), end to end on both key stores:
``POST /admin/v1/keys/verify`` answers what the request path would, spends the key's budget
and counts its usage, and tells a workspace admin nothing about another workspace's keys."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.admin import ROUTES
from gateway.admin.openapi import build_openapi
from tests.admin.conftest import Admin, workspace_admin
from tests.conftest import Gateway, GatewayFactory, bearer, well_formed_unknown_key
from tests.verify.conftest import until_usage

VERIFY = "/admin/v1/keys/verify"
UNKNOWN = {"valid": False, "code": "invalid_api_key", "key_id": None, "workspace_id": None,
           "project_id": None, "principal_id": None, "permissions": [], "ratelimit": None,
           "shadow_refused": None, "credits_remaining": None}


async def verify(admin: Admin, **body: Any) -> Any:
    status, answer = await admin.call("POST", VERIFY, body)
    assert status == 200, answer
    return answer


async def test_a_valid_key_is_ok_and_spends_one_request(
    gateway: Gateway, operator: Admin
) -> None:
    key = await gateway.key(permissions=["write"], rate_limit_override=5)
    record = gateway.created[-1]
    answer = await verify(operator, key=key, permissions=["read", "write"])
    assert answer == {
        "valid": True, "code": "ok", "key_id": record.key_id,
        "workspace_id": gateway.workspace.id, "project_id": gateway.workspace.default_project_id,
        "principal_id": record.principal_id, "permissions": ["write"],
        "ratelimit": {"limit": 5, "remaining": 4, "reset": answer["ratelimit"]["reset"]},
        "shadow_refused": None,
        "credits_remaining": None,
    }
    assert 0 <= answer["ratelimit"]["reset"] <= 60
    assert (await verify(operator, key=key))["ratelimit"]["remaining"] == 3


async def test_refusals_carry_the_request_paths_codes(
    gateway: Gateway, operator: Admin
) -> None:
    key = await gateway.key(permissions=["read"], rate_limit_override=5,
                            scopes=[{"resource_id": "r1", "operations": ["read"]}])
    missing = await verify(operator, key=key, permissions=["write"])
    assert (missing["valid"], missing["code"]) == (False, "insufficient_permissions")
    assert missing["ratelimit"]["remaining"] == 5  # shown, not spent
    assert (await verify(operator, key=key, resource_id="r1", operation="read"))["valid"]
    other = await verify(operator, key=key, resource_id="r2", operation="read")
    assert other["code"] == "resource_forbidden"
    write = await verify(operator, key=key, resource_id="r1", operation="write")
    assert write["code"] == "resource_forbidden"

    record = gateway.created[-1]
    await gateway.keys.disable_key(record.key_id, "test")
    disabled = await verify(operator, key=key)
    assert (disabled["code"], disabled["key_id"], disabled["ratelimit"]) == (
        "disabled_api_key", record.key_id, None)
    await gateway.keys.revoke_key(record.key_id, "test")
    assert (await verify(operator, key=key))["code"] == "revoked_api_key"


@pytest.mark.parametrize("token", ["sk_live_nope", "not a key", "x" * 200, "unknown"],
                         ids=["bad-checksum", "not-a-key", "long", "unknown"])
async def test_unknown_and_malformed_keys_are_invalid(
    gateway: Gateway, operator: Admin, token: str
) -> None:
    key = well_formed_unknown_key() if token == "unknown" else token
    assert await verify(operator, key=key) == UNKNOWN


async def test_a_workspace_admin_learns_nothing_about_other_workspaces(
    gateway: Gateway, operator: Admin, http: aiohttp.ClientSession
) -> None:
    other = await gateway.keys.create_workspace("other", "test")
    _record, foreign = await gateway.keys.create_key(
        other.id, {"name": "k", "rate_limit_override": 5}, "test")
    own = await gateway.key(rate_limit_override=5)
    admin = await workspace_admin(gateway, http, gateway.workspace.id)
    assert await verify(admin, key=foreign) == UNKNOWN
    assert await verify(admin, key=foreign, permissions=["nope"]) == UNKNOWN
    assert (await verify(admin, key=own))["valid"]
    # nothing was spent for the foreign key: the operator sees its whole budget
    assert (await verify(operator, key=foreign))["ratelimit"]["remaining"] == 4


async def test_checks_and_requests_share_the_budget_and_count_usage(
    gateway: Gateway, operator: Admin, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key(permissions=["read"], rate_limit_override=3)
    record = gateway.created[-1]
    assert (await verify(operator, key=key))["ratelimit"]["remaining"] == 2
    async with http.get(gateway.url + "/api/ai/x", headers=bearer(key)) as response:
        assert response.status == 200
        assert response.headers["RateLimit-Remaining"] == "1"
    assert (await verify(operator, key=key))["ratelimit"]["remaining"] == 0
    over = await verify(operator, key=key)
    assert (over["valid"], over["code"], over["ratelimit"]["remaining"]) == (
        False, "rate_limited", 0)
    assert (await verify(operator, key=key, permissions=["admin"]))["code"] == (
        "insufficient_permissions")
    await gateway.keys.revoke_key(record.key_id, "test")
    assert (await verify(operator, key=key))["code"] == "revoked_api_key"
    # two checks and one request admitted, and each refusal, counted as a request would be
    await until_usage(gateway, record.key_id,
                      {"success": 3, "rate_limited": 1, "forbidden": 1, "rejected": 1})
    usage = await operator.ok("GET", f"/admin/v1/keys/{record.key_id}/usage")
    assert (usage["requests"], usage["rate_limited"]) == (3, 1)


async def test_quota_exceeded(make_gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gateway = await make_gateway(plans={"tiny": {"quota": {"day": 2}}}, default_plan="tiny")
    operator = Admin(http, gateway.admin_url, await gateway.admin_key())
    key = await gateway.key()
    assert [(await verify(operator, key=key))["code"] for _ in range(3)] == [
        "ok", "ok", "quota_exceeded"]


async def test_checks_spend_the_budget_kept_by_defaults_algorithm(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """README "Algorithms": with ``sliding_counter`` the check and the proxy spend one counter."""
    gateway = await make_gateway(defaults={"algorithm": "sliding_counter"})
    operator = Admin(http, gateway.admin_url, await gateway.admin_key())
    key = await gateway.key(permissions=["read"], rate_limit_override=2)
    assert (await verify(operator, key=key))["ratelimit"]["remaining"] == 1
    async with http.get(gateway.url + "/api/ai/x", headers=bearer(key)) as response:
        assert response.headers["RateLimit-Remaining"] == "0"
    assert (await verify(operator, key=key))["code"] == "rate_limited"
    budget = gateway.created[-1].key_id
    assert (await gateway.services.limiter.peek(budget, "", 2, 60)).remaining == 2  # no log


async def test_the_address_the_check_is_about(gateway: Gateway, operator: Admin) -> None:
    """README "Key check API": ``ip`` is the client's address; a pinned key without one is
    refused, since the caller's own address is not the client's."""
    pinned = await gateway.key(allowed_ips=["10.0.0.0/8", "2001:db8::/32"])
    assert (await verify(operator, key=pinned, ip="10.1.2.3"))["code"] == "ok"
    assert (await verify(operator, key=pinned, ip="2001:db8::7"))["code"] == "ok"
    refused = await verify(operator, key=pinned, ip="192.0.2.1")
    assert (refused["valid"], refused["code"]) == (False, "ip_not_allowed")
    assert refused["ratelimit"] is not None  # the budget shows, as for the other 403s
    assert (await verify(operator, key=pinned))["code"] == "ip_not_allowed"
    anywhere = await gateway.key()
    assert (await verify(operator, key=anywhere))["code"] == "ok"
    status, problem = await operator.call("POST", VERIFY, {"key": anywhere, "ip": "10.0.0.0/8"})
    assert status == 400 and problem["errors"] == {"ip": "'10.0.0.0/8' is not an IP address"}


async def test_a_shadow_keys_check_is_ok_with_what_it_would_refuse(
    gateway: Gateway, operator: Admin
) -> None:
    key = await gateway.key(enforcement="shadow", allowed_ips=["10.0.0.0/8"],
                            permissions=["read"], rate_limit_override=1)
    answer = await verify(operator, key=key, permissions=["write"], ip="192.0.2.1")
    assert (answer["valid"], answer["code"], answer["shadow_refused"]) == (
        True, "ok", "insufficient_permissions")
    answer = await verify(operator, key=key, ip="10.0.0.1")  # its own limit of 1 is spent
    assert (answer["valid"], answer["shadow_refused"]) == (True, "rate_limited")
    assert answer["ratelimit"]["limit"] == 1  # its own (shadow) budget shows
    metrics = gateway.services.metrics
    assert metrics.sample_value("gateway_shadow_refusals_total", {"rule": "rate_limited"}) == 1
    assert (await verify(operator, key=key, ip="10.0.0.1"))["shadow_refused"] == "rate_limited"


async def test_a_shadow_quota_in_checks(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(plans={"tiny": {"quota": {"day": 2, "shadow": True}}},
                                 default_plan="tiny")
    operator = Admin(http, gateway.admin_url, await gateway.admin_key())
    key = await gateway.key()
    answers = [await verify(operator, key=key) for _ in range(3)]
    assert [(a["code"], a["shadow_refused"]) for a in answers] == [
        ("ok", None), ("ok", None), ("ok", "quota_exceeded")]


@pytest.mark.parametrize(("body", "errors"), [
    ({}, {"key": "is required"}),
    ({"key": 7}, {"key": "must be a string of 1 to 512 characters"}),
    ({"key": "k", "permissions": "read"}, {"permissions": "must be a list of permission strings "
                                                          "([A-Za-z0-9_.:*-], 1-100 chars)"}),
    ({"key": "k", "resource_id": "r1"}, {"resource_id": "needs operation too"}),
    ({"key": "k", "operation": "read"}, {"operation": "needs resource_id too"}),
    ({"key": "k", "operation": "re ad", "resource_id": ""},
     {"operation": "must be an operation name ([A-Za-z0-9_.:*-], 1-100 chars)",
      "resource_id": "must be a string of 1 to 200 characters"}),
    ({"key": "k", "scopes": []}, {"scopes": "unknown field"}),
    ([], {"body": "must be a JSON object"}),
], ids=["empty", "key-not-string", "permissions-not-list", "resource-alone", "operation-alone",
        "bad-values", "unknown-field", "not-object"])
async def test_malformed_bodies_are_400_naming_each_field(
    gateway: Gateway, operator: Admin, body: Any, errors: dict[str, str]
) -> None:
    status, problem = await operator.call("POST", VERIFY, body)
    assert status == 400, problem
    assert (problem["code"], problem["errors"]) == ("validation_error", errors)


async def test_body_not_json_and_key_never_echoed(gateway: Gateway, operator: Admin) -> None:
    status, problem = await operator.call("POST", VERIFY, data=b"{not json")
    assert (status, problem["code"]) == (400, "bad_request")
    secret = "sk_live_" + "s" * 600
    status, problem = await operator.call("POST", VERIFY, {"key": secret})
    assert status == 400 and secret not in str(problem)


def test_documented_in_openapi() -> None:
    operation = build_openapi(ROUTES)["paths"][VERIFY]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/KeyCheckAsk"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/KeyCheck"}
    assert {"400", "401", "403"} <= set(operation["responses"])
