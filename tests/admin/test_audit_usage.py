"""Audit (every mutation, never a secret) and per-key usage after real proxy traffic."""

from __future__ import annotations

import aiohttp

from gateway.keys.model import OUTCOMES
from tests.admin.conftest import Admin
from tests.conftest import Gateway, bearer


async def test_every_mutation_is_audited_without_secrets(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    actor = (await gateway.keys.list_keys(None, key_type="admin")).results[0].key_id
    ws = (await operator.ok("POST", "/admin/v1/workspaces", {"name": "audited"}))["id"]
    await operator.ok("POST", f"/admin/v1/workspaces/{ws}/projects", {"name": "p"})
    await operator.ok("POST", f"/admin/v1/workspaces/{ws}/namespaces", {"name": "n"})
    created = await operator.ok("POST", f"/admin/v1/workspaces/{ws}/keys",
                                {"name": "k", "permissions": ["read"]})
    key = f"/admin/v1/keys/{created['key_id']}"
    await operator.ok("PATCH", key, {"name": "renamed", "rate_limit_override": 5})
    rotated = await operator.ok("POST", f"{key}/rotate", {"grace_period_seconds": 60})
    await operator.ok("DELETE", f"/admin/v1/keys/{rotated['key_id']}")

    async with http.get(f"{operator.base}/admin/v1/audit", params={"workspace_id": ws},
                        headers=bearer(str(operator.token))) as r:
        raw = await r.text()
        events = (await r.json())["results"]
    actions = [(e["action"], e["target"]) for e in reversed(events)]
    assert actions == [
        ("workspace.create", ws), ("project.create", actions[1][1]),
        ("namespace.create", actions[2][1]), ("key.create", created["key_id"]),
        ("key.update", created["key_id"]), ("key.rotate", created["key_id"]),
        ("key.revoke", rotated["key_id"]),
    ]
    assert {e["actor"] for e in events} == {actor}
    assert all(e["at"] and e["workspace_id"] == ws for e in events)
    by_action = {e["action"]: e for e in events}
    assert by_action["key.update"]["changes"] == {"name": "renamed", "rate_limit_override": 5}
    assert by_action["key.rotate"]["changes"] == {"new_key_id": rotated["key_id"],
                                                  "grace_period_seconds": 60}
    assert by_action["key.revoke"]["changes"] == {"status": "revoked"}
    assert by_action["key.create"]["changes"]["permissions"] == ["read"]
    hashed = gateway.services.hasher
    for secret in (created["key"], hashed(created["key"]), rotated["key"],
                   hashed(rotated["key"]), operator.token):
        assert secret not in raw
    everything = await operator.ok("GET", "/admin/v1/audit")  # operator: every workspace
    assert len(everything["results"]) >= len(events)
    status, _ = await operator.call("GET", "/admin/v1/audit", params={"workspace_id": "ws_no"})
    assert status == 404


async def test_usage_counts_requests_and_rate_limited(
    gateway: Gateway, http: aiohttp.ClientSession, operator: Admin
) -> None:
    created = await operator.ok("POST", f"/admin/v1/workspaces/{gateway.workspace.id}/keys",
                                {"name": "k", "permissions": ["read"], "rate_limit_override": 2})
    usage_path = f"/admin/v1/keys/{created['key_id']}/usage"
    before = await operator.ok("GET", usage_path)
    assert {k: before[k] for k in ("key_id", "requests", "rate_limited", "last_used_at")} == {
        "key_id": created["key_id"], "requests": 0, "rate_limited": 0, "last_used_at": None}
    assert before["totals"] == dict.fromkeys(OUTCOMES, 0)
    statuses = []
    for _ in range(3):
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(created["key"])) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 429]
    await gateway.services.usage.flush()
    after = await operator.ok("GET", usage_path)
    # requests: forwarded ones; the refused third is counted as rate_limited only
    assert after["requests"] == 2 and after["rate_limited"] == 1
    assert after["last_used_at"] is not None
    assert after["totals"] == {**dict.fromkeys(OUTCOMES, 0), "success": 2, "rate_limited": 1}
    shown = await operator.ok("GET", f"/admin/v1/keys/{created['key_id']}")
    assert shown["last_used_at"] is not None
    status, problem = await operator.call("GET", "/admin/v1/keys/key_nope/usage")
    assert status == 404 and problem["code"] == "not_found"
