"""Forward auth and the key check API against real ``gateway serve`` processes, black-box:
SQLite with the in-process limiter on one node, and Postgres with Redis on two nodes, where
checks, key checks and proxied requests through either node spend one budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, bearer
from tests.gateway_process import GatewayProcess
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, require_redis
from tests.verify.conftest import VERIFY_PATH, VERIFY_ROUTE


@asynccontextmanager
async def cluster(
    backend: str, tmp_path: Path, upstream: Upstream, redis_prefix: str
) -> AsyncIterator[list[GatewayProcess]]:
    api = {"name": "api", "path": "/api/", "upstream": upstream.url,
           "permissions": {"GET": ["read"], "POST": ["write"]}}
    if backend == "sqlite":
        nodes = [GatewayProcess.create(tmp_path / "node0", [api, VERIFY_ROUTE])]
        yield nodes
        return
    require_redis()
    async with fresh_pg_database() as url:
        nodes = [
            GatewayProcess.create(tmp_path / f"node{i}", [api, VERIFY_ROUTE], database=url,
                                  redis=REDIS_URL, limiter={"prefix": redis_prefix})
            for i in range(2)
        ]
        try:
            yield nodes
        finally:  # stopped before the database is dropped
            for node in nodes:
                node.stop()


async def status_of(http: aiohttp.ClientSession, node: GatewayProcess, method: str, uri: str,
                    key: str | None) -> tuple[int, Any]:
    headers = {"X-Original-Method": method, "X-Original-URI": uri}
    if key is not None:
        headers.update(bearer(key))
    async with http.get(node.url + VERIFY_PATH, headers=headers) as response:
        body = await response.read()
        return response.status, response.headers if response.status == 200 else body


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
async def test_forward_auth_and_key_check_on_real_processes(
    backend: str, tmp_path: Path, upstream: Upstream, redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    async with cluster(backend, tmp_path, upstream, redis_prefix) as nodes:
        try:
            token = nodes[0].admin_key()
            await GatewayProcess.start_all(nodes, http)
            await scenario(http, nodes, {"Authorization": f"Bearer {token}"}, upstream)
        finally:
            for node in nodes:
                node.stop()


async def scenario(http: aiohttp.ClientSession, nodes: list[GatewayProcess],
                   admin: dict[str, str], upstream: Upstream) -> None:
    first, last = nodes[0], nodes[-1]
    async with http.post(first.admin_url + "/admin/v1/workspaces", json={"name": "w"},
                         headers=admin) as response:
        workspace = await response.json()
    async with http.post(f"{first.admin_url}/admin/v1/workspaces/{workspace['id']}/keys",
                         json={"name": "k", "permissions": ["read"], "rate_limit_override": 4},
                         headers=admin) as response:
        created = await response.json()
    key = created["key"]

    status, headers = await status_of(http, first, "GET", "/api/items", key)
    assert status == 200, headers
    assert headers["X-Api-Key-Id"] == created["key_id"]
    assert headers["X-Workspace-Id"] == workspace["id"]
    assert headers["RateLimit-Remaining"] == "3"
    assert (await status_of(http, last, "GET", "/api/items", None))[0] == 401
    assert (await status_of(http, last, "POST", "/api/items", key))[0] == 403
    assert (await status_of(http, last, "GET", "/elsewhere", key))[0] == 404

    # one budget for checks, key checks and proxied requests, on every node
    async with http.get(last.url + "/api/items", headers=bearer(key)) as response:
        assert (response.status, response.headers["RateLimit-Remaining"]) == (200, "2")
    async with http.post(last.admin_url + "/admin/v1/keys/verify", json={"key": key},
                         headers=admin) as response:
        checked = await response.json()
    assert (checked["code"], checked["ratelimit"]["remaining"]) == ("ok", 1)
    assert (await status_of(http, first, "GET", "/api/items", key))[0] == 200
    status, body = await status_of(http, last, "GET", "/api/items", key)
    assert status == 429, body
    async with http.post(first.admin_url + "/admin/v1/keys/verify", json={"key": key},
                         headers=admin) as response:
        assert (await response.json())["code"] == "rate_limited"
    assert len(upstream.log.received) == 1  # only the proxied request reached the upstream
