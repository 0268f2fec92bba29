"""The key lifecycle seen through the proxy: revoke, rotate, patch, expiry, per-user limit."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp

from gateway.keys.model import utcnow
from tests.admin.conftest import Admin
from tests.conftest import Gateway, bearer


async def proxy_status(gateway: Gateway, http: aiohttp.ClientSession, key: str,
                       path: str = "/api/ai/models") -> tuple[int, str | None]:
    async with http.get(gateway.url + path, headers=bearer(key)) as r:
        body = await r.json(content_type=None) if r.status != 200 else {}
        return r.status, body.get("code")


async def create(operator: Admin, gateway: Gateway, **fields: object) -> dict[str, object]:
    body = {"name": "k", "permissions": ["read", "write"], **fields}
    result: dict[str, object] = await operator.ok(
        "POST", f"/admin/v1/workspaces/{gateway.workspace.id}/keys", body)
    return result


async def test_delete_revokes_at_once(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    created = await create(operator, gateway)
    key = str(created["key"])
    assert await proxy_status(gateway, http, key) == (200, None)  # now cached
    revoked = await operator.ok("DELETE", f"/admin/v1/keys/{created['key_id']}")
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert revoked["revoked_by"] == (await operator_key_id(gateway))
    assert await proxy_status(gateway, http, key) == (401, "revoked_api_key")
    again = await operator.ok("DELETE", f"/admin/v1/keys/{created['key_id']}")
    assert again == revoked  # idempotent


async def operator_key_id(gateway: Gateway) -> str:
    page = await gateway.keys.list_keys(None, key_type="admin")
    return page.results[0].key_id


async def test_rotate_without_grace_revokes_the_old_key_now(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    created = await create(operator, gateway, user_id="u@example.com")
    old_key = str(created["key"])
    assert (await proxy_status(gateway, http, old_key))[0] == 200
    new = await operator.ok("POST", f"/admin/v1/keys/{created['key_id']}/rotate",
                            {"grace_period_seconds": 0})
    assert new["key"] != old_key and new["key_id"] != created["key_id"]
    assert new["rotated_from"] == created["key_id"] and new["status"] == "active"
    assert {k: new[k] for k in ("name", "permissions", "user_id", "workspace_id")} == {
        k: created[k] for k in ("name", "permissions", "user_id", "workspace_id")}
    assert await proxy_status(gateway, http, old_key) == (401, "revoked_api_key")
    assert await proxy_status(gateway, http, new["key"]) == (200, None)
    shown = await operator.ok("GET", f"/admin/v1/keys/{new['key_id']}")
    assert "key" not in shown
    status, problem = await operator.call("POST", f"/admin/v1/keys/{created['key_id']}/rotate",
                                          {"grace_period_seconds": 0})
    assert status == 409 and problem["code"] == "conflict"


async def test_rotate_with_grace_keeps_the_old_key_until_then(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    created = await create(operator, gateway)
    old_key = str(created["key"])
    new = await operator.ok("POST", f"/admin/v1/keys/{created['key_id']}/rotate",
                            {"grace_period_seconds": 1})
    assert await proxy_status(gateway, http, old_key) == (200, None)
    assert await proxy_status(gateway, http, new["key"]) == (200, None)
    old = await operator.ok("GET", f"/admin/v1/keys/{created['key_id']}")
    assert old["status"] == "active" and old["expires_at"] is not None
    await asyncio.sleep(1.1)
    assert await proxy_status(gateway, http, old_key) == (401, "expired_api_key")
    assert await proxy_status(gateway, http, new["key"]) == (200, None)
    old = await operator.ok("GET", f"/admin/v1/keys/{created['key_id']}")
    assert old["status"] == "expired"


async def test_patch_takes_effect_on_the_next_request(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    created = await create(operator, gateway)
    key, path = str(created["key"]), f"/admin/v1/keys/{created['key_id']}"
    assert (await proxy_status(gateway, http, key))[0] == 200
    patched = await operator.ok("PATCH", path, {"permissions": ["write-only"], "name": "n2"})
    assert patched["permissions"] == ["write-only"] and patched["name"] == "n2"
    assert await proxy_status(gateway, http, key) == (403, "insufficient_permissions")
    await operator.ok("PATCH", path, {"permissions": ["read"],
                                      "scopes": [{"resource_id": "r1", "operations": ["read"]}]})
    assert (await proxy_status(gateway, http, key))[0] == 200
    assert await proxy_status(gateway, http, key, "/v1/retrievers/r2/x") == (
        403, "resource_forbidden")
    assert (await proxy_status(gateway, http, key, "/v1/retrievers/r1/x"))[0] == 200
    unchanged = await operator.ok("PATCH", path, {})
    assert unchanged["name"] == "n2"


async def test_expired_keys_show_expired_and_cannot_change(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    soon = (utcnow() + timedelta(milliseconds=400)).isoformat()
    created = await create(operator, gateway, expires_at=soon)
    path = f"/admin/v1/keys/{created['key_id']}"
    assert created["status"] == "active"
    await asyncio.sleep(0.5)
    assert (await operator.ok("GET", path))["status"] == "expired"
    assert await proxy_status(gateway, http, str(created["key"])) == (401, "expired_api_key")
    listed = await operator.ok("GET", f"/admin/v1/workspaces/{gateway.workspace.id}/keys")
    assert created["key_id"] not in {k["key_id"] for k in listed["results"]}
    listed = await operator.ok("GET", f"/admin/v1/workspaces/{gateway.workspace.id}/keys",
                               params={"include_revoked": "true"})
    assert created["key_id"] in {k["key_id"] for k in listed["results"]}
    # a PATCH cannot revive it (that would also slip past max_active_per_user)
    status, problem = await operator.call("PATCH", path, {"expires_at": None})
    assert status == 409 and problem["code"] == "conflict"


async def test_max_active_per_user_plus_one_is_409(
    make_gateway: object, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway(keys={"max_active_per_user": 3})  # type: ignore[operator]
    operator = Admin(http, gateway.admin_url, await gateway.admin_key())
    path = f"/admin/v1/workspaces/{gateway.workspace.id}/keys"
    made = [await operator.ok("POST", path, {"name": f"k{i}", "user_id": "u"}) for i in range(3)]
    status, problem = await operator.call("POST", path, {"name": "k4", "user_id": "u"})
    assert status == 409 and problem["code"] == "key_limit_reached"
    await operator.ok("POST", path, {"name": "other user", "user_id": "v"})
    await operator.ok("DELETE", f"/admin/v1/keys/{made[0]['key_id']}")
    await operator.ok("POST", path, {"name": "k4", "user_id": "u"})  # room again


async def test_concurrent_credit_top_ups_all_count_and_a_set_applies_on_the_next_request(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    """README "Credits": top-ups are serialized by the key's row lock, on either store."""
    key = await gateway.key(credits={"remaining": 1})
    key_id = gateway.created[-1].key_id
    path = f"/admin/v1/keys/{key_id}/credits"
    await asyncio.gather(*(operator.ok("POST", path, {"add": 1}) for _ in range(8)))
    shown = await operator.ok("GET", f"/admin/v1/keys/{key_id}")
    assert shown["credits"]["remaining"] == 9
    stored = await gateway.keys.get_key(key_id)
    assert stored.credits is not None and stored.credits.added == 8
    await operator.ok("POST", path, {"set": 1})
    assert (await proxy_status(gateway, http, key))[0] == 200
    assert await proxy_status(gateway, http, key) == (429, "credits_exhausted")
