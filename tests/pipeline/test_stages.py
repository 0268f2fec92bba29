"""Stage logic without HTTP: the pure functions each stage is built from."""

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.http import bearer_token, pick_request_id
from gateway.keys.access import check_status, expand, missing_permission, scope_allows
from gateway.keys.model import KeyRecord, Scope
from gateway.limiter.base import Decision, QuotaAsk, Window
from gateway.limiter.budget import Limits, budget_of
from gateway.pipeline.rate_limit import quota_headers


def key(**changes: object) -> KeyRecord:
    base = KeyRecord(
        key_id="key_1", key_hash="h", key_prefix="sk_live_abcd", hint="wxyz", name="k",
        workspace_id="ws_1", project_id="proj_1", user_id=None, created_at=datetime.now(UTC),
    )
    return base.with_changes(**changes)


def request(headers: dict[str, str] | list[tuple[str, str]], path: str = "/x") -> object:
    from multidict import CIMultiDict

    return make_mocked_request("GET", path, headers=CIMultiDict(headers))


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], "bad_request"),
        ({"Authorization": "Basic abc"}, "invalid_api_key"),
        ({"Authorization": "Bearer"}, "invalid_api_key"),
        ({"Authorization": "Bearer    "}, "invalid_api_key"),
    ],
)
def test_bearer_token_errors(headers: dict[str, str], code: str) -> None:
    with pytest.raises(GatewayError) as caught:
        bearer_token(request(headers))  # type: ignore[arg-type]
    assert caught.value.kind.code == code


def test_bearer_token_scheme_any_case() -> None:
    assert bearer_token(request({"Authorization": "BEARER tok"})) == "tok"  # type: ignore[arg-type]


def test_check_status() -> None:
    check_status(key())
    past = datetime.now(UTC) - timedelta(seconds=1)
    for record, code in [
        (key(status="revoked"), "revoked_api_key"),
        (key(expires_at=past), "expired_api_key"),
        (key(workspace_id=None, key_type="admin"), "insufficient_permissions"),
    ]:
        with pytest.raises(GatewayError) as caught:
            check_status(record)
        assert caught.value.kind.code == code


def test_expand_is_transitive_and_survives_cycles() -> None:
    implies = {"manage": ("create", "read"), "create": ("write",), "a": ("b",), "b": ("a",)}
    assert expand(("manage",), implies) == {"manage", "create", "read", "write"}
    assert expand(("a",), implies) == {"a", "b"}
    assert missing_permission(("read", "delete"), expand(("manage",), implies)) == "delete"
    assert missing_permission((), frozenset()) is None


def test_scope_allows() -> None:
    scoped = key(scopes=(Scope("r1", ("read",)), Scope("r2", ("*",)), Scope("*", ("list",))))
    assert scope_allows(scoped, "r1", "read")
    assert not scope_allows(scoped, "r1", "write")
    assert scope_allows(scoped, "r2", "delete")
    assert scope_allows(scoped, "anything", "list")
    assert not scope_allows(scoped, "r3", "read")
    assert not scope_allows(scoped, "r1", None)  # a method with no operation mapped
    assert scope_allows(key(), "whatever", None)  # no scopes: every resource


def test_which_limit() -> None:
    config = parse_config({
        "defaults": {"rate_limit": {"requests": 100, "window": 60}, "max_concurrent": 10},
        "plans": {"free": {"rate_limit": {"requests": 5, "window": 1}, "quota": {"day": 50},
                           "max_concurrent": 2},
                  "pro": {"quota": {"month": 900}}},
        "default_plan": "free",
        "routes": [{"name": "plain", "path": "/p/", "upstream": "http://u"},
                   {"name": "limited", "path": "/l/", "upstream": "http://u",
                    "rate_limit": {"requests": 7, "window": 10}, "max_concurrent": 3}],
    }, "t.yaml", {})
    plain, limited = (Limits(route, config) for route in config.routes)
    assert plain.also is None and limited.also == Window("limited", 7, 10.0)
    ws = {"workspace_id": "ws_1"}
    assert plain.of(key(**ws)) == (5, 1.0, 2, QuotaAsk("ws_1", 50, 0))  # the default plan
    assert plain.of(key(plan="pro", **ws)) == (100, 60.0, 10, QuotaAsk("ws_1", 0, 900))
    assert plain.of(key(plan="gone", **ws))[0] == 5  # a plan no longer declared: the default
    assert limited.of(key(**ws))[2] == 3  # the route's max_concurrent over the plan's
    override = key(rate_limit_override=9, concurrency_limit=4, **ws)
    assert limited.of(override) == (9, 60.0, 4, QuotaAsk("ws_1", 50, 0))
    assert plain.of(key(workspace_id=None))[3] is None  # no workspace: no quota
    assert budget_of(key()) == "key_1"
    assert budget_of(key(rotated_from="key_0")) == "key_0"


