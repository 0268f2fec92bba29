"""Canary keys through every error path of SPEC §5, in every position a client might put them
(Authorization, query string, other headers, the path): no log line (every logger at DEBUG, the
JSON handler's output, the access log), no metric and no response may contain one."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.keys.model import generate_key, utcnow
from gateway.logs import configure_logging
from tests.conftest import (
    Gateway,
    GatewayFactory,
    Upstream,
    default_routes,
    raw_request,
    start_site,
    well_formed_unknown_key,
)
from tests.ops.metrics_text import scrape

PREFIX = "sk_live_"


@dataclass
class Seen:
    """Everything the gateway said back, to search for the canaries afterwards."""

    responses: list[str] = field(default_factory=list)
    codes: set[str] = field(default_factory=set)

    def add(self, status: int, headers: Any, body: bytes) -> None:
        self.responses.append(f"{status}\n{headers}\n{body.decode('latin-1')}")


@dataclass
class SlowUpstream:
    url: str
    entered: asyncio.Event
    release: asyncio.Event


@pytest.fixture
async def slow_upstream() -> AsyncIterator[SlowUpstream]:
    entered, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    async def hold(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_route("*", "/hang/{tail:.*}", hang)
    app.router.add_route("*", "/hold/{tail:.*}", hold)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    port = await start_site(runner)
    yield SlowUpstream(f"http://127.0.0.1:{port}", entered, release)
    release.set()
    await runner.cleanup()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The JSON handler's output; caplog records every logger at DEBUG meanwhile."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


def decorated(key: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Every other place a client might paste its key."""
    return {
        "X-Api-Key": key,
        "X-Request-Id": key,
        "Cookie": f"session={key}",
        "Referer": f"https://app.example.com/?key={key}",
        "User-Agent": key,
        **(headers or {}),
    }


class Client:
    def __init__(self, http: aiohttp.ClientSession, gateway: Gateway, seen: Seen) -> None:
        self.http = http
        self.gateway = gateway
        self.seen = seen

    async def refused(
        self, status: int, code: str, method: str, path: str, key: str, *,
        auth: str | None = "Bearer", headers: dict[str, str] | None = None, **kwargs: Any,
    ) -> None:
        """Send ``key`` in every position (``auth``: the Authorization scheme, "" for the bare
        key, None for no Authorization); the answer must be ``status`` ``code``."""
        sent = decorated(key, headers)
        if auth is not None:
            sent["Authorization"] = f"{auth} {key}".strip()
        url = f"{self.gateway.url}{path}?api_key={key}&token={key}"
        async with self.http.request(method, url, headers=sent, **kwargs) as response:
            body = await response.read()
        self.seen.add(response.status, response.headers, body)
        assert response.status == status, body
        assert f'"code":"{code}"'.encode() in body, body
        assert response.headers["X-Request-Id"] != key
        self.seen.codes.add(code)

    async def ok(self, path: str, key: str) -> None:
        """Plain use of a key (to cache it or spend its budget); not an error path."""
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.get(f"{self.gateway.url}{path}", headers=headers) as response:
            assert response.status == 200

    async def raw(self, status: int, code: str, head: str, key: str) -> None:
        response = await raw_request(self.gateway.port, head)
        self.seen.add(response.status, response.headers, response.body)
        assert response.status == status and f'"code":"{code}"'.encode() in response.body
        self.seen.codes.add(code)


async def make_canary_gateway(
    make_gateway: GatewayFactory, upstream: Upstream, slow: SlowUpstream
) -> Gateway:
    routes = [
        *default_routes(upstream.url),
        {"name": "hang", "path": "/hang/", "upstream": slow.url, "timeout": 0.3},
        {"name": "hold", "path": "/hold/", "upstream": slow.url},
        {"name": "dead", "path": "/dead/", "upstream": "http://127.0.0.1:9"},
    ]
    return await make_gateway(routes=routes)


async def test_no_canary_in_any_log_metric_or_response(
    make_gateway: GatewayFactory, upstream: Upstream, slow_upstream: SlowUpstream,
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, logs: io.StringIO,
) -> None:
    gateway = await make_canary_gateway(make_gateway, upstream, slow_upstream)
    configure_logging(gateway.services.config, logs)
    caplog.set_level(logging.DEBUG)
    access = io.StringIO()
    assert gateway.services.access_log is not None
    gateway.services.access_log.stream = access
    seen = Seen()
    client = Client(http, gateway, seen)
    canaries = await refuse_every_way(client, gateway, slow_upstream)

    gateway.services.access_log.flush()
    metrics = await scrape(http, gateway.admin_url)
    assert len(seen.responses) >= 25 and access.getvalue().count("\n") >= 25
    assert seen.codes >= {
        "bad_request", "missing_api_key", "invalid_api_key", "revoked_api_key",
        "expired_api_key", "insufficient_permissions", "resource_forbidden",
        "origin_not_allowed", "route_not_found", "payload_too_large", "rate_limited",
        "concurrency_limited", "upstream_unavailable", "upstream_timeout", "auth_unavailable",
    }
    places = {
        "caplog": caplog.text + "\n".join(str(vars(r)) for r in caplog.records),
        "json log": logs.getvalue(),
        "access log": access.getvalue(),
        "metrics": metrics,
        "responses": "\n".join(seen.responses),
    }
    for key in canaries:
        secret = key[len(PREFIX):]  # the random part and checksum: any fragment leaking
        for place, text in places.items():
            assert secret not in text, f"a canary key in the {place}"


