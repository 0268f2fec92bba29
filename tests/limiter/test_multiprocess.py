"""Exact shared limits: two real gateway processes on one Redis.

64 connections per process offer the heavy key 5x its limit for several windows; the upstream
records when each admitted request arrived. In no window do the arrivals exceed the limit, the
limit is reached in every window (the budget is used, not lost), and a light key offered half
its limit meanwhile is never refused. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import start_site
from tests.gateway_process import GatewayProcess
from tests.limiter.conftest import REDIS_URL, require_redis

LIMIT = 50  # per WINDOW seconds, for each key
WINDOW = 1.0
DURATION = 4.2  # seconds of load: four windows and a bit
OVERLOAD = 5  # the heavy key is offered 5x its limit
CONNECTIONS = 64  # per gateway process
# the decision (Redis's clock) and the arrival at the upstream differ by a little jitter
SLACK = 0.05


def node(directory: Path, database: str, upstream_port: int, prefix: str) -> GatewayProcess:
    api = {"name": "api", "path": "/api/", "upstream": f"http://127.0.0.1:{upstream_port}",
           "rate_limit": {"requests": LIMIT, "window": WINDOW}}
    return GatewayProcess.create(
        directory, [api], database=database, redis=REDIS_URL, limiter={"prefix": prefix},
        defaults={"max_concurrent": 1000, "on_limiter_error": "closed",
                  "rate_limit": {"requests": 1_000_000, "window": 60}},  # the route's decides
    )


def max_in_any_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


@pytest.mark.slow
async def test_two_processes_never_admit_more_than_the_limit(
    tmp_path: Path, redis_prefix: str
) -> None:
    require_redis()
    arrivals: dict[str, list[float]] = {"heavy": [], "light": []}

    async def record(request: web.Request) -> web.Response:
        arrivals[request.match_info["who"]].append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/{who}/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    upstream_port = await start_site(runner)
    database = f"sqlite:///{tmp_path}/gateway.db"
    nodes = [node(tmp_path / f"node{i}", database, upstream_port, redis_prefix) for i in range(2)]
    try:
        token = nodes[0].admin_key()
        async with aiohttp.ClientSession() as admin:
            await GatewayProcess.start_all(nodes, admin)
            heavy, light = [await create_key(admin, nodes[0], token, n) for n in "hl"]
        statuses = await offer_load(nodes, heavy, light)
    finally:
        for gateway in nodes:
            gateway.stop()
        await runner.cleanup()

    heavy_max = max_in_any_window(arrivals["heavy"], WINDOW - SLACK)
    windows = int(DURATION / WINDOW)
    print(
        f"\nheavy: offered {statuses['heavy']['offered']}, admitted {len(arrivals['heavy'])}, "
        f"most in any {WINDOW - SLACK:.2f} s window {heavy_max} (limit {LIMIT}); "
        f"light: {statuses['light']}"
    )
    assert statuses["heavy"]["other"] == 0 and statuses["light"]["other"] == 0
    assert heavy_max <= LIMIT
    assert len(arrivals["heavy"]) >= windows * LIMIT  # every window's budget was spent
    assert statuses["heavy"][429] > 0
    assert statuses["light"][429] == 0  # 0 false positives
    assert statuses["light"][200] == len(arrivals["light"])


async def create_key(
    session: aiohttp.ClientSession, node: GatewayProcess, token: str, name: str
) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    async with session.post(
        f"{node.admin_url}/admin/v1/workspaces", json={"name": f"w{name}"}, headers=auth
    ) as response:
        workspace = await response.json()
    async with session.post(
        f"{node.admin_url}/admin/v1/workspaces/{workspace['id']}/keys",
        json={"name": name, "permissions": ["read"]},
        headers=auth,
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["key"])


async def offer_load(
    nodes: list[GatewayProcess], heavy: str, light: str
) -> dict[str, dict[object, int]]:
    """Requests at evenly planned instants, spread over both nodes and all connections."""
    counts: dict[str, dict[object, int]] = {
        who: {"offered": 0, 200: 0, 429: 0, "other": 0} for who in ("heavy", "light")
    }
    plan: list[tuple[float, str, str]] = []
    heavy_rate, light_rate = OVERLOAD * LIMIT / WINDOW, 0.5 * LIMIT / WINDOW
    plan += [(i / heavy_rate, "heavy", heavy) for i in range(int(DURATION * heavy_rate))]
    plan += [(i / light_rate, "light", light) for i in range(int(DURATION * light_rate))]
    plan.sort()
    queue: asyncio.Queue[tuple[float, str, str]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    start = time.monotonic() + 0.2

    async def worker(session: aiohttp.ClientSession, node: GatewayProcess) -> None:
        while not queue.empty():
            at, who, key = queue.get_nowait()
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            counts[who]["offered"] += 1
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{node.url}/api/{who}/x", headers=headers) as response:
                await response.read()
                status = response.status if response.status in (200, 429) else "other"
                counts[who][status] += 1

    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) for _ in nodes
    ]
    try:
        await asyncio.gather(
            *(
                worker(session, node)
                for session, node in zip(sessions, nodes, strict=True)
                for _ in range(CONNECTIONS)
            )
        )
    finally:
        for session in sessions:
            await session.close()
    return counts
