"""The config loader: the shipped example, ${VAR} interpolation, env overrides, and one failing
fixture per validation rule (tests/config/*.yaml) with its exact one-line message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from gateway.config import (
    DEFAULT_OPERATIONS,
    Config,
    CorsConfig,
    Listen,
    PlanConfig,
    QuotaConfig,
    RateLimit,
    RouteRateLimit,
    load_config,
    parse_config,
)
from gateway.config.parsers import cluster_seeds
from gateway.errors import ConfigError
from gateway.limiter.redis import RedisRateLimiter
from gateway.services import create_limiter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "gateway.yaml"
FIXTURES = Path(__file__).resolve().parent / "config"
ROUTE = {"name": "r", "path": "/r/", "upstream": "http://127.0.0.1:9000"}


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(yaml.safe_load(text), "t.yaml", environ or {})


def minimal(**top: object) -> dict[str, object]:
    return {"routes": [dict(ROUTE)], **top}


def error(data: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml", environ or {})
    return str(info.value)


# ---- the shipped example ---------------------------------------------------------------------


def test_example_config_loads_with_expected_routes() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.source == str(EXAMPLE)
    assert config.listen == Listen("127.0.0.1", 8080)
    assert config.admin_listen == Listen("127.0.0.1", 8081)
    database = f"sqlite:///{ROOT}/config/gateway.db"  # relative to the config file
    assert (config.workers, config.database, config.redis) == (1, database, None)
    assert config.keys.prefixes == {"live": "sk_live", "test": "sk_test"}
    assert config.keys.hash_pepper is None
    assert config.implies == {"eval:manage": ("eval:create", "eval:read"), "write": ("read",)}
    assert config.defaults.rate_limit == RateLimit(100, 60.0)
    assert (config.defaults.max_concurrent, config.defaults.on_limiter_error) == (10, "local")

    models, retrievers, public, forward_auth = config.routes
    assert (models.mode, forward_auth.mode) == ("proxy", "verify")
    assert (forward_auth.path, forward_auth.upstreams) == ("/_verify/", ())
    assert (models.name, models.path, models.upstreams) == (
        "models",
        "/api/ai/",
        ("http://127.0.0.1:9000",),
    )
    assert models.permissions == {"GET": ("read",), "POST": ("write",)}
    assert models.rate_limit == RouteRateLimit(1000, 60.0)
    assert isinstance(models.cors, CorsConfig)
    assert models.cors.allow_origins == ("https://app.example.com", "https://*.example.com")
    assert models.cors.max_age == 600

    assert retrievers.path == "/v1/retrievers/{retriever_id}/"
    assert retrievers.resource == "retriever_id"
    assert retrievers.permissions == {"*": ("read",)}
    assert retrievers.operations == DEFAULT_OPERATIONS

    assert (public.path, public.auth, public.strip_prefix) == ("/public/", "none", True)
    assert public.permissions == {} and public.resource is None


def test_plans_are_read_with_their_names() -> None:
    config = parse(
        "plans:\n"
        "  free: {rate_limit: {requests: 5, window: 1}, quota: {day: 100, month: 2000}}\n"
        "  pro: {max_concurrent: 50, max_active_keys_per_user: 50}\n"
        "default_plan: free\n" + yaml.safe_dump(minimal())
    )
    free, pro = config.plans["free"], config.plans["pro"]
    assert free == PlanConfig("free", RateLimit(5, 1.0), QuotaConfig(100, 2000))
    assert pro == PlanConfig("pro", None, QuotaConfig(), 50, 50)
    assert config.default_plan == "free"


def test_no_plans_by_default() -> None:
    config = parse_config(minimal(), "t.yaml", {})
    assert (config.plans, config.default_plan) == ({}, None)


def test_example_config_reads_the_pepper_from_the_environment() -> None:
    config = load_config(EXAMPLE, environ={"GATEWAY_KEY_PEPPER": "0123"})
    assert config.keys.hash_pepper == "0123"  # a string field keeps the text, not octal 83


def test_defaults_when_only_routes_are_given() -> None:
    config = parse_config(minimal(), "t.yaml", {})
    assert config == Config(
        source="t.yaml",
        database=f"sqlite:///{Path.cwd()}/gateway.db",  # the default, beside t.yaml
        routes=config.routes,
    )
    (route,) = config.routes
    assert route.upstreams == ("http://127.0.0.1:9000",)
    assert (route.auth, route.timeout, route.max_body_bytes) == ("required", 30.0, 10485760)


def test_shapes_are_normalised() -> None:
    route = {
        **ROUTE,
        "path": "/v1/items/{item_id}",
        "upstream": ["http://a:1", "https://b"],
        "permissions": {"get": ["read"], "*": ["write"]},
        "resource": "item_id",
        "operations": {"get": "read", "post": "write"},
        "cors": {"allow_origins": ["*"], "allow_methods": ["get", "post"]},
    }
    config = parse_config({"listen": "[::1]:8080", "routes": [route]}, "t.yaml", {})
    (parsed,) = config.routes
    assert config.listen == Listen("::1", 8080) and str(config.listen) == "[::1]:8080"
    assert parsed.path == "/v1/items/{item_id}/"
    assert parsed.upstreams == ("http://a:1", "https://b")
    assert parsed.permissions == {"GET": ("read",), "*": ("write",)}
    assert parsed.operations == {"GET": "read", "POST": "write"}
    assert parsed.cors is not None and parsed.cors.allow_methods == ("GET", "POST")


def test_unauthenticated_traffic_settings() -> None:
    config = parse_config(minimal(), "t.yaml", {})
    assert config.trusted_proxies == () and config.failed_auth == RateLimit(600, 60.0)
    data = {**minimal(), "trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
            "failed_auth": None}
    config = parse_config(data, "t.yaml", {})
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32",
                                                        "2001:db8::/32"]
    assert config.failed_auth is None  # null turns the budget off


def test_null_sections_are_empty() -> None:
    config = parse("keys:\nkey_cache:\npermissions:\ndefaults:\n" + yaml.safe_dump(minimal()))
    assert config.keys.prefixes == {"live": "sk_live", "test": "sk_test"}
    assert config.implies == {}


# ---- interpolation ---------------------------------------------------------------------------


def test_interpolation_default_and_set() -> None:
    text = "database: sqlite:///${DIR:-/var/lib}/gw.db\n" + yaml.safe_dump(minimal())
    assert parse(text).database == "sqlite:////var/lib/gw.db"
    assert parse(text, {"DIR": "/srv"}).database == "sqlite:////srv/gw.db"
    assert parse(text, {"DIR": ""}).database == "sqlite:////var/lib/gw.db"  # empty: default


def test_interpolation_several_per_string_and_dollar_escape() -> None:
    route = {**ROUTE, "upstream": "http://${HOST}:${PORT:-9000}/p$$x/$${NOT}"}
    config = parse_config({"routes": [route]}, "t.yaml", {"HOST": "h"})
    assert config.routes[0].upstreams == ("http://h:9000/p$x/${NOT}",)


def test_interpolation_reparses_a_whole_expression() -> None:
    text = (
        "workers: ${WORKERS:-2}\nredis: ${REDIS_URL:-null}\n"
        "defaults:\n  max_concurrent: ${MAXC:-null}\n"
        "  rate_limit: {requests: 5, window: '${W:-0.5}'}\n"
    ) + yaml.safe_dump(minimal())
    config = parse(text)
    assert (config.workers, config.redis, config.defaults.max_concurrent) == (2, None, None)
    assert config.defaults.rate_limit.window == 0.5
    config = parse(text, {"WORKERS": "4", "REDIS_URL": "redis://r:6379/0", "MAXC": "3"})
    assert (config.workers, config.redis, config.defaults.max_concurrent) == (
        4,
        "redis://r:6379/0",
        3,
    )


def test_interpolation_inside_text_is_not_reparsed() -> None:
    route = {**ROUTE, "name": "r${N:-1}"}
    assert parse_config({"routes": [route]}, "t.yaml", {}).routes[0].name == "r1"
    bad = minimal(workers="x${W:-2}")
    assert error(bad) == "t.yaml: workers: must be an integer between 1 and 64, got 'x2'"


def test_interpolation_string_fields_keep_the_text() -> None:
    route = {**ROUTE, "name": "${NAME}", "auth": "${AUTH:-none}"}
    config = parse_config({"routes": [route]}, "t.yaml", {"NAME": "007"})
    assert (config.routes[0].name, config.routes[0].auth) == ("007", "none")
    bad = minimal(defaults={"on_limiter_error": "${POLICY}"})
    assert error(bad, {"POLICY": "off"}) == (
        "t.yaml: defaults.on_limiter_error: must be one of open, closed, local, got 'off'"
    )


def test_interpolation_unset_variable_names_path_and_variable() -> None:
    data = minimal()
    data["routes"][0]["upstream"] = ["http://a", "${UPSTREAM}"]  # type: ignore[index]
    assert error(data) == (
        "t.yaml: routes[0].upstream[1]: environment variable UPSTREAM is not set and has no "
        "':-' default, got '${UPSTREAM}'"
    )


@pytest.mark.parametrize("text", ["${", "x${A", "${A-b}", "${A:-${B}}", "${}"])
def test_interpolation_malformed(text: str) -> None:
    message = error(minimal(database=text), {"A": "1", "B": "2"})
    assert message.startswith("t.yaml: database: ") and message.endswith(f", got {text!r}")


def test_interpolation_does_not_touch_keys_or_non_strings() -> None:
    config = parse_config(minimal(workers=3), "t.yaml", {})
    assert config.workers == 3


# ---- environment overrides -------------------------------------------------------------------


def test_env_overrides_database_and_redis() -> None:
    data = minimal(database="${UNSET_DB}", redis="redis://file:6379/0")
    env = {"GATEWAY_DATABASE_URL": "postgresql://u:p@db:5432/gw", "GATEWAY_REDIS_URL": "rediss://r"}
    config = parse_config(data, "t.yaml", env)
    assert (config.database, config.redis) == ("postgresql://u:p@db:5432/gw", "rediss://r")


@pytest.mark.parametrize("value", ["", "null", " null "])
def test_env_redis_override_to_none(value: str) -> None:
    config = parse_config(minimal(redis="redis://file"), "t.yaml", {"GATEWAY_REDIS_URL": value})
    assert config.redis is None


def test_env_empty_database_override_is_ignored() -> None:
    config = parse_config(minimal(), "t.yaml", {"GATEWAY_DATABASE_URL": ""})
    assert config.database == f"sqlite:///{Path.cwd()}/gateway.db"  # beside t.yaml


def test_env_overrides_are_validated_and_secrets_masked() -> None:
    env = {"GATEWAY_DATABASE_URL": "mysql://u:hunter2@db/gw"}
    message = error(minimal(), env)
    assert message.startswith("t.yaml: database (from GATEWAY_DATABASE_URL): must be ")
    assert "hunter2" not in message and "mysql://u:***@db/gw" in message
    message = error(minimal(), {"GATEWAY_REDIS_URL": "http://r"})
    assert message.startswith("t.yaml: redis (from GATEWAY_REDIS_URL): must be null or a redis")


# ---- accepted values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database",
    ["sqlite:////var/gw.db", "sqlite:///:memory:", "postgres://h/db"],
)
def test_accepted_databases(database: str) -> None:
    assert parse_config(minimal(database=database), "t.yaml", {}).database == database


@pytest.mark.parametrize(
    ("database", "environ", "file"),
    [
        ("sqlite:///./gw.db", {}, "/etc/gw/gw.db"),
        ("sqlite:///data/../gw.db?mode=rwc", {}, "/etc/gw/gw.db?mode=rwc"),
        (None, {}, "/etc/gw/gateway.db"),  # the default
        ("postgres://h/db", {"GATEWAY_DATABASE_URL": "sqlite:///x.db"}, "/etc/gw/x.db"),
    ],
)
def test_a_relative_sqlite_file_is_relative_to_the_config_file(
    database: str | None, environ: dict[str, str], file: str
) -> None:
    data = minimal() if database is None else minimal(database=database)
    assert parse_config(data, "/etc/gw/gateway.yaml", environ).database == "sqlite:///" + file


@pytest.mark.parametrize(
    "origin", ["*", "http://localhost:3000", "https://*.example.com:8443", "http://[::1]:8080"]
)
def test_accepted_origins(origin: str) -> None:
    route = {**ROUTE, "cors": {"allow_origins": [origin]}}
    assert parse_config({"routes": [route]}, "t.yaml", {}).routes[0].cors is not None


def test_duplicate_paths_differing_only_in_parameter_names() -> None:
    a = {**ROUTE, "path": "/v1/{a}/"}
    b = {**ROUTE, "name": "b", "path": "/v1/{b}"}
    assert error({"routes": [a, b]}) == (
        "t.yaml: routes[1].path: duplicate of routes[0].path, got '/v1/{b}/'"
    )


def test_admin_and_public_ports_must_differ_even_with_defaults() -> None:
    assert error(minimal(listen="0.0.0.0:8081")) == (
        "t.yaml: admin_listen: must not use the public listener's port 8081 (the admin API is "
        "never exposed on the public port), got '127.0.0.1:8081'"
    )


# ---- one failing fixture per rule ------------------------------------------------------------

CASES: dict[str, str] = {
    "not_a_mapping.yaml": "(top level): must be a mapping, got ['routes']",
    "invalid_yaml.yaml": (
        "line 2, column 1: invalid YAML: expected the node content, but found '<stream end>'"
    ),
    "duplicate_key.yaml": "line 2, column 1: duplicate key, got 'workers'",
    "unknown_top_key.yaml": (
        "route: unknown key (did you mean 'routes'? allowed: listen, admin_listen, workers, "
        "drain_timeout, database, redis, trusted_proxies, failed_auth, keys, permissions, "
        "defaults, key_cache, key_store, limiter, logging, limits, usage, console, "
        "secret_scanning, plans, "
        "default_plan, routes), got []"
    ),
    "missing_routes.yaml": "(top level): missing required key 'routes', got {'workers': 1}",
    "empty_routes.yaml": "routes: must be a non-empty list, got []",
    "route_not_a_mapping.yaml": "routes[0]: must be a mapping, got '/api/'",
    "listen_bad_port.yaml": (
        "listen: must be 'host:port' (IPv6 as '[::1]:port'), port 1-65535, got '127.0.0.1:70000'"
    ),
    "listen_ipv6_unbracketed.yaml": (
        "listen: must be 'host:port' (IPv6 as '[::1]:port'), port 1-65535; bracket IPv6 "
        "addresses, got '::1:8080'"
    ),
    "listen_no_host.yaml": (
        "listen: must be 'host:port' (IPv6 as '[::1]:port'), port 1-65535, got ':8080'"
    ),
    "same_listen_ports.yaml": (
        "admin_listen: must not use the public listener's port 8080 (the admin API is never "
        "exposed on the public port), got '127.0.0.1:8080'"
    ),
    "workers_bool.yaml": "workers: must be an integer between 1 and 64, got True",
    "workers_too_many.yaml": "workers: must be an integer between 1 and 64, got 65",
    "drain_timeout_zero.yaml": "drain_timeout: must be a number > 0, got 0",
    "database_bad_scheme.yaml": (
        "database: must be sqlite:///<file>, sqlite:///:memory:, postgresql://... or "
        "postgres://..., got 'mysql://gw:***@db/gw'"
    ),
    "redis_bad_scheme.yaml": (
        "redis: must be null or a redis://, rediss://, unix://, redis+cluster:// or "
        "rediss+cluster:// URL, got 'http://127.0.0.1:6379'"
    ),
    "unset_env_var.yaml": (
        "redis: environment variable REDIS_URL is not set and has no ':-' default, "
        "got '${REDIS_URL}'"
    ),
    "bad_interpolation.yaml": (
        "database: bad ${...} expression (use ${VAR}, ${VAR:-default} or $$ for '$'), got '${1DB}'"
    ),
    "unknown_keys_key.yaml": (
        "keys.pepper: unknown key (did you mean 'hash_pepper'? allowed: prefixes, "
        "max_active_per_user, hash_pepper), got 'x'"
    ),
    "prefixes_missing_test.yaml": (
        "keys.prefixes: missing required key 'test', got {'live': 'sk_live'}"
    ),
    "prefixes_same.yaml": (
        "keys.prefixes.test: must differ from the other environment's prefix, got 'sk'"
    ),
    "prefix_bad_chars.yaml": (
        "keys.prefixes.live: must be lower-case words joined by '_' (e.g. sk_live), max 32, "
        "got 'Sk-Live'"
    ),
    "max_active_zero.yaml": "keys.max_active_per_user: must be an integer >= 1, got 0",
    "implies_bad_permission.yaml": (
        "permissions.implies.write[0]: must be a permission name (1-100 of A-Za-z0-9_.:*-), "
        "got 'read all'"
    ),
    "implies_not_a_list.yaml": "permissions.implies.write: must be a list, got 'read'",
    "rate_limit_window_negative.yaml": "defaults.rate_limit.window: must be a number > 0, got -1",
    "rate_limit_missing_window.yaml": (
        "defaults.rate_limit: missing required key 'window', got {'requests': 10}"
    ),
    "max_concurrent_zero.yaml": "defaults.max_concurrent: must be an integer >= 1, got 0",
    "route_cost_zero.yaml": "routes[0].cost: must be an integer >= 1, got 0",
    "on_limiter_error_bad.yaml": (
        "defaults.on_limiter_error: must be one of open, closed, local, got 'fail'"
    ),
    "algorithm_bad.yaml": (
        "defaults.algorithm: must be one of sliding_log, sliding_counter, got 'token_bucket'"
    ),
    "route_algorithm_without_rate_limit.yaml": (
        "routes[0].algorithm: applies to the route's own rate_limit, which it does not set, "
        "got 'sliding_counter'"
    ),
    "redis_cluster_db.yaml": "redis: a Redis Cluster has only database 0, got "
    "'redis+cluster://127.0.0.1:7000,127.0.0.1:7001/2'",
    "redis_cluster_seeds_differ.yaml": (
        "redis.cluster[1]: must have the scheme, user, password and options of the first seed, "
        "got 'redis://other:***@127.0.0.1:7001'"
    ),
    "logging_format_bad.yaml": "logging.format: must be one of json, text, got 'xml'",
    "key_cache_ttl_zero.yaml": "key_cache.ttl: must be a number > 0, got 0",
    "limits_target_too_small.yaml": "limits.max_target_bytes: must be an integer >= 256, got 10",
    "key_store_timeout_zero.yaml": "key_store.timeout: must be a number > 0, got 0",
    "redis_bad_option.yaml": (
        "redis: is not a Redis URL redis-py accepts (Invalid value for 'socket_timeout' in "
        "connection URL.), got 'redis://127.0.0.1:6379/0?socket_timeout=x'"
    ),
    "limiter_prefix_braces.yaml": (
        "limiter.prefix: must be at most 64 of A-Z a-z 0-9 _ . : / - (no braces: the gateway "
        "adds Redis Cluster hash tags itself), got 'gw{x}:'"
    ),
    "limiter_expected_nodes_zero.yaml": (
        "limiter.expected_nodes: must be an integer between 1 and 10000, got 0"
    ),
    "key_store_pool_size_zero.yaml": (
        "key_store.pool_size: must be an integer between 1 and 1000, got 0"
    ),
    "key_cache_unknown_key.yaml": (
        "key_cache.size: unknown key (allowed: max_entries, ttl, negative_ttl, stale_if_error, "
        "poll_interval), got 10"
    ),
    "route_missing_upstream.yaml": (
        "routes[0]: missing required key 'upstream', got {'name': 'r', 'path': '/r/'}"
    ),
    "route_unknown_key.yaml": (
        "routes[0].upstreams: unknown key (did you mean 'upstream'? allowed: name, path, "
        "mode, upstream, health, strip_prefix, auth, permissions, rate_limit, max_concurrent, "
        "on_limiter_error, algorithm, cost, timeout, max_body_bytes, cors, resource, "
        "operations), got ['http://127.0.0.1:9001']"
    ),
    "route_verify_with_upstream.yaml": (
        "routes[1].upstream: a verify route (mode: verify) has no upstream, "
        "got 'http://127.0.0.1:9000'"
    ),
    "route_verify_with_permissions.yaml": (
        "routes[1].permissions: not used by a verify route (mode: verify): the route the "
        "original request matches decides, got ['read']"
    ),
    "route_bad_mode.yaml": "routes[0].mode: must be one of proxy, verify, got 'forward'",
    "route_bad_name.yaml": (
        "routes[0].name: must be 1-64 characters of A-Za-z0-9_.-, got 'my route'"
    ),
    "route_duplicate_name.yaml": "routes[1].name: duplicate of routes[0].name, got 'r'",
    "duplicate_route_path.yaml": "routes[1].path: duplicate of routes[0].path, got '/a/'",
    "route_path_no_slash.yaml": "routes[0].path: must start with '/', got 'api/'",
    "route_path_dotdot.yaml": "routes[0].path: must not contain '..', got '/api/../admin/'",
    "route_path_percent.yaml": "routes[0].path: must not contain '%' escapes, got '/api%2Fx/'",
    "route_path_query.yaml": "routes[0].path: must not contain a query, got '/api/?x=1'",
    "route_path_partial_param.yaml": (
        "routes[0].path: a {param} must be a whole path segment, got '/v1/x{id}/'"
    ),
    "route_path_duplicate_param.yaml": (
        "routes[0].path: path parameter 'id' appears twice, got '/v1/{id}/{id}/'"
    ),
    "route_path_bad_param_name.yaml": (
        "routes[0].path: path parameter '1st' must be a Python identifier, got '/v1/{1st}/'"
    ),
    "route_bad_upstream_scheme.yaml": (
        "routes[0].upstream: must be an http:// or https:// URL, got 'ftp://127.0.0.1'"
    ),
    "upstream_with_query.yaml": (
        "routes[0].upstream: must not have a query or fragment, got 'http://127.0.0.1:9000/?a=1'"
    ),
    "upstream_with_credentials.yaml": (
        "routes[0].upstream: must not contain credentials, got 'http://u:***@127.0.0.1:9000'"
    ),
    "upstream_empty_list.yaml": "routes[0].upstream: must be a non-empty list, got []",
    "upstream_no_host.yaml": (
        "routes[0].upstream[1]: must include a host (and a port 1-65535 if any), got 'http:///x'"
    ),
    "route_bad_auth.yaml": "routes[0].auth: must be one of required, none, got 'optional'",
    "strip_prefix_string.yaml": "routes[0].strip_prefix: must be true or false, got 'yes'",
    "permissions_bad_method.yaml": (
        "routes[0].permissions.FETCH: must be an HTTP method (GET, HEAD, POST, PUT, PATCH, "
        "DELETE, OPTIONS) or *, got 'FETCH'"
    ),
    "permissions_duplicate_method.yaml": (
        "routes[0].permissions.GET: method GET is listed twice, got 'GET'"
    ),
    "permissions_not_a_list.yaml": (
        "routes[0].permissions: must be a list of permissions or a mapping of method to list, "
        "got 'read'"
    ),
    "permissions_with_auth_none.yaml": (
        "routes[0].permissions: cannot be checked with auth: none, got ['read']"
    ),
    "rate_limit_zero.yaml": "routes[0].rate_limit.requests: must be an integer >= 1, got 0",
    "route_max_concurrent_float.yaml": (
        "routes[0].max_concurrent: must be an integer >= 1, got 1.5"
    ),
    "timeout_zero.yaml": "routes[0].timeout: must be a number > 0, got 0",
    "max_body_negative.yaml": "routes[0].max_body_bytes: must be an integer >= 0, got -1",
    "resource_not_a_param.yaml": (
        "routes[0].resource: must name a {param} of the path (id), got 'retriever_id'"
    ),
    "resource_with_auth_none.yaml": (
        "routes[0].resource: cannot be checked with auth: none, got 'id'"
    ),
    "operations_without_resource.yaml": (
        "routes[0].operations: needs 'resource' (the path parameter it checks), got {'GET': 'read'}"
    ),
    "operations_empty.yaml": (
        "routes[0].operations.GET: must be a non-empty operation name without surrounding "
        "spaces, got ''"
    ),
    "cors_missing_origins.yaml": (
        "routes[0].cors: missing required key 'allow_origins', got {'max_age': 600}"
    ),
    "cors_origin_with_path.yaml": (
        "routes[0].cors.allow_origins[1]: must be '*', 'http(s)://host[:port]' or "
        "'http(s)://*.domain.tld[:port]' (no path, not even a trailing '/'), "
        "got 'https://example.com/'"
    ),
    "cors_origin_uppercase.yaml": (
        "routes[0].cors.allow_origins[0]: must be lower-case, got 'https://App.example.com'"
    ),
    "cors_origin_wildcard_tld.yaml": (
        "routes[0].cors.allow_origins[0]: a wildcard must be under a domain (*.example.com), "
        "not a whole TLD, got 'https://*.com'"
    ),
    "cors_credentials_with_star.yaml": (
        "routes[0].cors.allow_credentials: cannot be true when allow_origins contains '*', got True"
    ),
    "cors_bad_method.yaml": (
        "routes[0].cors.allow_methods[1]: must be an HTTP method (GET, HEAD, POST, PUT, PATCH, "
        "DELETE, OPTIONS), got 'FETCH'"
    ),
    "cors_max_age_negative.yaml": "routes[0].cors.max_age: must be an integer >= 0, got -1",
    "plan_bad_name.yaml": (
        "plans.Free Tier: must be 1-64 of a-z 0-9 _ . - (starting with a letter or digit), "
        "got 'Free Tier'"
    ),
    "plan_quota_zero.yaml": "plans.free.quota.day: must be an integer >= 1, got 0",
    "plan_quota_unknown_period.yaml": (
        "plans.free.quota.week: unknown key (allowed: day, month, shadow), got 10"
    ),
    "plan_quota_shadow_not_bool.yaml": (
        "plans.free.quota.shadow: must be true or false, got 'yes please'"
    ),
    "route_shadow_with_auth_none.yaml": (
        "routes[0].rate_limit.shadow: is for keyed routes: an auth: none route's limit is per "
        "client address, got True"
    ),
    "plan_max_active_zero.yaml": (
        "plans.free.max_active_keys_per_user: must be an integer >= 1, got 0"
    ),
    "default_plan_unknown.yaml": "default_plan: must name a plan of 'plans' (free), got 'pro'",
    "trusted_proxies_bad_cidr.yaml": (
        "trusted_proxies[1]: must be an IP address or a CIDR range such as 10.0.0.0/8, "
        "got 'proxy.internal'"
    ),
    "trusted_proxies_host_bits.yaml": (
        "trusted_proxies[0]: has host bits set below the prefix length (did you mean "
        "10.0.0.0/8?), got '10.1.2.3/8'"
    ),
    "trusted_proxies_not_a_list.yaml": "trusted_proxies: must be a list, got '10.0.0.0/8'",
    "failed_auth_zero.yaml": "failed_auth.requests: must be an integer >= 1, got 0",
    "failed_auth_unknown_key.yaml": (
        "failed_auth.per_minute: unknown key (allowed: requests, window), got 600"
    ),
    "cors_bad_header.yaml": (
        "routes[0].cors.allow_headers[0]: must be a header name (an RFC 9110 token), "
        "got 'X Api Key'"
    ),
    "secret_scanning_not_a_url.yaml": (
        "secret_scanning.github.public_keys: must be an https URL or a file path, "
        "got 'ftp://keys.example.com/secret_scanning'"
    ),
    "secret_scanning_plain_http.yaml": (
        "secret_scanning.github.public_keys: must be an https URL (plain http only to a "
        "loopback host), got 'http://keys.example.com/secret_scanning'"
    ),
    "secret_scanning_no_public_keys.yaml": (
        "secret_scanning.github: missing required key 'public_keys', got {'cache_ttl': 600}"
    ),
}


@pytest.mark.parametrize(("name", "expected"), CASES.items(), ids=list(CASES))
def test_invalid_fixture(name: str, expected: str) -> None:
    path = FIXTURES / name
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message == f"{path}: {expected}"
    assert "\n" not in message


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(CASES)


# ---- reading the file ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file: No such file"):
        load_config(path)


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"routes: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not valid UTF-8"):
        load_config(binary)


@pytest.mark.parametrize(
    "text", ["", "!!python/object:os.system {}\n", "a: 1\n---\nb: 2\n", "routes: *x\n"]
)
def test_unusual_documents_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# ---- robustness: any wrong value anywhere is a ConfigError, never a crash --------------------

BAD_VALUES: list[object] = [None, True, 0, -1, 1.5, float("nan"), "", "x y", [], {}, [{}], "${X"]


def _leaf_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(node, dict):
        items: list[tuple[object, object]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return [prefix]
    paths = [prefix] if prefix else []
    for key, value in items:
        paths.extend(_leaf_paths(value, (*prefix, key)))
    return paths


def test_every_value_of_the_example_replaced_by_garbage() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    checked = 0
    for path in _leaf_paths(example):
        for bad in BAD_VALUES:
            data = copy.deepcopy(example)
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = bad
            try:
                parse_config(data, "x.yaml", {})
            except ConfigError as exc:
                assert str(exc).startswith("x.yaml: ") and "\n" not in str(exc)
            checked += 1
    assert checked > 500


def test_the_examples_commented_plans_parse_when_uncommented() -> None:
    """The ``plans:`` and ``default_plan:`` lines of config/gateway.yaml, uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# plans:")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    block.append(next(line[2:] for line in lines if line.startswith("# default_plan:")))
    config = parse_config({**yaml.safe_load("\n".join(block)), **minimal()}, "t.yaml", {})
    assert list(config.plans) == ["free", "pro", "trial"] and config.default_plan == "free"
    trial = config.plans["trial"].quota
    assert (trial.day, trial.shadow) == (500, True)  # README "Shadow mode"
    free, pro = config.plans["free"], config.plans["pro"]
    assert (free.rate_limit, free.quota.day, free.quota.month, free.max_concurrent) == (
        RateLimit(100, 60.0), 1000, 20000, 10
    )
    assert (pro.quota.day, pro.quota.month, pro.max_active_keys_per_user) == (None, 1000000, 50)


def test_a_redis_cluster_in_either_form_picks_the_cluster_limiter() -> None:
    """README "Redis Cluster": the mapping form is kept as the one-string form that
    GATEWAY_REDIS_URL carries, with the seeds' credentials and options."""
    seeds = {"cluster": ["rediss://gw:pw@10.0.0.1:7000?ssl_cert_reqs=none",
                         "rediss://gw:pw@10.0.0.2:7001?ssl_cert_reqs=none"]}
    config = parse_config(minimal(redis=seeds), "t.yaml", {})
    assert config.redis == "rediss+cluster://gw:pw@10.0.0.1:7000,10.0.0.2:7001?ssl_cert_reqs=none"
    assert cluster_seeds(config.redis)[1] == "rediss://gw:pw@10.0.0.2:7001?ssl_cert_reqs=none"
    from_env = parse_config(minimal(), "t.yaml", {"GATEWAY_REDIS_URL": "redis+cluster://a:1,b:2"})
    assert from_env.redis == "redis+cluster://a:1,b:2"
    limiter = create_limiter(from_env)
    assert isinstance(limiter, RedisRateLimiter) and limiter.target == "cluster a:1,b:2"
