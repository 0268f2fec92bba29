"""IP allowlists and a shadow limit with real gateway processes (README "IP allowlists",
"Shadow mode"): two ``gateway serve`` nodes on one Postgres and one Redis, keys made with the
CLI. The allowlist is judged on the client address behind a trusted proxy; a shadow route limit
shared by both nodes forwards every request and counts exactly the would-be refusals, in both
nodes' metrics, in usage and in the log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, bearer
from tests.gateway_process import GatewayProcess
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, redis_prefix, require_redis
from tests.ops.metrics_text import scrape, value

__all__ = ["redis_prefix"]  # the fixture: a fresh Redis prefix per test


@pytest.fixture
async def nodes(
    tmp_path: Path, upstream: Upstream, redis_prefix: str
) -> AsyncIterator[list[GatewayProcess]]:
    require_redis()
    routes = [{"name": "api", "path": "/api/", "upstream": upstream.url,
               "rate_limit": {"requests": 5, "window": 60, "shadow": True}}]
    async with fresh_pg_database() as url:
        made = [
            GatewayProcess.create(
                tmp_path / f"node{i}", routes, database=url, redis=REDIS_URL,
                limiter={"prefix": redis_prefix}, trusted_proxies=["127.0.0.1/32"],
                usage={"flush_interval": 0.2},
            )
            for i in range(2)
        ]
        try:
            made[0].admin_key()  # migrates the shared database
            async with aiohttp.ClientSession() as session:
                await GatewayProcess.start_all(made, session)
            yield made
        finally:
            for node in made:
                node.stop()


def create_key(node: GatewayProcess, workspace: str, *flags: str) -> tuple[dict[str, Any], str]:
    out = node.command("keys", "create", "--workspace", workspace, "--name", "k", *flags)
    *shown, plaintext = out.strip().splitlines()
    return json.loads("\n".join(shown)), plaintext


async def status(http: aiohttp.ClientSession, node: GatewayProcess, key: str,
                 forwarded_for: str | None = None) -> int:
    headers = bearer(key) | ({"X-Forwarded-For": forwarded_for} if forwarded_for else {})
    async with http.get(f"{node.url}/api/x", headers=headers) as response:
        await response.read()
        return response.status


@pytest.mark.slow
async def test_allowlist_and_shadow_limit_across_two_nodes(
    nodes: list[GatewayProcess], http: aiohttp.ClientSession
) -> None:
    workspace = json.loads(nodes[0].command("workspaces", "create", "--name", "acme"))["id"]
    local, local_key = create_key(nodes[0], workspace, "--allowed-ip", "127.0.0.1")
    assert local["allowed_ips"] == ["127.0.0.1"] and local["enforcement"] == "enforce"
    _, egress_key = create_key(nodes[0], workspace, "--allowed-ip", "10.0.0.0/8",
                               "--allowed-ip", "2001:db8::/32")

    # the allowlist: the peer, else the rightmost untrusted X-Forwarded-For hop
    assert await status(http, nodes[0], local_key) == 200
    assert await status(http, nodes[1], egress_key, "10.9.8.7") == 200
    assert await status(http, nodes[1], egress_key, "2001:db8::1") == 200
    assert await status(http, nodes[0], egress_key, "198.51.100.7") == 403
    assert await status(http, nodes[1], egress_key) == 403  # 127.0.0.1 itself: not listed

    # a shadow limit of 5 shared by both nodes: 20 requests, all forwarded, 15 counted
    shadowed, shadowed_key = create_key(nodes[0], workspace)
    statuses = [await status(http, nodes[i % 2], shadowed_key) for i in range(20)]
    assert statuses == [200] * 20
    texts = [await scrape(http, node.admin_url) for node in nodes]
    counted = [value(text, "gateway_shadow_refusals_total", rule="rate_limited")
               for text in texts]
    assert sum(counted) == 15 and all(counted)  # each node counted its own share
    token = nodes[0].admin_key()
    usage_url = f"{nodes[1].admin_url}/admin/v1/keys/{shadowed['key_id']}/usage"
    for _ in range(100):  # both nodes write behind every 0.2 s
        async with http.get(usage_url, headers=bearer(token)) as response:
            totals = (await response.json())["totals"]
        if totals["shadow_refused"] == 15 and totals["success"] == 20:
            break
        await asyncio.sleep(0.1)
    assert (totals["success"], totals["shadow_refused"], totals["rate_limited"]) == (20, 15, 0)
    logged = nodes[0].log_text() + nodes[1].log_text()
    lines = [json.loads(line) for line in logged.splitlines() if '"shadow"' in line]
    assert len(lines) == 15  # one access line each, naming the rule and the key
    assert {(line["shadow"], line["key_id"]) for line in lines} == {
        ("rate_limited", shadowed["key_id"])}

    # the CLI flips the pinned key to shadow: refused no more, counted instead
    nodes[0].command("keys", "update", local["key_id"], "--enforcement", "shadow")
    for _ in range(100):  # every node hears of the change at once (NOTIFY)
        if await status(http, nodes[1], local_key, "198.51.100.7") == 200:
            break
        await asyncio.sleep(0.05)
    text = await scrape(http, nodes[1].admin_url)
    assert value(text, "gateway_shadow_refusals_total", rule="ip_not_allowed") >= 1
