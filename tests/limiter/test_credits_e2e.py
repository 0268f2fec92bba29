"""Credits (README "Credits"), black-box: real gateway processes, a real upstream.

* Postgres + Redis, two processes: credits of 50 under 32 concurrent clients admit exactly 50;
  a top-up (add, then set) made on one node is spent exactly on both; requests refused by the
  rate limit spend no credits, and a credit refusal counts in no rate-limit window.
* The embedded default (SQLite, in-process limiter), one process: the same 50; a route's
  ``cost``; a balance at 0 with a refill due gets ``Retry-After`` until it; the key check API
  spends credits too; bad bodies are 400 and change nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import start_site
from tests.gateway_process import Admin, GatewayProcess
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, require_redis

Result = tuple[int, Any, dict[str, str]]


async def proxied(session: aiohttp.ClientSession, node: GatewayProcess, key: str,
                  path: str = "/api/x") -> Result:
    async with session.get(node.url + path, headers={"Authorization": f"Bearer {key}"}) as r:
        body = await r.json() if r.status != 200 else None
        return r.status, body, dict(r.headers)


@asynccontextmanager
async def upstream() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    port = await start_site(runner)
    try:
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(nodes: list[GatewayProcess]) -> AsyncIterator[tuple[aiohttp.ClientSession,
                                                                       Admin]]:
    token = nodes[0].admin_key()
    try:
        async with aiohttp.ClientSession() as session:
            await GatewayProcess.start_all(nodes, session)
            yield session, Admin(session, nodes[0], token)
    finally:
        for node in nodes:
            node.stop()


async def new_key(admin: Admin, workspace: str, **fields: Any) -> dict[str, Any]:
    status, key = await admin.call("POST", f"/admin/v1/workspaces/{workspace}/keys",
                                   {"name": "k", **fields})
    assert status == 201, key
    return dict(key)


async def burst(session: aiohttp.ClientSession, nodes: list[GatewayProcess], key: str,
                total: int) -> list[Result]:
    """``total`` requests from 32 concurrent clients, spread over ``nodes``."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    outcomes: list[Result] = []

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            outcomes.append(await proxied(session, nodes[i % len(nodes)], key))

    await asyncio.gather(*(client() for _ in range(32)))
    return outcomes


def assert_exactly(outcomes: list[Result], admitted: int) -> None:
    counts = Counter(status for status, _, _ in outcomes)
    assert counts == {200: admitted, 429: len(outcomes) - admitted}, counts
    shown = sorted(int(h["X-Credits-Remaining"]) for s, _, h in outcomes if s == 200)
    assert shown == list(range(admitted))  # every balance once: no credit spent twice
    for _, body, headers in (o for o in outcomes if o[0] == 429):
        assert body["code"] == "credits_exhausted"
        assert "Retry-After" not in headers  # no refill: nothing to wait for
        assert headers["X-Credits-Remaining"] == "0"


async def drain(session: aiohttp.ClientSession, nodes: list[GatewayProcess], key: str,
                first: int = 0) -> int:
    """Requests, one node after the other, until each refuses three times running: the
    number admitted."""
    admitted, refusals, i = 0, 0, first
    while refusals < 3 * len(nodes):
        assert admitted < 100, "credits that never run out"
        status, _, _ = await proxied(session, nodes[i % len(nodes)], key)
        admitted += status == 200
        refusals = 0 if status == 200 else refusals + 1
        i += 1
    return admitted


async def until_admitted(session: aiohttp.ClientSession, node: GatewayProcess, key: str) -> None:
    """Within the revocation bound, ``node`` hears of a top-up made on the other."""
    deadline = time.monotonic() + 5
    while (await proxied(session, node, key))[0] != 200:
        assert time.monotonic() < deadline, "the top-up never reached the other node"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_credits_are_exact_across_two_nodes_on_postgres_and_redis(
    tmp_path: Path, redis_prefix: str
) -> None:
    require_redis()
    async with fresh_pg_database() as database, upstream() as port:
        api = {"name": "api", "path": "/api/", "upstream": f"http://127.0.0.1:{port}"}
        nodes = [
            GatewayProcess.create(tmp_path / f"node{i}", [api], database=database,
                                  redis=REDIS_URL, limiter={"prefix": redis_prefix},
                                  key_cache={"poll_interval": 0.1})
            for i in range(2)
        ]
        async with running(nodes) as (session, admin):
            await scenario(session, admin, nodes)


