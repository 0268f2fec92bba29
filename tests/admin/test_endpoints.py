"""Every endpoint of SPEC §6 with the seed docs' field names and shapes."""

from __future__ import annotations

from tests.admin.conftest import Admin
from tests.conftest import Gateway, bearer, raw_request

KEY_FIELDS = {
    "key_id", "name", "description", "workspace_id", "project_id", "user_id", "key_type",
    "environment", "key_prefix", "hint", "permissions", "scopes",
    "allowed_origins", "rate_limit_override", "concurrency_limit", "status", "expires_at",
    "last_used_at", "created_at", "created_by", "revoked_at", "revoked_by", "rotated_from",
    "organization_id", "internal_id", "principal_id", "disabled_at",
    "subscription_id", "allowed_ips", "enforcement", "credits",
}


async def test_workspaces_projects_namespaces(operator: Admin) -> None:
    ws = await operator.ok("POST", "/admin/v1/workspaces", {"name": "beta"})
    assert set(ws) == {"id", "name", "default_project_id", "created_at"}
    assert ws["name"] == "beta" and ws["id"].startswith("ws_")
    listed = await operator.ok("GET", "/admin/v1/workspaces")
    assert ws in listed["results"] and listed["total"] == len(listed["results"])
    for plural in ("projects", "namespaces"):
        made = await operator.ok("POST", f"/admin/v1/workspaces/{ws['id']}/{plural}",
                                 {"name": "prod"})
        assert set(made) == {"id", "name", "workspace_id", "created_at"}
        assert made["workspace_id"] == ws["id"]
        page = await operator.ok("GET", f"/admin/v1/workspaces/{ws['id']}/{plural}")
        assert made in page["results"] and page["total"] == len(page["results"])
    projects = await operator.ok("GET", f"/admin/v1/workspaces/{ws['id']}/projects")
    assert ws["default_project_id"] in {p["id"] for p in projects["results"]}


async def test_create_returns_the_plaintext_once(gateway: Gateway, operator: Admin) -> None:
    path = f"/admin/v1/workspaces/{gateway.workspace.id}/keys"
    body = {"name": "backend-service", "description": "ingestion", "user_id": "a@example.com",
            "permissions": ["read", "write"], "rate_limit_override": 120,
            "scopes": [{"resource_id": "r1", "operations": ["read"]}],
            "allowed_origins": ["https://*.example.com"]}
    created = await operator.ok("POST", path, body)
    assert set(created) == KEY_FIELDS | {"key"}
    plaintext = created["key"]
    assert plaintext.startswith("sk_live_") and len(plaintext) == len("sk_live_") + 26 + 6
    assert created["hint"] == plaintext[-4:] and plaintext.startswith(created["key_prefix"])
    assert created["status"] == "active"
    assert created["project_id"] == gateway.workspace.default_project_id
    assert {k: created[k] for k in body} == body
    shown = await operator.ok("GET", f"/admin/v1/keys/{created['key_id']}")
    listed = await operator.ok("GET", path)
    assert set(shown) == KEY_FIELDS
    assert shown == {k: v for k, v in created.items() if k != "key"}
    for seen in (shown, listed):
        assert plaintext not in str(seen) and "'key':" not in str(seen)


async def test_list_filters_and_include_revoked(gateway: Gateway, operator: Admin) -> None:
    path = f"/admin/v1/workspaces/{gateway.workspace.id}/keys"
    alice = await operator.ok("POST", path, {"name": "a", "user_id": "alice"})
    scoped = await operator.ok("POST", path, {
        "name": "b", "user_id": "bob", "scopes": [{"resource_id": "r1", "operations": ["read"]}]})
    other = await operator.ok("POST", path, {
        "name": "c", "user_id": "bob", "scopes": [{"resource_id": "r2", "operations": ["read"]}]})
    await operator.ok("DELETE", f"/admin/v1/keys/{alice['key_id']}")

    async def ids(**params: str) -> set[str]:
        page = await operator.ok("GET", path, params=params)
        assert page["total"] == len(page["results"]) and page["next_cursor"] is None
        return {k["key_id"] for k in page["results"]}

    assert await ids() == {scoped["key_id"], other["key_id"]}
    assert await ids(include_revoked="true") == {alice["key_id"], scoped["key_id"],
                                                  other["key_id"]}
    assert await ids(user_id="bob") == {scoped["key_id"], other["key_id"]}
    assert await ids(user_id="alice", include_revoked="true") == {alice["key_id"]}
    # resource_id: keys whose scopes name it, or that have no scopes (= every resource)
    unscoped = await operator.ok("POST", path, {"name": "d"})
    assert await ids(resource_id="r1") == {scoped["key_id"], unscoped["key_id"]}


