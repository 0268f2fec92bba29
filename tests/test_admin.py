"""The admin API basics used by the README walk-through; issue-level coverage lives with the
admin API work."""

from __future__ import annotations

import aiohttp

from tests.conftest import Gateway, bearer


async def test_walkthrough(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    admin = bearer(await gateway.admin_key())
    base = f"{gateway.admin_url}/admin/v1"
    async with http.post(f"{base}/workspaces", headers=admin, json={"name": "w"}) as r:
        assert r.status == 201
        workspace = await r.json()
    async with http.post(f"{base}/workspaces/{workspace['id']}/keys", headers=admin,
                         json={"name": "demo", "permissions": ["read"]}) as r:
        assert r.status == 201
        created = await r.json()
    key = created["key"]
    assert "key" not in {k for k in created if k != "key"}
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as r:
        assert r.status == 200
    async with http.get(f"{base}/keys/{created['key_id']}", headers=admin) as r:
        shown = await r.json()
        assert "key" not in shown and key not in str(shown)
        assert shown["hint"] == key[-4:]
    async with http.delete(f"{base}/keys/{created['key_id']}", headers=admin) as r:
        assert (await r.json())["status"] == "revoked"
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as r:
        assert r.status == 401 and (await r.json())["code"] == "revoked_api_key"


async def test_admin_needs_an_admin_key(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    base = f"{gateway.admin_url}/admin/v1/workspaces"
    async with http.get(base) as r:
        assert r.status == 401 and (await r.json())["code"] == "missing_api_key"
    async with http.get(base, headers=bearer(await gateway.key())) as r:
        assert r.status == 403
    async with http.get(base, headers={"Authorization": "Basic abc"}) as r:
        assert r.status == 401 and (await r.json())["code"] == "invalid_api_key"
    admin = await gateway.admin_key()
    two = [("Authorization", f"Bearer {admin}"), ("Authorization", f"Bearer {admin}")]
    async with http.get(base, headers=two) as r:  # as on the proxy (SPEC section 5)
        assert r.status == 400 and (await r.json())["code"] == "bad_request"
    async with http.get(f"{gateway.admin_url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{gateway.admin_url}/readyz") as r:
        assert r.status == 200


async def test_admin_api_is_not_on_the_public_port(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    admin = bearer(await gateway.admin_key())
    async with http.get(f"{gateway.url}/admin/v1/workspaces", headers=admin) as r:
        assert r.status == 404 and (await r.json())["code"] == "route_not_found"


async def test_workspace_admin_sees_only_its_workspace(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    _record, plaintext = await gateway.keys.create_key(
        gateway.workspace.id, {"name": "ws admin", "key_type": "admin"}, "test"
    )
    other = await gateway.keys.create_workspace("other", "test")
    foreign, foreign_key = await gateway.keys.create_key(
        other.id, {"name": "theirs", "permissions": ["read"]}, "test"
    )
    foreign_id = foreign.key_id
    admin = bearer(plaintext)
    base = f"{gateway.admin_url}/admin/v1"
    async with http.get(f"{base}/workspaces", headers=admin) as r:
        assert [w["id"] for w in (await r.json())["results"]] == [gateway.workspace.id]
    for method, url in [
        ("GET", f"{base}/workspaces/{other.id}/keys"),
        ("GET", f"{base}/keys/{foreign_id}"),
        ("DELETE", f"{base}/keys/{foreign_id}"),
    ]:
        async with http.request(method, url, headers=admin) as r:
            assert r.status == 404, (method, url)
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(foreign_key)) as r:
        assert r.status == 200  # the 404 DELETE did not revoke it


async def test_validation_lists_every_failing_field(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    admin = bearer(await gateway.admin_key())
    url = f"{gateway.admin_url}/admin/v1/workspaces/{gateway.workspace.id}/keys"
    body = {"name": "", "rate_limit_override": 0, "allowed_origins": ["example.com"], "x": 1}
    async with http.post(url, headers=admin, json=body) as r:
        problem = await r.json()
        assert r.status == 400 and problem["code"] == "validation_error"
        assert set(problem["errors"]) == {"name", "rate_limit_override", "allowed_origins", "x"}
