"""``/metrics`` of a real gateway: what traffic shows up where, and a flood of random paths and
keys that must not add series (labels are bounded: never a key, a path or an address)."""

from __future__ import annotations

import asyncio
import random
import string
from dataclasses import replace

import aiohttp
import httptools

from gateway.errors import ErrorKind
from gateway.errors import __dict__ as error_names
from gateway.metrics import METHODS, NO_ROUTE, STATUS_CLASSES
from gateway.pipeline.record import build_recorder
from gateway.upstream import UpstreamGroup
from tests.conftest import (
    Gateway,
    GatewayFactory,
    Tagged,
    bearer,
    raw_request,
    well_formed_unknown_key,
)
from tests.ops.metrics_text import samples, scrape, total, value

ERROR_CODES = {k.code for k in error_names.values() if isinstance(k, ErrorKind)}


async def test_traffic_by_route_status_class_cache_and_auth(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    unknown = well_formed_unknown_key()
    for _ in range(3):
        async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
            assert response.status == 200
    for _ in range(2):
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(unknown)) as response:
            assert response.status == 401
    async with http.get(f"{gateway.url}/nowhere") as response:
        assert response.status == 404
    async with http.post(f"{gateway.url}/public/x", data=b"{}") as response:
        assert response.status == 200
    text = await scrape(http, gateway.admin_url)

    def requests(route: str, method: str, status_class: str) -> float:
        labels = {"route": route, "method": method, "status_class": status_class}
        return value(text, "gateway_requests_total", **labels)

    assert requests("models", "GET", "2xx") == 3
    assert requests("models", "GET", "4xx") == 2
    assert requests(NO_ROUTE, "GET", "4xx") == 1
    assert requests("public", "POST", "2xx") == 1
    assert value(text, "gateway_request_duration_seconds_count", route="models") == 5
    assert value(text, "gateway_upstream_duration_seconds_count", route="models") == 3
    assert value(text, "gateway_upstream_duration_seconds_count", route="public") == 1
    assert value(text, "gateway_errors_total", code="route_not_found") == 1
    assert value(text, "gateway_auth_failures_total", code="invalid_api_key") == 2
    assert value(text, "gateway_key_cache_lookups_total", result="miss") == 2  # key, unknown
    assert value(text, "gateway_key_cache_lookups_total", result="hit") == 2
    assert value(text, "gateway_key_cache_lookups_total", result="negative_hit") == 1
    assert value(text, "gateway_key_cache_entries") == 2
    assert value(text, "gateway_upstream_connections", route="models", state="idle") == 1
    assert value(text, "gateway_requests_in_flight") == 0


async def test_store_errors_by_operation(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    cached = await gateway.key()
    uncached = await gateway.key()
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(cached)) as response:
        assert response.status == 200
    await gateway.services.store.close()  # the key store goes away
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(uncached)) as response:
        assert response.status == 503
    project = {**bearer(cached), "X-Project-Id": "proj_elsewhere"}  # needs the workspace's projects
    async with http.get(f"{gateway.url}/api/ai/x", headers=project) as response:
        assert response.status == 503
    text = await scrape(http, gateway.admin_url)
    assert value(text, "gateway_store_errors_total", operation="key_lookup") == 1
    assert value(text, "gateway_store_errors_total", operation="tenancy") == 1
    assert value(text, "gateway_errors_total", code="auth_unavailable") == 2


async def test_in_flight_and_busy_upstream_connections(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, first: Tagged
) -> None:
    gateway = await make_gateway(routes=[
        {"name": "slow", "path": "/slow/", "upstream": first.url, "auth": "none"},
    ])
    waiting = asyncio.ensure_future(http.get(f"{gateway.url}/slow/x/hold"))
    await first.holding.wait()
    text = await scrape(http, gateway.admin_url)
    assert value(text, "gateway_requests_in_flight") == 1
    assert value(text, "gateway_upstream_connections", route="slow", state="busy") == 1
    first.released.set()
    async with await waiting as response:
        assert response.status == 200
    text = await scrape(http, gateway.admin_url)
    assert value(text, "gateway_requests_in_flight") == 0
    assert value(text, "gateway_upstream_connections", route="slow", state="busy") == 0
    assert value(text, "gateway_upstream_connections", route="slow", state="idle") == 1