async def test_pagination_walks_every_key_once_in_a_stable_order(
    gateway: Gateway, operator: Admin
) -> None:
    path = f"/admin/v1/workspaces/{gateway.workspace.id}/keys"
    made = [(await operator.ok("POST", path, {"name": f"k{i}"}))["key_id"] for i in range(25)]
    seen: list[str] = []
    pages = 0
    params = {"limit": "10"}
    while True:
        page = await operator.ok("GET", path, params=params)
        pages += 1
        assert page["total"] == 25 and len(page["results"]) <= 10
        seen += [k["key_id"] for k in page["results"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": "10", "cursor": page["next_cursor"]}
    assert pages == 3 and seen == made  # creation order, each key exactly once
    again = await operator.ok("GET", path, params={"limit": "25"})
    assert [k["key_id"] for k in again["results"]] == made and again["next_cursor"] is None


async def test_health_ready_metrics_need_no_key(operator: Admin) -> None:
    anonymous = Admin(operator.http, operator.base, None)
    assert await anonymous.call("GET", "/healthz") == (200, {"status": "ok"})
    assert (await anonymous.call("GET", "/readyz"))[0] == 200
    async with operator.http.get(f"{operator.base}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"


async def test_a_store_outage_is_store_unavailable(gateway: Gateway, operator: Admin) -> None:
    await gateway.services.store.close()  # the key store goes away
    status, body = await operator.call("GET", "/admin/v1/workspaces")
    assert status == 503 and body["code"] == "store_unavailable"
    assert body["detail"] == "the key store is unavailable"  # never the driver's message


async def test_unknown_path_and_method(operator: Admin) -> None:
    status, body = await operator.call("GET", "/admin/v1/nope")
    assert status == 404 and body["code"] == "not_found"
    async with operator.http.put(f"{operator.base}/admin/v1/workspaces",
                                 headers={"Authorization": f"Bearer {operator.token}"}) as r:
        assert r.status == 405 and "GET" in r.headers["Allow"]


async def test_no_key_hash_in_any_answer_or_schema(gateway: Gateway, operator: Admin) -> None:
    ws = gateway.workspace.id
    created = await operator.ok("POST", f"/admin/v1/workspaces/{ws}/keys", {"name": "h"})
    hashed = gateway.services.hasher(created["key"])
    key = f"/admin/v1/keys/{created['key_id']}"
    answers = [created, await operator.ok("GET", key),
               await operator.ok("GET", f"/admin/v1/workspaces/{ws}/keys"),
               await operator.ok("PATCH", key, {"name": "h2"}),
               await operator.ok("POST", f"{key}/rotate", {"grace_period_seconds": 60}),
               await operator.ok("DELETE", key)]
    for answer in answers:
        assert "key_hash" not in str(answer) and hashed not in str(answer)
    assert "key_hash" not in str(await operator.ok("GET", "/admin/v1/openapi.json"))


async def test_an_unknown_expectation_is_ignored_and_100_continue_answered(
    gateway: Gateway, operator: Admin
) -> None:
    """aiohttp would answer any Expect other than 100-continue with a bare 417 before
    authentication; the admin API answers as if it were absent (RFC 9110 §10.1.1 allows it)."""
    port = int(gateway.admin_url.rsplit(":", 1)[1])
    answer = await raw_request(port, "GET /admin/v1/workspaces HTTP/1.1\nHost: x\nExpect: )wzwW\n")
    assert answer.status == 401 and answer.header("Content-Type") == "application/problem+json"
    async with operator.http.post(
        gateway.admin_url + "/admin/v1/workspaces", json={"name": "continued"}, expect100=True,
        headers=bearer(str(operator.token)),
    ) as response:
        assert response.status == 201