async def scenario(session: aiohttp.ClientSession, admin: Admin,
                   nodes: list[GatewayProcess]) -> None:
    _, workspace = await admin.call("POST", "/admin/v1/workspaces", {"name": "w"})
    ws = workspace["id"]
    key = await new_key(admin, ws, credits={"remaining": 50})
    assert key["credits"] == {"remaining": 50, "refill": None}

    assert_exactly(await burst(session, nodes, key["key"], 120), 50)
    other = Admin(session, nodes[1], admin.auth["Authorization"][7:])
    _, shown = await other.call("GET", f"/admin/v1/keys/{key['key_id']}")
    assert shown["credits"]["remaining"] == 0  # the live balance, read on the other node

    # an add on node 0: node 1 hears of it; exactly 7 spent over both, however they race
    status, topped = await admin.call("POST", f"/admin/v1/keys/{key['key_id']}/credits",
                                      {"add": 7})
    assert status == 200 and topped["credits"]["remaining"] == 7
    await until_admitted(session, nodes[1], key["key"])
    assert 1 + await drain(session, nodes, key["key"]) == 7
    # a set on node 1: node 0 hears of it
    status, topped = await other.call("POST", f"/admin/v1/keys/{key['key_id']}/credits",
                                      {"set": 3})
    assert status == 200 and topped["credits"]["remaining"] == 3
    await until_admitted(session, nodes[0], key["key"])
    assert 1 + await drain(session, nodes, key["key"], first=1) == 3
    _, events = await admin.call("GET", f"/admin/v1/audit?workspace_id={ws}")
    audited = [(e["action"], e["changes"]) for e in events["results"]][:2]
    assert audited == [("key.credits", {"set": 3}), ("key.credits", {"add": 7})]

    # refused by the rate limit: no credit spent
    slow = await new_key(admin, ws, credits={"remaining": 10}, rate_limit_override=2)
    results = [await proxied(session, nodes[i % 2], slow["key"]) for i in range(6)]
    assert [r[0] for r in results] == [200, 200, 429, 429, 429, 429]
    assert {r[1]["code"] for r in results[2:]} == {"rate_limited"}
    assert {r[2]["X-Credits-Remaining"] for r in results[2:]} == {"8"}
    _, shown = await admin.call("GET", f"/admin/v1/keys/{slow['key_id']}")
    assert shown["credits"]["remaining"] == 8

    # refused for credits: nothing in the rate-limit window
    short = await new_key(admin, ws, credits={"remaining": 1}, rate_limit_override=3)
    results = [await proxied(session, nodes[i % 2], short["key"]) for i in range(5)]
    assert [r[0] for r in results] == [200, 429, 429, 429, 429]
    assert results[-1][2]["RateLimit-Remaining"] == "2"
    await admin.call("POST", f"/admin/v1/keys/{short['key_id']}/credits", {"set": 10})
    await until_admitted(session, nodes[1], short["key"])
    last = [await proxied(session, nodes[0], short["key"]) for _ in range(2)]
    assert [r[0] for r in last] == [200, 429] and last[1][1]["code"] == "rate_limited"


@pytest.mark.slow
async def test_credits_on_the_embedded_default(tmp_path: Path) -> None:
    async with upstream() as port:
        target = f"http://127.0.0.1:{port}"
        routes = [{"name": "costly", "path": "/api/big/", "upstream": target, "cost": 5},
                  {"name": "api", "path": "/api/", "upstream": target}]
        nodes = [GatewayProcess.create(tmp_path, routes)]
        async with running(nodes) as (session, admin):
            _, workspace = await admin.call("POST", "/admin/v1/workspaces", {"name": "w"})
            ws = workspace["id"]
            key = await new_key(admin, ws, credits={"remaining": 50})
            assert_exactly(await burst(session, nodes, key["key"], 120), 50)
            await embedded_scenario(session, admin, nodes[0], ws)


