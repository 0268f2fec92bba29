"""Members, keys owned by members, the seed fields and disable/enable, end to end: the admin API
on both key stores (``tests/admin/conftest.py``), and the proxy in front of the real echo
upstream (README "Members and roles", "Disable and enable")."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.admin.conftest import Admin, workspace_admin
from tests.admin.test_lifecycle import create, proxy_status
from tests.conftest import Gateway, bearer

SEED = "/admin/v1/organizations/users/{}/api-keys"


def members_path(gateway: Gateway) -> str:
    return f"/admin/v1/workspaces/{gateway.workspace.id}/members"


async def add(operator: Admin, gateway: Gateway, email: str, role: str = "member") -> Any:
    return await operator.ok("POST", members_path(gateway), {"email": email, "role": role})


async def key_rows(gateway: Gateway) -> int:
    page = await gateway.keys.list_keys(gateway.workspace.id, include_revoked=True)
    return page.total


# --- members --------------------------------------------------------------------------------


async def test_members_crud(gateway: Gateway, operator: Admin) -> None:
    path = members_path(gateway)
    alice = await add(operator, gateway, "Alice@Example.com", "admin")
    assert set(alice) == {"user_id", "email", "role", "workspace_id", "created_at"}
    assert alice["user_id"].startswith("usr_") and alice["email"] == "alice@example.com"
    assert alice["role"] == "admin" and alice["workspace_id"] == gateway.workspace.id
    bob = await add(operator, gateway, "bob@example.com", "viewer")
    listed = await operator.ok("GET", path)
    assert listed == {"results": [alice, bob], "total": 2}  # oldest first
    changed = await operator.ok("PATCH", f"{path}/{bob['user_id']}", {"role": "owner"})
    assert changed == {**bob, "role": "owner"}
    removed = await operator.ok("DELETE", f"{path}/{alice['user_id']}")
    assert removed == {**alice, "revoked_keys": []}
    assert (await operator.ok("GET", path))["results"] == [changed]


async def test_duplicate_email_is_a_conflict_whatever_its_case(
    gateway: Gateway, operator: Admin
) -> None:
    await add(operator, gateway, "dup@example.com")
    status, body = await operator.call("POST", members_path(gateway),
                                       {"email": "DUP@example.com", "role": "viewer"})
    assert status == 409 and body["code"] == "conflict"
    assert (await operator.ok("GET", members_path(gateway)))["total"] == 1


async def test_bad_member_input_names_the_field_and_changes_nothing(
    gateway: Gateway, operator: Admin
) -> None:
    path = members_path(gateway)
    for body, field in (({"email": "a@example.com", "role": "boss"}, "role"),
                        ({"email": "not-an-email", "role": "member"}, "email"),
                        ({"role": "member"}, "email"),
                        ({"email": "a@example.com", "role": "member", "x": 1}, "x")):
        status, problem = await operator.call("POST", path, body)
        assert status == 400 and problem["code"] == "validation_error", problem
        assert field in problem["errors"]
    assert (await operator.ok("GET", path))["total"] == 0
    alice = await add(operator, gateway, "a@example.com")
    status, problem = await operator.call("PATCH", f"{path}/{alice['user_id']}", {"role": "god"})
    assert status == 400 and "role" in problem["errors"]
    assert (await operator.ok("GET", path))["results"] == [alice]
    status, problem = await operator.call("PATCH", f"{path}/usr_nobody", {"role": "viewer"})
    assert status == 404 and problem["code"] == "member_not_found"
    status, problem = await operator.call("DELETE", f"{path}/usr_nobody")
    assert status == 404 and problem["code"] == "member_not_found"


async def test_members_of_another_workspace_are_invisible(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    alice = await add(operator, gateway, "a@example.com")
    other = await operator.ok("POST", "/admin/v1/workspaces", {"name": "other"})
    outsider = await workspace_admin(gateway, http, other["id"])
    path = members_path(gateway)
    for method, url, body in (("GET", path, None),
                              ("POST", path, {"email": "x@example.com", "role": "member"}),
                              ("PATCH", f"{path}/{alice['user_id']}", {"role": "viewer"}),
                              ("DELETE", f"{path}/{alice['user_id']}", None)):
        status, problem = await outsider.call(method, url, body)
        assert status == 404 and problem["code"] == "not_found", (method, url)
    status, problem = await outsider.call(
        "PATCH", f"/admin/v1/workspaces/{other['id']}/members/{alice['user_id']}",
        {"role": "viewer"})
    assert status == 404 and problem["code"] == "member_not_found"
    assert (await operator.ok("GET", path))["results"] == [alice]


# --- keys owned by members ------------------------------------------------------------------


async def test_key_for_a_member_by_email_acts_as_the_member(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    alice = await add(operator, gateway, "alice@example.com")
    key = await create(operator, gateway, user_email="ALICE@example.com")
    assert key["user_id"] == alice["user_id"] == key["principal_id"]
    assert key["organization_id"] == gateway.workspace.id
    assert str(key["internal_id"]).startswith("int_")
    spoofed = {**bearer(str(key["key"])), "x-principal-ID": "usr_admin"}
    async with http.get(gateway.url + "/api/ai/models", headers=spoofed) as r:
        assert r.status == 200
    received = gateway.upstream.log.last
    assert received.all("X-Principal-Id") == [alice["user_id"]]  # the client's copy dropped
    assert received.all("X-User-Id") == [alice["user_id"]]


async def test_service_key_principal_is_stable_across_rotation(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    key = await create(operator, gateway, user_id="ci@example.com")
    assert key["principal_id"] == "svc_" + str(key["key_id"]).removeprefix("key_")
    rotated = await operator.ok("POST", f"/admin/v1/keys/{key['key_id']}/rotate",
                                {"grace_period_seconds": 0})
    assert rotated["principal_id"] == key["principal_id"]
    assert rotated["internal_id"] != key["internal_id"]
    async with http.get(gateway.url + "/api/ai/models", headers=bearer(rotated["key"])) as r:
        assert r.status == 200
    assert gateway.upstream.log.last.all("X-Principal-Id") == [key["principal_id"]]
    listed = await operator.ok("GET", f"/admin/v1/workspaces/{gateway.workspace.id}/keys")
    assert [k["principal_id"] for k in listed["results"]] == [key["principal_id"]]


async def test_unknown_member_is_404_and_creates_nothing(gateway: Gateway, operator: Admin) -> None:
    for body in ({"user_email": "ghost@example.com"}, {"user_id": "usr_ghost"}):
        status, problem = await operator.call(
            "POST", f"/admin/v1/workspaces/{gateway.workspace.id}/keys", {"name": "k", **body})
        assert status == 404 and problem["code"] == "member_not_found", problem
    status, problem = await operator.call(
        "POST", f"/admin/v1/workspaces/{gateway.workspace.id}/keys",
        {"name": "k", "user_email": "a@example.com", "user_id": "x"})
    assert status == 400 and "user_email" in problem["errors"]
    status, problem = await operator.call(
        "POST", SEED.format("ghost@example.com"), {"name": "k"},
        params={"workspace_id": gateway.workspace.id})
    assert status == 404 and problem["code"] == "member_not_found"
    assert await key_rows(gateway) == 0


async def test_seed_path_creates_a_key_for_the_member(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    alice = await add(operator, gateway, "alice@example.com")
    body = {"name": "backend-service", "permissions": ["read"], "rate_limit_override": 120}
    status, problem = await operator.call("POST", SEED.format("alice@example.com"), body)
    assert status == 400 and "workspace_id" in problem["errors"]  # operators name it
    created = await operator.ok("POST", SEED.format("alice@example.com"), body,
                                params={"workspace_id": gateway.workspace.id})
    assert created["user_id"] == alice["user_id"] and created["key"].startswith("sk_live_")
    assert created["rate_limit_override"] == 120
    ws_admin = await workspace_admin(gateway, http, gateway.workspace.id)
    own = await ws_admin.ok("POST", SEED.format("alice@example.com"), body)
    assert own["user_id"] == alice["user_id"] and own["organization_id"] == gateway.workspace.id
    status, problem = await ws_admin.call("POST", SEED.format("alice@example.com"), body,
                                          params={"workspace_id": "ws_other"})
    assert status == 404
    status, problem = await ws_admin.call("POST", SEED.format("alice@example.com"),
                                          {**body, "user_id": "x"})
    assert status == 400 and "user_id" in problem["errors"]
    assert await key_rows(gateway) == 3  # the two member keys and the workspace admin's


async def test_removing_a_member_revokes_its_keys(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    alice = await add(operator, gateway, "alice@example.com")
    bob = await add(operator, gateway, "bob@example.com")
    keys = [await create(operator, gateway, user_email="alice@example.com") for _ in range(2)]
    bobs = await create(operator, gateway, user_email="bob@example.com")
    await operator.ok("POST", f"/admin/v1/keys/{keys[1]['key_id']}/disable")
    for key in (*keys, bobs):  # cached by the proxy
        await proxy_status(gateway, http, str(key["key"]))
    removed = await operator.ok("DELETE", f"{members_path(gateway)}/{alice['user_id']}")
    assert sorted(removed["revoked_keys"]) == sorted(k["key_id"] for k in keys)
    for key in keys:
        assert await proxy_status(gateway, http, str(key["key"])) == (401, "revoked_api_key")
        shown = await operator.ok("GET", f"/admin/v1/keys/{key['key_id']}")
        assert shown["status"] == "revoked"
        assert shown["revoked_by"] == (await gateway.services.store.get_key_by_hash(
            gateway.services.hasher(operator.token or ""))).key_id
    assert await proxy_status(gateway, http, str(bobs["key"])) == (200, None)
    audit = await operator.ok("GET", "/admin/v1/audit",
                              params={"workspace_id": gateway.workspace.id})
    actions = [(e["action"], e["target"]) for e in audit["results"]]
    assert ("member.remove", alice["user_id"]) in actions
    assert all(("key.revoke", k["key_id"]) in actions for k in keys)
    assert (await operator.ok("GET", members_path(gateway)))["results"] == [bob]


# --- disable / enable -----------------------------------------------------------------------


async def test_disable_and_enable(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    key = await create(operator, gateway)
    plaintext, key_path = str(key["key"]), f"/admin/v1/keys/{key['key_id']}"
    assert await proxy_status(gateway, http, plaintext) == (200, None)
    disabled = await operator.ok("POST", key_path + "/disable")
    assert disabled["status"] == "disabled" and disabled["disabled_at"] is not None
    async with http.get(gateway.url + "/api/ai/models", headers=bearer(plaintext)) as r:
        problem = await r.json(content_type=None)
        assert r.status == 401 and problem["code"] == "disabled_api_key"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.headers["Content-Type"].startswith("application/problem+json")
    assert (await operator.ok("POST", key_path + "/disable"))["status"] == "disabled"
    patched = await operator.ok("PATCH", key_path, {"name": "renamed while disabled"})
    assert patched["status"] == "disabled"
    status, problem = await operator.call("POST", key_path + "/rotate", {})
    assert status == 409
    enabled = await operator.ok("POST", key_path + "/enable")
    assert enabled["status"] == "active" and enabled["disabled_at"] is None
    assert await proxy_status(gateway, http, plaintext) == (200, None)
    audit = await operator.ok("GET", "/admin/v1/audit",
                              params={"workspace_id": gateway.workspace.id})
    actions = [e["action"] for e in audit["results"] if e["target"] == key["key_id"]]
    assert actions[:3] == ["key.enable", "key.update", "key.disable"]


async def test_a_revoked_key_cannot_be_enabled_or_disabled(
    gateway: Gateway, operator: Admin
) -> None:
    key = await create(operator, gateway)
    key_path = f"/admin/v1/keys/{key['key_id']}"
    await operator.ok("POST", key_path + "/disable")
    await operator.ok("DELETE", key_path)
    for action in ("enable", "disable"):
        status, problem = await operator.call("POST", f"{key_path}/{action}")
        assert status == 409 and problem["code"] == "conflict"
    assert (await operator.ok("GET", key_path))["status"] == "revoked"


async def test_disable_in_another_workspace_is_404(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    key = await create(operator, gateway)
    other = await operator.ok("POST", "/admin/v1/workspaces", {"name": "other"})
    outsider = await workspace_admin(gateway, http, other["id"])
    for action in ("disable", "enable"):
        status, _ = await outsider.call("POST", f"/admin/v1/keys/{key['key_id']}/{action}")
        assert status == 404
    assert (await operator.ok("GET", f"/admin/v1/keys/{key['key_id']}"))["status"] == "active"