async def test_pool_usage_follows_the_config_in_force(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    text = await scrape(http, gateway.admin_url)
    assert 'gateway_upstream_connections{route="models"' in text
    group = UpstreamGroup([gateway.upstream.url])
    try:  # what a reload does: a pipeline built from services with other upstreams
        build_recorder(replace(gateway.services, upstreams={"renamed": group}))
        text = await scrape(http, gateway.admin_url)
        assert 'gateway_upstream_connections{route="renamed",state="idle"} 0.0' in text
        assert 'gateway_upstream_connections{route="models"' not in text  # removed by it
    finally:
        await group.close()


async def test_requests_the_http_parser_refuses(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    response = await raw_request(
        gateway.port, f"GET /api/ai/x HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\x01\n"
    )
    assert response.status == 400
    assert response.header("Content-Type") == "application/problem+json"
    assert b'"code":"bad_request"' in response.body
    assert key.encode() not in response.body  # aiohttp's own 400 quotes the line
    text = await scrape(http, gateway.admin_url)
    assert value(text, "gateway_errors_total", code="bad_request") == 1
    assert value(text, "gateway_requests_total", route=NO_ROUTE, method="OTHER",
                 status_class="4xx") == 1


# ---- bounded series ----------------------------------------------------------------------------

FLOOD = 10_000
WARM_UP = 2_000
SEGMENT = string.ascii_letters + string.digits + "-._~"
ODD_METHODS = ("PROPFIND", "PURGE", "REPORT", "MKCOL")  # parsed by llhttp, not standard


def token(rng: random.Random, low: int = 4, high: int = 24) -> str:
    return "".join(rng.choices(SEGMENT, k=rng.randint(low, high)))


def random_head(rng: random.Random, key: str) -> bytes:
    path = rng.choice([
        "/api/ai/{}", "/api/ai/{}/{}", "/v1/retrievers/{}/{}", "/public/{}", "/based/{}",
        "/{}", "/{}/{}/{}", "/api/{}",
    ]).format(*(token(rng) for _ in range(3)))
    if rng.random() < 0.3:
        path += f"?{token(rng)}={token(rng)}"
    method = rng.choice(["GET", "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                         *ODD_METHODS])
    auth = rng.choice([
        "", f"Bearer {key}", f"Bearer {well_formed_unknown_key()}",
        f"Bearer sk_live_{token(rng, 32, 32)}", f"Bearer {token(rng)}", f"Basic {token(rng)}",
    ])
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", "Content-Length: 0"]
    if auth:
        lines.append(f"Authorization: {auth}")
    if rng.random() < 0.1:
        lines.append(f"X-Request-Id: {token(rng)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def pipelined(port: int, heads: list[bytes], window: int = 64) -> list[int]:
    """Send ``heads`` on one connection, up to ``window`` outstanding; the statuses."""
    statuses: list[int] = []

    class Responses:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Responses())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while len(statuses) < len(heads):
            room = window - (sent - len(statuses))
            if sent < len(heads) and room > window // 2:
                writer.write(b"".join(heads[sent:sent + room]))
                sent += len(heads[sent:sent + room])
            data = await reader.read(1 << 16)
            assert data, f"connection closed after {len(statuses)} responses"
            parser.feed_data(data)
    finally:
        writer.close()
    return statuses


async def flood(gateway: Gateway, rng: random.Random, key: str, count: int) -> list[int]:
    heads = [random_head(rng, key) for _ in range(count)]
    parts = [heads[i::4] for i in range(4)]
    results = await asyncio.gather(*(pipelined(gateway.port, part) for part in parts))
    return [status for statuses in results for status in statuses]


def label_values_are_bounded(text: str, routes: set[str], targets: set[str]) -> None:
    allowed = {
        "route": routes | {NO_ROUTE},
        "method": METHODS | {"OTHER"},
        "status_class": set(STATUS_CLASSES),
        "code": ERROR_CODES,
        "policy": {"open", "closed", "local"},
        "operation": {"key_lookup", "tenancy"},
        "result": {"hit", "miss", "negative_hit"},
        "state": {"busy", "idle"},
        "target": targets,  # the upstream URLs of the config
    }
    for sample in samples(text):
        for name, label in sample.labels.items():
            if name != "le":
                assert label in allowed[name], (sample.name, name, label)


async def test_random_paths_and_keys_add_no_series(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    rng = random.Random(6)
    key = await gateway.key()
    statuses = await flood(gateway, rng, key, WARM_UP)
    assert {200, 401, 404} <= set(statuses)
    before = await scrape(http, gateway.admin_url)
    statuses = await flood(gateway, rng, key, FLOOD)
    after = await scrape(http, gateway.admin_url)
    assert len(statuses) == FLOOD
    routes = {r.name for r in gateway.services.config.routes}
    targets = {url for r in gateway.services.config.routes for url in r.upstreams}
    label_values_are_bounded(after, routes, targets)
    grown = len(samples(after)) - len(samples(before))
    assert grown <= 30, f"{grown} new series after {FLOOD} random requests"
    assert len(samples(after)) < 1000
    counted = total(after, "gateway_requests_total") - total(before, "gateway_requests_total")
    assert counted == FLOOD