def test_quota_headers_round_up_reset() -> None:
    headers = quota_headers(Decision(True, 10, 3, 4.2, 0))
    assert headers["RateLimit-Reset"] == headers["X-RateLimit-Reset"] == "5"
    assert headers["RateLimit-Remaining"] == "3"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("x y", False), ("", False)],
)
def test_request_id(given: str, kept: bool) -> None:
    picked = pick_request_id(request({"X-Request-Id": given}))  # type: ignore[arg-type]
    assert (picked == given) is kept
    assert picked


def router(**limits: object) -> tuple[object, object]:
    """The routing front stage over two routes, and the services it was built from."""
    from types import SimpleNamespace

    from gateway.pipeline import match

    config = parse_config({
        "limits": limits,
        "routes": [{"name": "api", "path": "/api/{id}/", "upstream": "http://u"},
                   {"name": "open", "path": "/open/", "upstream": "http://u", "auth": "none"}],
    }, "t.yaml", {})
    services = SimpleNamespace(config=config, prefixes=frozenset(config.keys.prefixes.values()))
    return match.build(services), services  # type: ignore[arg-type]


def routed(route: object, target: str, headers: dict[str, str] | None = None) -> object:
    from gateway.exchange import Exchange

    exchange = Exchange(request(headers or {}, target))  # type: ignore[arg-type]
    route(exchange)  # type: ignore[operator]
    return exchange


def test_a_request_target_resolves_once() -> None:
    route, _ = router()
    first = routed(route, "/api/r1/./x?q=1")
    again = routed(route, "/api/r1/./x?q=1")
    assert (again.path, again.query) == (first.path, first.query) == ("/api/r1/x", "q=1")
    assert again.match is first.match and again.match.params == {"id": "r1"}
    assert "/api/r1/./x?q=1" in route.remembered
    assert routed(route, "/open/y").match.route.name == "open"  # another target: its own


def test_a_key_shaped_target_is_never_remembered() -> None:
    from gateway.keys.model import generate_key

    route, services = router()
    token = generate_key(next(iter(services.prefixes)))
    in_query = routed(route, f"/api/r1/x?k={token}&q=1")
    assert in_query.query == "q=1"  # the key is never forwarded
    in_path = routed(route, f"/api/{token}/x")
    assert in_path.match.params == {"id": token}
    assert route.remembered == {}  # neither target outlives its request


def test_remembered_targets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import match

    monkeypatch.setattr(match, "REMEMBERED", 3)
    route, _ = router()
    for n in range(10):
        routed(route, f"/api/r{n}/x")
    assert 0 < len(route.remembered) <= 3
    routed(route, "/api/" + "r" * 600 + "/x")  # past REMEMBERED_LENGTH: resolved, not kept
    assert all(len(target) <= match.REMEMBERED_LENGTH for target in route.remembered)


def test_header_checks() -> None:
    route, _ = router(max_header_bytes=1024, max_header_line_bytes=256)
    with pytest.raises(GatewayError) as caught:
        routed(route, "/open/", {"X_User_Id": "u"})
    assert caught.value.kind.code == "bad_request"
    few = {f"X-H{n}": "v" * 200 for n in range(4)}  # 4 lines of 256 at most: never too many
    assert routed(route, "/open/", few).match is not None
    many = {f"X-H{n}": "v" * 200 for n in range(6)}  # 6 x 210 bytes > 1024
    with pytest.raises(GatewayError) as caught:
        routed(route, "/open/", many)
    assert caught.value.kind.code == "headers_too_large"
