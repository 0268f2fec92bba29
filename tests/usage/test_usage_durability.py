"""What happens to counted usage when the process or the store goes away (README "Usage over
time"): SIGTERM writes everything; kill -9 loses at most ``usage.flush_interval`` seconds; a
Postgres outage keeps the counts in memory and writes them when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.keys.model import OUTCOMES
from tests.conftest import Upstream
from tests.gateway_process import GatewayProcess
from tests.keys.test_postgres_outage import PrivatePostgres, private_pg
from tests.ops.metrics_text import value

__all__ = ["private_pg"]  # the fixture, for the tests below


async def setup(session: aiohttp.ClientSession, node: GatewayProcess,
                token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{node.admin_url}/admin/v1/workspaces", json={"name": "w"},
                            headers=auth) as response:
        ws = (await response.json())["id"]
    async with session.post(f"{node.admin_url}/admin/v1/workspaces/{ws}/keys",
                            json={"name": "k"}, headers=auth) as response:
        return dict(await response.json())


async def send(session: aiohttp.ClientSession, node: GatewayProcess, key: str, n: int) -> None:
    for _ in range(n):
        async with session.get(f"{node.url}/api/x",
                               headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200


def totals(node: GatewayProcess, key_id: str) -> dict[str, int]:
    """The key's totals as the CLI reads them from the store (no gateway running needed)."""
    out = node.command("keys", "usage", key_id)
    line = next(row for row in out.splitlines() if row.strip().startswith("total"))
    return dict(zip(OUTCOMES, map(int, line.split()[1:]), strict=True))


def node_for(tmp_path: Path, upstream: Upstream, **top: Any) -> GatewayProcess:
    return GatewayProcess.create(
        tmp_path, [{"name": "api", "path": "/api/", "upstream": upstream.url}], **top
    )


@contextlib.asynccontextmanager
async def serving(
    node: GatewayProcess,
) -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, Any], str]]:
    """The node started and ready, a session, a key of a new workspace, and the operator key;
    stopped afterwards (whatever a test did to it)."""
    try:
        token = node.admin_key()
        node.start()
        async with aiohttp.ClientSession() as session:
            await node.wait_ready(session)
            yield session, await setup(session, node, token), token
    finally:
        node.stop()


async def test_sigterm_writes_every_count(tmp_path: Path, upstream: Upstream) -> None:
    node = node_for(tmp_path, upstream, usage={"flush_interval": 3600})  # only the last flush
    async with serving(node) as (session, key, _):
        await send(session, node, key["key"], 25)
        node.send(signal.SIGTERM)
        assert await node.wait_exit(15) == 0
    assert totals(node, key["key_id"])["success"] == 25


async def test_kill_9_loses_at_most_one_flush_interval(tmp_path: Path, upstream: Upstream) -> None:
    interval = 0.5
    node = node_for(tmp_path, upstream, usage={"flush_interval": interval})
    async with serving(node) as (session, key, _):
        await send(session, node, key["key"], 20)
        await asyncio.sleep(interval * 2.5)  # written by now
        await send(session, node, key["key"], 5)  # maybe not
        node.send(signal.SIGKILL)
        await node.wait_exit(5)
    assert 20 <= totals(node, key["key_id"])["success"] <= 25


@pytest.mark.slow
async def test_a_postgres_outage_loses_no_count(
    private_pg: PrivatePostgres, tmp_path: Path, upstream: Upstream
) -> None:
    node = node_for(tmp_path, upstream, database=private_pg.url,
                    usage={"flush_interval": 0.2, "max_pending_buckets": 1000})
    async with serving(node) as (session, key, token):
        await send(session, node, key["key"], 10)  # cached from here on
        private_pg.stop()
        await send(session, node, key["key"], 30)  # served from the key cache
        await asyncio.sleep(0.6)  # a few flushes fail meanwhile
        async with session.get(f"{node.admin_url}/metrics") as response:
            metrics = await response.text()
        assert value(metrics, "gateway_usage_pending_buckets") >= 1
        assert value(metrics, "gateway_usage_buckets_dropped_total") == 0
        private_pg.start()
        auth = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{node.admin_url}/admin/v1/keys/{key['key_id']}/usage",
                                   headers=auth) as response:
                body = await response.json()
            if response.status == 200 and body["totals"]["success"] == 40:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
    assert "usage flush failed; will retry" in node.log_text()
