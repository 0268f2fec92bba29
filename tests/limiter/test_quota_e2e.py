"""Plans, subscriptions and quotas, black-box: two real gateway processes sharing one Redis and
one key store, a real upstream. A daily quota across two keys and both nodes admits exactly the
quota under 32 concurrent clients; a request refused by its rate limit spends no quota; a
subscription change made on one node is in force on the other."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import start_site
from tests.gateway_process import Admin, GatewayProcess
from tests.limiter.conftest import REDIS_URL, require_redis

QUOTA = 37
PLANS = {"small": {"quota": {"day": QUOTA}}, "big": {"quota": {"day": 100_000}}}


async def proxied(session: aiohttp.ClientSession, node: GatewayProcess,
                  key: str) -> tuple[int, Any, dict[str, str]]:
    async with session.get(f"{node.url}/api/x", headers={"Authorization": f"Bearer {key}"}) as r:
        body = await r.json() if r.status != 200 else None
        return r.status, body, dict(r.headers)


@pytest.mark.slow
async def test_quota_across_two_nodes_and_subscription_changes(
    tmp_path: Path, redis_prefix: str
) -> None:
    require_redis()
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    port = await start_site(runner)
    database = f"sqlite:///{tmp_path}/gateway.db"
    api = {"name": "api", "path": "/api/", "upstream": f"http://127.0.0.1:{port}"}
    nodes = [
        GatewayProcess.create(tmp_path / f"node{i}", [api], database=database, redis=REDIS_URL,
                              limiter={"prefix": redis_prefix}, plans=PLANS,
                              default_plan="small", key_cache={"poll_interval": 0.1})
        for i in range(2)
    ]
    try:
        token = nodes[0].admin_key()
        async with aiohttp.ClientSession() as session:
            await GatewayProcess.start_all(nodes, session)
            admin = Admin(session, nodes[0], token)
            await scenario(session, admin, nodes)
    finally:
        for gateway in nodes:
            gateway.stop()
        await runner.cleanup()


async def scenario(session: aiohttp.ClientSession, admin: Admin,
                   nodes: list[GatewayProcess]) -> None:
    _, workspace = await admin.call("POST", "/admin/v1/workspaces", {"name": "w"})
    ws = workspace["id"]
    keys_path = f"/admin/v1/workspaces/{ws}/keys"
    _, one = await admin.call("POST", keys_path, {"name": "one"})
    _, two = await admin.call("POST", keys_path, {"name": "two"})
    _, slow = await admin.call("POST", keys_path, {"name": "slow", "rate_limit_override": 2})
    assert one["subscription_id"] is None
    status, sub = await admin.call("GET", f"/admin/v1/workspaces/{ws}/subscription")
    assert (status, sub["plan"], sub["subscription_id"]) == (200, "small", None)

    # a rate-limited request spends no quota: 2 of 6 admitted, 2 used
    results = [await proxied(session, nodes[i % 2], slow["key"]) for i in range(6)]
    assert [r[0] for r in results] == [200, 200, 429, 429, 429, 429]
    assert {r[1]["code"] for r in results[2:]} == {"rate_limited"}
    _, quota = await admin.call("GET", f"/admin/v1/workspaces/{ws}/quota")
    assert quota["day"]["used"] == 2 and quota["day"]["limit"] == QUOTA

    # exactly the quota, over two keys, two nodes, 32 concurrent clients
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(4 * QUOTA):
        queue.put_nowait(i)
    outcomes: list[tuple[int, Any, dict[str, str]]] = []

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            key = (one, two)[i % 2]["key"]
            outcomes.append(await proxied(session, nodes[(i // 2) % 2], key))

    await asyncio.gather(*(client() for _ in range(32)))
    counts = Counter(status for status, _, _ in outcomes)
    assert counts == {200: QUOTA - 2, 429: 4 * QUOTA - (QUOTA - 2)}
    refused = [(body, headers) for status, body, headers in outcomes if status == 429]
    assert {body["code"] for body, _ in refused} == {"quota_exceeded"}
    to_midnight = 86_400 - time.time() % 86_400
    for _, headers in refused:
        assert abs(int(headers["Retry-After"]) - to_midnight) <= 5
        assert headers["X-Quota-Remaining"] == "0" and headers["X-Quota-Limit"] == str(QUOTA)
    _, quota = await admin.call("GET", f"/admin/v1/workspaces/{ws}/quota")
    assert quota["day"]["used"] == QUOTA  # refused requests spent nothing

    # a quota-refused request spends no rate budget: the slow key's window is not touched
    # (its 2 were spent above; they are what the window holds)

    # a bad plan changes nothing
    status, problem = await admin.call("PUT", f"/admin/v1/workspaces/{ws}/subscription",
                                       {"plan": "gold"})
    assert (status, problem["code"], list(problem["errors"])) == (400, "validation_error",
                                                                  ["plan"])
    # the subscription changes on node 0; node 1 follows through the change feed
    status, sub = await admin.call("PUT", f"/admin/v1/workspaces/{ws}/subscription",
                                   {"plan": "big"})
    assert status == 200 and sub["plan"] == "big" and sub["subscription_id"].startswith("sub_")
    deadline = time.monotonic() + 5
    while (result := await proxied(session, nodes[1], one["key"]))[0] != 200:
        assert time.monotonic() < deadline, result
        await asyncio.sleep(0.05)
    assert result[2]["X-Quota-Limit"] == "100000"
    _, key = await admin.call("GET", f"/admin/v1/keys/{one['key_id']}")
    assert key["subscription_id"] == sub["subscription_id"]
    _, events = await admin.call("GET", f"/admin/v1/audit?workspace_id={ws}")
    assert events["results"][0]["action"] == "subscription.update"
