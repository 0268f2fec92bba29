"""Unauthenticated traffic against real gateway processes (README "Unauthenticated traffic"):
an ``auth: none`` route's ``rate_limit`` per client address, the client address from
``X-Forwarded-For`` only through ``trusted_proxies``, and the failed-authentication budget,
on the in-process limiter and across two nodes sharing Redis.

Every request comes from 127.0.0.1; a config that trusts it plays a proxy that names other
clients in ``X-Forwarded-For`` (documentation ranges: 192.0.2.0/24, 198.51.100.0/24, ...).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, free_port, well_formed_unknown_key
from tests.gateway_process import GatewayProcess
from tests.limiter.conftest import REDIS_URL, require_redis
from tests.limiter.test_multiprocess import create_key

A, B = "198.51.100.1", "198.51.100.2"


def routes(upstream: Upstream, open_limit: int = 3) -> list[dict[str, Any]]:
    return [
        {"name": "open", "path": "/open/", "upstream": upstream.url, "auth": "none",
         "rate_limit": {"requests": open_limit, "window": 60}},
        {"name": "api", "path": "/api/", "upstream": upstream.url, "permissions": ["read"]},
    ]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> AsyncIterator[Callable[..., Any]]:
    """Start ``count`` gateway nodes on one SQLite store with the config ``top``."""
    started: list[GatewayProcess] = []

    async def factory(count: int = 1, open_limit: int = 3, **top: Any) -> list[GatewayProcess]:
        database = f"sqlite:///{tmp_path}/gateway.db"
        table = routes(upstream, open_limit)
        nodes = [
            GatewayProcess.create(tmp_path / f"node{len(started) + i}", table,
                                  database=database, **top)
            for i in range(count)
        ]
        started.extend(nodes)
        nodes[0].admin_key()  # migrates the store before any node opens it
        if top.get("redis", REDIS_URL) == REDIS_URL:
            await GatewayProcess.start_all(nodes, http)
        else:  # a dead Redis: /readyz says 503 for as long, so wait for /healthz
            for node in nodes:
                node.start()
                await until_healthy(http, node)
        return nodes

    yield factory
    for node in started:
        node.stop()


async def until_healthy(http: aiohttp.ClientSession, node: GatewayProcess) -> None:
    for _ in range(400):
        try:
            async with http.get(f"{node.admin_url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"gateway not healthy:\n{node.log_text()}")


async def get(
    http: aiohttp.ClientSession, url: str, client: str | None = None, key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {}
    if client is not None:
        headers["X-Forwarded-For"] = client
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.get(url, headers=headers) as response:
        body = await response.json(content_type=None)
        return response.status, dict(response.headers), body


async def new_key(http: aiohttp.ClientSession, node: GatewayProcess) -> str:
    return await create_key(http, node, node.admin_key(), "k")


async def access_log_clients(node: GatewayProcess, count: int) -> list[str]:
    """The ``client`` field of the first ``count`` access-log lines (written within 0.25 s)."""
    await node.wait_log('"message":"request"', count=count)
    lines = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
    return [line["client"] for line in lines if line.get("message") == "request"]


# ---- per-address limits on an open route ------------------------------------------------------


async def test_open_route_limits_each_forwarded_address_across_two_nodes(
    start: Callable[..., Any], http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    require_redis()
    nodes = await start(2, redis=REDIS_URL, limiter={"prefix": redis_prefix},
                        trusted_proxies=["127.0.0.1"])
    remaining = []
    for i in range(3):  # A's three requests alternate between the nodes: one budget
        status, headers, _ = await get(http, f"{nodes[i % 2].url}/open/x", A)
        assert status == 200
        assert headers["RateLimit-Limit"] == "3"
        remaining.append(headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    status, headers, body = await get(http, f"{nodes[1].url}/open/x", A)
    assert (status, body["code"]) == (429, "rate_limited")
    assert 50 <= int(headers["Retry-After"]) <= 60
    assert body["detail"] == "rate limit exceeded for this client address"
    status, headers, _ = await get(http, f"{nodes[0].url}/open/x", B)  # B has its own budget
    assert (status, headers["RateLimit-Remaining"]) == (200, "2")


async def test_an_untrusted_peer_is_the_client_whatever_it_forwards(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    (node,) = await start(trusted_proxies=["10.0.0.0/8"])  # 127.0.0.1 is not trusted
    for i in range(3):
        status, _, echoed = await get(http, f"{node.url}/open/x", f"192.0.2.{i}")
        assert status == 200
        assert echoed["headers"]["X-Forwarded-For"] == "127.0.0.1"  # its copy is dropped
    status, _, body = await get(http, f"{node.url}/open/x", "192.0.2.99")
    assert (status, body["code"]) == (429, "rate_limited")  # one budget: the peer's
    assert set(await access_log_clients(node, 4)) == {"127.0.0.1"}


async def test_the_client_is_the_right_most_untrusted_hop(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    (node,) = await start(trusted_proxies=["127.0.0.1/32", "192.0.2.0/24"])
    # 6.6.6.6 is whatever the client wrote; 203.0.113.9 is who connected to the proxy 192.0.2.7
    status, _, echoed = await get(http, f"{node.url}/open/x", "6.6.6.6, 203.0.113.9, 192.0.2.7")
    assert status == 200
    assert echoed["headers"]["X-Forwarded-For"] == "203.0.113.9, 192.0.2.7, 127.0.0.1"
    status, _, echoed = await get(http, f"{node.url}/open/x", "192.0.2.8")  # all trusted
    assert echoed["headers"]["X-Forwarded-For"] == "192.0.2.8, 127.0.0.1"
    status, _, echoed = await get(http, f"{node.url}/open/x", "not-an-address, 192.0.2.9")
    assert echoed["headers"]["X-Forwarded-For"] == "192.0.2.9, 127.0.0.1"
    assert await access_log_clients(node, 3) == ["203.0.113.9", "192.0.2.8", "192.0.2.9"]


async def test_open_route_follows_on_limiter_error(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    nodes = {}
    for policy in ("closed", "open", "local"):
        (nodes[policy],) = await start(redis=dead, limiter={"timeout": 0.05},
                                       defaults={"on_limiter_error": policy})
    status, headers, body = await get(http, f"{nodes['closed'].url}/open/x")
    assert (status, body["code"], headers["Retry-After"]) == (503, "rate_limit_unavailable", "1")
    for _ in range(5):  # open: admitted, and no limit to show
        status, headers, _ = await get(http, f"{nodes['open'].url}/open/x")
        assert status == 200 and "RateLimit-Limit" not in headers
    statuses = [(await get(http, f"{nodes['local'].url}/open/x"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # local: this process's share, 3 / (1 x 1)


# ---- the failed-authentication budget ---------------------------------------------------------


async def test_failed_auth_budget_across_two_nodes_on_redis(
    start: Callable[..., Any], http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    require_redis()
    nodes = await start(2, redis=REDIS_URL, limiter={"prefix": redis_prefix},
                        trusted_proxies=["127.0.0.1"], failed_auth={"requests": 5, "window": 60})
    good = await new_key(http, nodes[0])
    for i in range(5):  # a missing key, malformed, unknown ...: every 401 counts, on any node
        key = [None, "sk_live_nonsense", well_formed_unknown_key()][i % 3]
        status, _, body = await get(http, f"{nodes[i % 2].url}/api/x", A, key)
        assert status == 401, body
    # node 0 counted the fifth: it refuses A at once; node 1 learns it from A's next failure
    status, headers, body = await get(http, f"{nodes[0].url}/api/x", A, good)
    assert (status, body["code"]) == (429, "too_many_failed_auth")
    assert 50 <= int(headers["Retry-After"]) <= 60
    status, _, body = await get(http, f"{nodes[1].url}/api/x", A, well_formed_unknown_key())
    assert (status, body["code"]) == (429, "too_many_failed_auth")
    for node in nodes:  # now neither looks at A's keys, good ones included
        status, _, body = await get(http, f"{node.url}/api/x", A, good)
        assert (status, body["code"]) == (429, "too_many_failed_auth")
        status, _, _ = await get(http, f"{node.url}/api/x", B, good)  # another address: fine
        assert status == 200
        status, _, _ = await get(http, f"{node.url}/open/x", A)  # open routes are not keyed
        assert status == 200
    status, _, body = await get(http, f"{nodes[1].url}/api/x", B, "sk_live_nonsense")
    assert (status, body["code"]) == (401, "invalid_api_key")  # B's own budget


async def test_failed_auth_budget_in_process_and_successes_spend_nothing(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    (node,) = await start(failed_auth={"requests": 3, "window": 60})
    good = await new_key(http, node)
    for _ in range(10):  # successes are not counted
        assert (await get(http, f"{node.url}/api/x", key=good))[0] == 200
    for _ in range(3):
        assert (await get(http, f"{node.url}/api/x", key="sk_live_nonsense"))[0] == 401
    status, headers, body = await get(http, f"{node.url}/api/x", key=good)
    assert (status, body["code"]) == (429, "too_many_failed_auth")
    assert "Retry-After" in headers


async def test_failed_auth_null_turns_it_off(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    (node,) = await start(failed_auth=None)
    for _ in range(20):
        assert (await get(http, f"{node.url}/api/x", key="sk_live_nonsense"))[0] == 401


async def test_failed_auth_is_counted_locally_while_redis_is_down(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    (node,) = await start(redis=dead, limiter={"timeout": 0.05},
                          failed_auth={"requests": 2, "window": 60},
                          defaults={"on_limiter_error": "open"})
    for _ in range(2):
        assert (await get(http, f"{node.url}/api/x", key="sk_live_nonsense"))[0] == 401
    status, _, body = await get(http, f"{node.url}/api/x", key="sk_live_nonsense")
    assert (status, body["code"]) == (429, "too_many_failed_auth")
