"""Starting with a dependency down, with real processes (README "Health"): ``gateway serve``
with Postgres stopped stays up (no exit, so no restart loop), alive on ``/healthz`` and 503 on
``/readyz`` until Postgres is back, then ready and serving; with Redis unreachable it starts,
serves under ``on_limiter_error`` and says 503 on ``/readyz`` until Redis answers, then takes
its limits from Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, free_port
from tests.gateway_process import GatewayProcess
from tests.hostile.figures import record
from tests.keys.test_postgres_outage import PG_BINS, PrivatePostgres
from tests.limiter.conftest import PrivateRedis

NOT_READY_STORE = {"status": "not ready", "store": "unreachable"}
NOT_READY_LIMITER = {"status": "not ready", "limiter": "unreachable"}


@pytest.fixture
def stopped_postgres() -> Iterator[PrivatePostgres]:
    """A private cluster, initialised and not running."""
    if not PG_BINS or (shutil.which("runuser") is None and os.geteuid() == 0):
        pytest.skip("initdb/pg_ctl (or runuser) not available")
    server = PrivatePostgres()
    try:
        server.init()
        yield server
    finally:
        server.cleanup()


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """(status, JSON body); (0, None) when nothing listens."""
    try:
        async with session.get(url) as response:
            return response.status, await response.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


async def keyed_request(session: aiohttp.ClientSession, node: GatewayProcess,
                        token: str) -> tuple[int, dict[str, str]]:
    """A new workspace and key through the admin API, then one GET with it."""
    auth = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{node.admin_url}/admin/v1/workspaces", json={"name": "w"},
                            headers=auth) as response:
        assert response.status == 201, await response.text()
        workspace = (await response.json())["id"]
    async with session.post(f"{node.admin_url}/admin/v1/workspaces/{workspace}/keys",
                            json={"name": "k"}, headers=auth) as response:
        key = (await response.json())["key"]
    async with session.get(f"{node.url}/api/x",
                           headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, dict(response.headers)


@pytest.mark.slow
async def test_starting_with_postgres_down(
    stopped_postgres: PrivatePostgres, tmp_path: Path, upstream: Upstream
) -> None:
    node = GatewayProcess.create(
        tmp_path, [{"name": "api", "path": "/api/", "upstream": upstream.url}],
        database=stopped_postgres.url, key_store={"timeout": 1, "connect_timeout": 1},
    )
    try:
        node.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            seen: set[tuple[str, int]] = set()
            until = time.monotonic() + 4
            while time.monotonic() < until:
                assert node.process is not None and node.process.poll() is None, node.log_text()
                status, body = await probe(session, f"{node.admin_url}/readyz")
                if status:
                    assert (status, body) == (503, NOT_READY_STORE)
                    seen.add(("readyz", status))
                    seen.add(("healthz", (await probe(session, f"{node.admin_url}/healthz"))[0]))
                    seen.add(("public", (await probe(session, f"{node.url}/api/x"))[0]))
                await asyncio.sleep(0.1)
            assert seen == {("readyz", 503), ("healthz", 200), ("public", 0)}, seen
            stopped_postgres.start()
            back = time.monotonic()
            await node.wait_ready(session, timeout=15)
            ready_after = time.monotonic() - back
            token = node.admin_key()
            status, _ = await keyed_request(session, node, token)
            assert status == 200
    finally:
        node.stop()
    log = node.log_text()
    retries = log.count("not ready, trying again")
    assert log.count("gateway starting") == 1 and retries >= 2
    record("START_PG_DOWN", f"started with Postgres stopped: up 4 s, healthz 200, readyz 503, "
           f"public port closed, {retries} attempts logged, 0 exits; ready {ready_after:.2f} s "
           "after Postgres started, a new key served 200")


@pytest.mark.slow
async def test_starting_with_redis_down(tmp_path: Path, upstream: Upstream) -> None:
    redis = PrivateRedis(tmp_path)  # not started: its port refuses connections
    node = GatewayProcess.create(
        tmp_path / "gw", [{"name": "api", "path": "/api/", "upstream": upstream.url}],
        redis=redis.url, limiter={"timeout": 0.2, "expected_nodes": 2},
        defaults={"rate_limit": {"requests": 1000, "window": 60}, "max_concurrent": None},
    )
    try:
        token = node.admin_key()
        node.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            deadline = time.monotonic() + 20
            while (await probe(session, f"{node.admin_url}/healthz"))[0] != 200:
                assert time.monotonic() < deadline, node.log_text()
                await asyncio.sleep(0.05)
            assert await probe(session, f"{node.admin_url}/readyz") == (503, NOT_READY_LIMITER)
            status, headers = await keyed_request(session, node, token)
            assert status == 200 and headers["RateLimit-Limit"] == "500"  # local: its share
            redis.start()
            back = time.monotonic()
            await node.wait_ready(session, timeout=10)
            ready_after = time.monotonic() - back
            status, headers = await keyed_request(session, node, token)
            assert status == 200 and headers["RateLimit-Limit"] == "1000"  # from Redis
            limits_after = time.monotonic() - back
            assert node.process is not None and node.process.poll() is None
    finally:
        redis.kill()
        node.stop()
    assert ready_after < 2.0, ready_after
    record("START_REDIS_DOWN", f"started with Redis unreachable: served (local share 500 of "
           f"1000), readyz 503; ready {ready_after:.2f} s after Redis started, limits from "
           f"Redis {limits_after:.2f} s after")


async def test_sigterm_ends_the_wait_for_postgres(tmp_path: Path, upstream: Upstream) -> None:
    nowhere = f"postgresql://gw@127.0.0.1:{free_port()}/gw"
    node = GatewayProcess.create(tmp_path, [{"name": "api", "path": "/api/",
                                             "upstream": upstream.url}], database=nowhere)
    try:
        node.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            deadline = time.monotonic() + 20
            while await probe(session, f"{node.admin_url}/readyz") != (503, NOT_READY_STORE):
                assert time.monotonic() < deadline, node.log_text()
                await asyncio.sleep(0.05)
        node.send(signal.SIGTERM)
        assert await node.wait_exit(3) == 0
    finally:
        node.stop()
    assert "stopped while waiting for the key store" in node.log_text()