async def embedded_scenario(session: aiohttp.ClientSession, admin: Admin,
                            node: GatewayProcess, ws: str) -> None:
    # a route's cost, spent whole or not at all
    key = await new_key(admin, ws, credits={"remaining": 12})
    costly = [await proxied(session, node, key["key"], "/api/big/x") for _ in range(3)]
    assert [(r[0], r[2]["X-Credits-Remaining"]) for r in costly] == [
        (200, "7"), (200, "2"), (429, "2")]
    assert (await proxied(session, node, key["key"]))[2]["X-Credits-Remaining"] == "1"

    # at 0 with a refill due: Retry-After until the UTC midnight that refills it
    daily = await new_key(admin, ws, credits={"remaining": 0,
                                              "refill": {"amount": 5, "interval": "day"}})
    assert daily["credits"] == {"remaining": 0, "refill": {"amount": 5, "interval": "day"}}
    status, body, headers = await proxied(session, node, daily["key"])
    assert (status, body["code"]) == (429, "credits_exhausted")
    to_midnight = 86_400 - time.time() % 86_400
    assert abs(int(headers["Retry-After"]) - to_midnight) <= 5

    # the key check API spends a credit as a request does
    plain = await new_key(admin, ws)
    assert "X-Credits-Remaining" not in (await proxied(session, node, plain["key"]))[2]
    one = await new_key(admin, ws, credits={"remaining": 1})
    checks = [(await admin.call("POST", "/admin/v1/keys/verify", {"key": one["key"]}))[1]
              for _ in range(2)]
    assert [(c["code"], c["credits_remaining"]) for c in checks] == [
        ("ok", 0), ("credits_exhausted", 0)]

    # bad bodies: 400 naming the field, nothing changed
    path = f"/admin/v1/keys/{one['key_id']}/credits"
    for bad, field in (({"add": 0}, "add"), ({"set": -1}, "set"), ({"add": 1, "set": 1}, "body"),
                       ({}, "body"), ({"add": "3"}, "add"), ({"more": 1}, "more")):
        status, problem = await admin.call("POST", path, bad)
        assert (status, problem["code"]) == (400, "validation_error"), bad
        assert field in problem["errors"], (bad, problem)
    status, problem = await admin.call("POST", f"/admin/v1/workspaces/{ws}/keys",
                                       {"name": "x", "credits": {"remaining": 1,
                                                                 "refill": {"amount": 0,
                                                                            "interval": "day"}}})
    assert status == 400 and "credits" in problem["errors"]
    _, shown = await admin.call("GET", f"/admin/v1/keys/{one['key_id']}")
    assert shown["credits"]["remaining"] == 0
    # an add needs credits to add to; a set gives a key some
    status, problem = await admin.call("POST", f"/admin/v1/keys/{plain['key_id']}/credits",
                                       {"add": 2})
    assert (status, problem["code"]) == (409, "conflict")
    status, shown = await admin.call("POST", f"/admin/v1/keys/{plain['key_id']}/credits",
                                     {"set": 2})
    assert status == 200 and shown["credits"] == {"remaining": 2, "refill": None}
    # a rotated key spends its predecessor's balance: a rotation does not double it
    status, rotated = await admin.call("POST", f"/admin/v1/keys/{plain['key_id']}/rotate",
                                       {"grace_period_seconds": 60})
    assert status == 201 and rotated["credits"]["remaining"] == 2
    assert (await proxied(session, node, plain["key"]))[2]["X-Credits-Remaining"] == "1"
    assert (await proxied(session, node, rotated["key"]))[2]["X-Credits-Remaining"] == "0"
    assert (await proxied(session, node, plain["key"]))[0] == 429
    # a top-up of either is the chain's
    await admin.call("POST", f"/admin/v1/keys/{rotated['key_id']}/credits", {"add": 1})
    assert (await proxied(session, node, plain["key"]))[2]["X-Credits-Remaining"] == "0"
    # a PATCH can take them away again, with another change, both audited
    status, shown = await admin.call("PATCH", f"/admin/v1/keys/{plain['key_id']}",
                                     {"credits": None, "description": "unmetered"})
    assert status == 200 and shown["credits"] is None and shown["description"] == "unmetered"
    assert (await proxied(session, node, plain["key"]))[0] == 200
    _, events = await admin.call("GET", f"/admin/v1/audit?workspace_id={ws}")
    assert events["results"][0]["changes"] == {"credits": None, "description": "unmetered"}
