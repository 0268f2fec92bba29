"""Input validation: one test per rule; a 400 ``validation_error`` names every failing field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from gateway.keys.model import utcnow
from tests.admin.conftest import Admin
from tests.conftest import Gateway


@pytest.fixture
def keys_path(gateway: Gateway) -> str:
    return f"/admin/v1/workspaces/{gateway.workspace.id}/keys"


async def rejected(admin: Admin, method: str, path: str, body: Any, **kw: Any) -> dict[str, str]:
    status, problem = await admin.call(method, path, body, **kw)
    assert status == 400 and problem["code"] == "validation_error", problem
    assert problem["status"] == 400 and problem["request_id"]
    return dict(problem["errors"])


async def test_name_is_required_and_1_to_100(operator: Admin, keys_path: str) -> None:
    assert set(await rejected(operator, "POST", keys_path, {})) == {"name"}
    for name in ("", "   ", "x" * 101, 7, None):
        assert set(await rejected(operator, "POST", keys_path, {"name": name})) == {"name"}
    await operator.ok("POST", keys_path, {"name": "x" * 100})


async def test_description_at_most_500(operator: Admin, keys_path: str) -> None:
    errors = await rejected(operator, "POST", keys_path, {"name": "k", "description": "d" * 501})
    assert set(errors) == {"description"}
    await operator.ok("POST", keys_path, {"name": "k", "description": "d" * 500})


async def test_rate_limit_override_at_least_1(operator: Admin, keys_path: str) -> None:
    for value in (0, -1, 1.5, "10", True, 10**12):
        errors = await rejected(operator, "POST", keys_path,
                                {"name": "k", "rate_limit_override": value})
        assert set(errors) == {"rate_limit_override"}, value
    created = await operator.ok("POST", keys_path, {"name": "k", "rate_limit_override": 1})
    assert created["rate_limit_override"] == 1


async def test_expires_at_is_rfc3339_in_the_future(operator: Admin, keys_path: str) -> None:
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    for value in (past, "2999-01-01", "2999-01-01 00:00:00Z", "2999-01-01T00:00:00",
                  "tomorrow", "0001-01-01T00:00:00+01:00", 5):
        errors = await rejected(operator, "POST", keys_path, {"name": "k", "expires_at": value})
        assert set(errors) == {"expires_at"}, value
    created = await operator.ok("POST", keys_path,
                                {"name": "k", "expires_at": "2999-01-01T00:00:00+02:00"})
    assert created["expires_at"] == "2998-12-31T22:00:00Z"


async def test_allowed_origins_are_well_formed(operator: Admin, keys_path: str) -> None:
    for origin in ("example.com", "https://example.com/", "https://example.com/path", "*",
                   "null", "ftp://example.com", "https://*", "https://a.*.example.com",
                   " https://example.com", "https://user@example.com", "https://x.com:99999"):
        errors = await rejected(operator, "POST", keys_path,
                                {"name": "k", "allowed_origins": [origin]})
        assert set(errors) == {"allowed_origins"}, origin
    good = ["https://app.example.com", "http://localhost:3000", "https://*.example.com"]
    created = await operator.ok("POST", keys_path, {"name": "k", "allowed_origins": good})
    assert created["allowed_origins"] == good


async def test_scopes_are_well_formed(operator: Admin, keys_path: str) -> None:
    for scopes in ([{"resource_id": "r"}], [{"operations": ["read"]}],
                   [{"resource_id": "", "operations": ["read"]}],
                   [{"resource_id": "r", "operations": []}],
                   [{"resource_id": "r", "operations": ["re ad"]}],
                   [{"resource_id": "r", "operations": ["read"], "extra": 1}],
                   ["r"], {"resource_id": "r"}):
        errors = await rejected(operator, "POST", keys_path, {"name": "k", "scopes": scopes})
        assert set(errors) == {"scopes"}, scopes


async def test_permissions_are_strings(operator: Admin, keys_path: str) -> None:
    for permissions in ("read", [1], ["has space"], [""]):
        errors = await rejected(operator, "POST", keys_path,
                                {"name": "k", "permissions": permissions})
        assert set(errors) == {"permissions"}, permissions


async def test_unknown_fields_are_rejected(
    operator: Admin, keys_path: str, gateway: Gateway
) -> None:
    errors = await rejected(operator, "POST", keys_path, {"name": "k", "key": "sk_live_x"})
    assert errors == {"key": "unknown field"}
    created = await operator.ok("POST", keys_path, {"name": "k"})
    key = f"/admin/v1/keys/{created['key_id']}"
    for method, path, body in [
        ("PATCH", key, {"user_id": "someone"}),  # fixed at creation
        ("PATCH", key, {"status": "active"}),
        ("POST", f"{key}/rotate", {"grace": 5}),
        ("POST", "/admin/v1/workspaces", {"name": "w", "plan": "pro"}),
        ("POST", f"/admin/v1/workspaces/{gateway.workspace.id}/projects", {"name": "p", "x": 1}),
        ("POST", f"/admin/v1/workspaces/{gateway.workspace.id}/namespaces", {"name": "n", "x": 1}),
    ]:
        errors = await rejected(operator, method, path, body)
        assert set(errors.values()) == {"unknown field"}, (method, path)


async def test_every_failing_field_is_listed(operator: Admin, keys_path: str) -> None:
    body = {"name": "", "description": "d" * 501, "rate_limit_override": 0,
            "concurrency_limit": 0, "expires_at": "2000-01-01T00:00:00Z",
            "allowed_origins": ["nope"], "scopes": [{}], "permissions": [1],
            "environment": "prod", "key_type": "root", "user_id": "", "extra": True}
    assert set(await rejected(operator, "POST", keys_path, body)) == set(body)


async def test_patch_validates_like_create(operator: Admin, keys_path: str) -> None:
    created = await operator.ok("POST", keys_path, {"name": "k"})
    key = f"/admin/v1/keys/{created['key_id']}"
    errors = await rejected(operator, "PATCH", key, {"name": "", "rate_limit_override": 0})
    assert set(errors) == {"name", "rate_limit_override"}
    assert (await operator.ok("GET", key))["name"] == "k"


async def test_rotate_grace_period(operator: Admin, keys_path: str) -> None:
    created = await operator.ok("POST", keys_path, {"name": "k"})
    rotate = f"/admin/v1/keys/{created['key_id']}/rotate"
    for value in (-1, 31_536_001, "60", 1.5, True):
        errors = await rejected(operator, "POST", rotate, {"grace_period_seconds": value})
        assert set(errors) == {"grace_period_seconds"}, value


async def test_bad_json_and_non_object_bodies(operator: Admin, keys_path: str) -> None:
    status, problem = await operator.call("POST", keys_path, data=b"{not json")
    assert status == 400 and problem["code"] == "bad_request"
    for body in (b"[]", b"null", b'"name"', b"42"):
        errors = await rejected(operator, "POST", keys_path, None, data=body)
        assert errors == {"body": "must be a JSON object"}, body
        errors = await rejected(operator, "POST", "/admin/v1/workspaces", None, data=body)
        assert errors == {"body": "must be a JSON object"}, body


async def test_bad_query_parameters(operator: Admin, keys_path: str) -> None:
    for params, field in [
        ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"), ({"limit": "-5"}, "limit"),
        ({"include_revoked": "yes"}, "include_revoked"), ({"cursor": "!!"}, "cursor"),
        ({"sort": "name"}, "sort"),
    ]:
        errors = await rejected(operator, "GET", keys_path, None, params=params)
        assert set(errors) == {field}, params
    errors = await rejected(operator, "GET", "/admin/v1/audit", None, params={"limit": "x"})
    assert set(errors) == {"limit"}


@pytest.mark.parametrize("bad", ["a\x00b", "tab\there", "bell\x07", "del\x7f"])
async def test_control_characters_are_refused(
    operator: Admin, gateway: Gateway, keys_path: str, bad: str
) -> None:
    # NUL cannot be stored in Postgres text: without this check it became a 503 there
    body = {"name": bad, "user_id": bad, "scopes": [{"resource_id": bad, "operations": ["read"]}]}
    assert set(await rejected(operator, "POST", keys_path, body)) == {"name", "user_id", "scopes"}
    projects = f"/admin/v1/workspaces/{gateway.workspace.id}/projects"
    assert set(await rejected(operator, "POST", projects, {"name": bad})) == {"name"}


async def test_description_may_hold_line_breaks_but_not_nul(
    operator: Admin, keys_path: str
) -> None:
    await operator.ok("POST", keys_path, {"name": "k", "description": "line 1\nline 2\tend"})
    errors = await rejected(operator, "POST", keys_path, {"name": "k", "description": "a\x00"})
    assert set(errors) == {"description"}


async def test_a_trailing_newline_is_refused_in_every_pattern_checked_field(
    operator: Admin, keys_path: str
) -> None:
    # `$` also matches before a final "\n": each field is checked with fullmatch
    cases: list[dict[str, Any]] = [
        {"name": "w\n"},
        {"name": "k", "permissions": ["read\n"]},
        {"name": "k", "allowed_origins": ["https://app.example.com\n"]},
        {"name": "k", "expires_at": "2999-01-01T00:00:00Z\n"},
    ]
    for body in cases:
        field = next(iter(set(body) - {"name"}), "name")
        assert set(await rejected(operator, "POST", keys_path, body)) == {field}, body
