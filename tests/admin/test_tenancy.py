"""Admin auth and tenancy: every admin endpoint needs a key; a workspace admin key sees its own
workspace only, and everything else is a 404 (never a 403, which would confirm it exists)."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.admin import PUBLIC_PATHS, ROUTES
from gateway.admin.openapi import build_openapi
from gateway.app import create_admin
from tests.admin.conftest import Admin, workspace_admin
from tests.conftest import Gateway, bearer

OPEN = {"/healthz", "/readyz", "/metrics"}
SIGNED = {"/admin/v1/secret-scanning/github"}  # GitHub's signature instead (README "Leaked keys")
DOCUMENT = build_openapi(ROUTES)
PROTECTED = sorted(
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if method != "parameters" and path not in OPEN | SIGNED
)


def test_only_health_metrics_and_the_signed_report_skip_the_admin_key() -> None:
    assert PUBLIC_PATHS == OPEN | SIGNED


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
async def test_every_admin_endpoint_rejects_a_missing_key(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    url = gateway.admin_url + path.format(
        workspace_id=gateway.workspace.id, key_id="key_x", user_id="usr_x", user_email="a@b.c"
    )
    async with http.request(method, url, json={"name": "x"}) as r:
        body = await r.json(content_type=None)
        assert r.status == 401 and body["code"] == "missing_api_key"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.request(method, url, json={"name": "x"},
                            headers=bearer(await gateway.key())) as r:
        assert r.status == 403  # a standard key is not an admin key


async def test_the_document_lists_exactly_the_routes_of_the_app(gateway: Gateway) -> None:
    app = create_admin(gateway.services)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and not route.resource.canonical.startswith("/console/")  # the mounted web console
    }
    documented = ({(m, p) for m, p in PROTECTED} | {("GET", p) for p in OPEN}
                  | {("POST", p) for p in SIGNED})
    assert routes == documented


async def test_workspace_admin_never_reaches_another_workspace(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    other = await gateway.keys.create_workspace("other", "test")
    foreign, foreign_plaintext = await gateway.keys.create_key(
        other.id, {"name": "theirs", "permissions": ["read"]}, "test"
    )
    admin = await workspace_admin(gateway, http, gateway.workspace.id)
    ws, key = f"/admin/v1/workspaces/{other.id}", f"/admin/v1/keys/{foreign.key_id}"
    attempts = [
        ("POST", "/admin/v1/workspaces", {"name": "mine now"}),
        ("GET", f"{ws}/projects", None),
        ("POST", f"{ws}/projects", {"name": "p"}),
        ("GET", f"{ws}/namespaces", None),
        ("POST", f"{ws}/namespaces", {"name": "n"}),
        ("GET", f"{ws}/keys", None),
        ("POST", f"{ws}/keys", {"name": "k"}),
        ("GET", key, None),
        ("PATCH", key, {"name": "stolen"}),
        ("DELETE", key, None),
        ("POST", f"{key}/rotate", {"grace_period_seconds": 0}),
        ("POST", f"{key}/credits", {"set": 1000}),
        ("GET", f"{key}/usage", None),
        ("GET", f"/admin/v1/audit?workspace_id={other.id}", None),
    ]
    for method, path, body in attempts:
        status, problem = await admin.call(method, path, body)
        assert (status, problem["code"]) == (404, "not_found"), (method, path)
    listed = await admin.ok("GET", "/admin/v1/workspaces")
    assert [w["id"] for w in listed["results"]] == [gateway.workspace.id]
    assert listed["total"] == 1
    # nothing happened over there
    unchanged = await gateway.keys.get_key(foreign.key_id)
    assert unchanged == foreign
    assert [p.name for p in await gateway.keys.list_projects(other.id)] == ["default"]
    assert await gateway.keys.list_namespaces(other.id) == []
    assert (await gateway.keys.list_keys(other.id)).total == 1
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(foreign_plaintext)) as r:
        assert r.status == 200


async def test_workspace_admin_manages_its_own_workspace(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    admin = await workspace_admin(gateway, http, gateway.workspace.id)
    ws = f"/admin/v1/workspaces/{gateway.workspace.id}"
    await admin.ok("POST", f"{ws}/projects", {"name": "p"})
    await admin.ok("POST", f"{ws}/namespaces", {"name": "n"})
    created = await admin.ok("POST", f"{ws}/keys", {"name": "k"})
    key = f"/admin/v1/keys/{created['key_id']}"
    await admin.ok("PATCH", key, {"name": "k2"})
    await admin.ok("GET", f"{key}/usage")
    rotated = await admin.ok("POST", f"{key}/rotate", {"grace_period_seconds": 0})
    await admin.ok("DELETE", f"/admin/v1/keys/{rotated['key_id']}")
    events = await admin.ok("GET", "/admin/v1/audit")
    assert {e["workspace_id"] for e in events["results"]} == {gateway.workspace.id}


async def test_workspace_admin_cannot_see_operator_keys(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    operator_record = (await gateway.keys.list_keys(None, key_type="admin")).results[0]
    assert operator_record.workspace_id is None
    admin = await workspace_admin(gateway, http, gateway.workspace.id)
    status, _ = await admin.call("GET", f"/admin/v1/keys/{operator_record.key_id}")
    assert status == 404
    status, _ = await admin.call("DELETE", f"/admin/v1/keys/{operator_record.key_id}")
    assert status == 404
    await operator.ok("GET", "/admin/v1/workspaces")  # still works


async def test_revoked_or_expired_admin_keys_are_refused(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    admin = await workspace_admin(gateway, http, gateway.workspace.id)
    record = await gateway.keys.list_keys(gateway.workspace.id, key_type="admin")
    await operator.ok("DELETE", f"/admin/v1/keys/{record.results[0].key_id}")
    status, problem = await admin.call("GET", "/admin/v1/workspaces")
    assert status == 401 and problem["code"] == "invalid_api_key"