async def refuse_every_way(
    client: Client, gateway: Gateway, slow: SlowUpstream
) -> list[str]:
    """Drive each SPEC §5 error with canary keys; the keys used."""
    reader = await gateway.key(permissions=["read"])
    writer = await gateway.key()
    unknown = well_formed_unknown_key()
    bad_checksum = generate_key("sk_live")[:-1] + "0"
    canaries = [reader, writer, unknown, bad_checksum]
    canaries += await refuse_malformed(client, reader)
    for key in (unknown, bad_checksum):
        await client.refused(401, "invalid_api_key", "GET", "/api/ai/models", key)
        await client.refused(401, "invalid_api_key", "GET", "/api/ai/models", key, auth="Basic")
        await client.refused(401, "invalid_api_key", "GET", "/api/ai/models", key, auth="")
    await client.refused(401, "missing_api_key", "GET", "/api/ai/models", reader, auth=None)
    await client.refused(401, "missing_api_key", "GET", f"/api/ai/{reader}", reader, auth=None)
    await client.refused(404, "route_not_found", "GET", f"/nowhere/{reader}", reader)
    await client.refused(403, "insufficient_permissions", "POST", "/api/ai/models", reader,
                         data=b"{}")
    canaries += await refuse_key_states(client, gateway)
    canaries += await refuse_limits(client, gateway, slow)
    await client.refused(413, "payload_too_large", "POST", "/api/ai/upload", writer,
                         data=io.BytesIO(b"x" * (1024 * 1024 + 1)))
    await client.refused(502, "upstream_unavailable", "GET", "/dead/x", writer)
    await client.refused(504, "upstream_timeout", "GET", "/hang/x", writer)
    uncached = await gateway.key()
    await gateway.services.store.close()  # the key store goes away
    await client.refused(503, "auth_unavailable", "GET", "/api/ai/models", uncached)
    return [*canaries, uncached]


async def refuse_malformed(client: Client, key: str) -> list[str]:
    await client.refused(400, "bad_request", "GET", "/api/ai/models", key,
                         headers={"X_Api_Key": key})
    for head in (
        f"GET /api/ai/..%2F..%2F{key} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n",
        f"GET /api/ai/x?key={key} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
        f"Authorization: Bearer {key}\n",
        f"GET /api/ai/x?key={key} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\x01\n",
        f"GET /api/ai/x?key={key}\x01 HTTP/1.1\nHost: x\n",
        f"GET /api/ai/x HTTP/1.1\nHost: x\nBad Header: {key}\n",
        f"BREW /api/ai/x?key={key} HTTP/1.1\nHost: x\n",
    ):
        await client.raw(400, "bad_request", head, key)
    return []


async def refuse_key_states(client: Client, gateway: Gateway) -> list[str]:
    revoked = await gateway.key()
    await client.ok("/api/ai/models", revoked)  # cached first: revocation must evict it
    await gateway.keys.revoke_key(gateway.created[-1].key_id, "test")
    await client.refused(401, "revoked_api_key", "GET", "/api/ai/models", revoked)
    expiring = await gateway.key(expires_at=(utcnow() + timedelta(seconds=1)).isoformat())
    await client.ok("/api/ai/models", expiring)
    origin = await gateway.key(allowed_origins=["https://app.example.com"])
    await client.refused(403, "origin_not_allowed", "GET", "/api/ai/models", origin,
                         headers={"Origin": "https://evil.example.net"})
    scoped = await gateway.key(scopes=[{"resource_id": "r1", "operations": ["read"]}])
    await client.refused(403, "resource_forbidden", "GET", "/v1/retrievers/r2/x", scoped)
    await asyncio.sleep(1.1)
    await client.refused(401, "expired_api_key", "GET", "/api/ai/models", expiring)
    return [revoked, expiring, origin, scoped]


async def refuse_limits(client: Client, gateway: Gateway, slow: SlowUpstream) -> list[str]:
    limited = await gateway.key(rate_limit_override=1)
    await client.ok("/api/ai/models", limited)
    await client.refused(429, "rate_limited", "GET", "/api/ai/models", limited)
    single = await gateway.key(concurrency_limit=1)
    held = asyncio.ensure_future(
        client.http.get(f"{gateway.url}/hold/x", headers={"Authorization": f"Bearer {single}"})
    )
    await slow.entered.wait()
    await client.refused(429, "concurrency_limited", "GET", "/hold/y", single)
    slow.release.set()
    async with await held as response:
        assert response.status == 200
    return [limited, single]
