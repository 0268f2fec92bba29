"""Usage over time, black-box: two real gateway processes on one key store (SQLite, or Postgres
with a shared Redis), a real upstream. The client tallies the outcome of every response it gets;
within one flush interval the admin API shows exactly that tally per key, per granularity and
per workspace, and the CLI prints it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.keys.model import OUTCOMES
from tests.conftest import free_port, start_site
from tests.gateway_process import GatewayProcess
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, require_redis

FLUSH = 0.3  # usage.flush_interval of the nodes under test
CODES = {  # the outcome a response stands for, by its problem code
    "rate_limited": "rate_limited", "quota_exceeded": "quota_exceeded",
    "concurrency_limited": "concurrency_limited", "insufficient_permissions": "forbidden",
    "disabled_api_key": "rejected", "revoked_api_key": "rejected",
    "upstream_unavailable": "upstream_error", "upstream_timeout": "upstream_error",
}


@dataclass
class Upstream:
    url: str
    release: asyncio.Event
    waiting: list[int]  # [requests waiting on /api/slow]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """200 on /api/ok, 503 on /api/boom, /api/slow waits until released."""
    release = asyncio.Event()
    waiting = [0]

    async def answer(request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        if tail == "boom":
            return web.Response(status=503, text="down")
        if tail == "slow":
            waiting[0] += 1
            await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/api/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    port = await start_site(runner)
    yield Upstream(f"http://127.0.0.1:{port}", release, waiting)
    release.set()
    await runner.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_options(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"database": f"sqlite:///{tmp_path}/gateway.db"}
        return
    require_redis()
    async with fresh_pg_database() as url:
        yield {"database": url, "redis": REDIS_URL, "limiter": {"prefix": redis_prefix}}


def routes(upstream: Upstream) -> list[dict[str, Any]]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: 502
    read = {"GET": ["read"], "*": ["write"]}
    return [
        {"name": "api", "path": "/api/", "upstream": upstream.url, "permissions": read},
        {"name": "dead", "path": "/dead/", "upstream": dead, "timeout": 2},
    ]


class Client:
    """Admin calls, and proxied calls whose outcomes it tallies per key."""

    def __init__(self, session: aiohttp.ClientSession, nodes: list[GatewayProcess],
                 token: str) -> None:
        self.session, self.nodes, self.token = session, nodes, token
        self.tally: dict[str, Counter[str]] = {}
        self.sent = 0

    async def admin(self, method: str, path: str, body: Any = None,
                    token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with self.session.request(method, self.nodes[0].admin_url + path, json=body,
                                        headers=headers) as response:
            return response.status, await response.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.admin(method, path, body)
        assert status in (200, 201), (status, data)
        return data

    async def call(self, key: dict[str, Any], path: str, method: str = "GET",
                   headers: dict[str, str] | None = None, node: int | None = None) -> int:
        """One proxied request on ``node``, else the next one (round robin); tallies its
        outcome."""
        if node is None:
            node, self.sent = self.sent % len(self.nodes), self.sent + 1
        async with self.session.request(method, self.nodes[node].url + path,
                                        headers={"Authorization": f"Bearer {key['key']}",
                                                 **(headers or {})}) as response:
            code = None
            if response.content_type == "application/problem+json":
                code = (await response.json(content_type=None))["code"]
            status = response.status
        if code is None:
            outcome = "success" if status < 500 else "upstream_error"
        else:
            outcome = CODES.get(code, "other")
        self.tally.setdefault(key["key_id"], Counter())[outcome] += 1
        return status

    def expected(self, *key_ids: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for key_id in key_ids:
            total.update(self.tally.get(key_id, Counter()))
        return {name: total[name] for name in OUTCOMES}


async def until(condition: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def eventually(read: Any, expected: Any, within: float) -> Any:
    """``await read()`` until it equals ``expected``; the last value read."""
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def produce_every_outcome(client: Client, upstream: Upstream) -> dict[str, Any]:
    """Keys of two workspaces, each outcome of README "Usage over time" at least once."""
    ws = (await client.ok("POST", "/admin/v1/workspaces", {"name": "w"}))["id"]
    keys = f"/admin/v1/workspaces/{ws}/keys"
    busy = await client.ok("POST", keys, {"name": "busy", "permissions": ["read"],
                                          "rate_limit_override": 9, "concurrency_limit": 2})
    quiet = await client.ok("POST", keys, {"name": "quiet", "permissions": ["read"]})
    for _ in range(3):
        assert await client.call(busy, "/api/ok") == 200
    assert await client.call(busy, "/api/boom") == 503  # the upstream's 5xx
    assert await client.call(busy, "/dead/x") == 502
    for _ in range(2):
        assert await client.call(busy, "/api/ok", "POST") == 403
    assert await client.call(busy, "/api/ok", headers={"X-Project-Id": "prj_nope"}) == 404
    # two in flight on the first node; the next request on that node is over the cap
    slow = [asyncio.ensure_future(client.call(busy, "/api/slow", node=0)) for _ in range(2)]
    await until(lambda: upstream.waiting[0] == 2)  # both hold their slot
    assert await client.call(busy, "/api/ok", node=0) == 429
    upstream.release.set()
    assert await asyncio.gather(*slow) == [200, 200]
    while await client.call(busy, "/api/ok") != 429:  # the rest of the limit, then refused
        pass
    assert await client.call(quiet, "/api/ok") == 200
    await client.ok("POST", f"/admin/v1/keys/{quiet['key_id']}/disable")
    while await client.call(quiet, "/api/ok") != 401:  # every node hears of it at once
        pass
    # a second workspace on a plan of 2 requests a day (one node: on SQLite each node keeps
    # its own quota counters)
    other = (await client.ok("POST", "/admin/v1/workspaces", {"name": "other"}))["id"]
    await client.ok("PUT", f"/admin/v1/workspaces/{other}/subscription", {"plan": "tiny"})
    capped = await client.ok("POST", f"/admin/v1/workspaces/{other}/keys",
                             {"name": "capped", "permissions": ["read"]})
    for _ in range(4):
        await client.call(capped, "/api/ok", node=0)
    return {"ws": ws, "other": other, "busy": busy, "quiet": quiet, "capped": capped}


@pytest.mark.slow
async def test_every_outcome_counted_exactly_once_across_two_nodes(
    tmp_path: Path, upstream: Upstream, store_options: dict[str, Any]
) -> None:
    nodes = [
        GatewayProcess.create(
            tmp_path / f"node{i}", routes(upstream), plans={"tiny": {"quota": {"day": 2}}},
            usage={"flush_interval": FLUSH, "rollup_interval": 0.5},
            key_cache={"poll_interval": 0.1}, **store_options,
        )
        for i in range(2)
    ]
    try:
        token = nodes[0].admin_key()
        async with aiohttp.ClientSession() as session:
            await GatewayProcess.start_all(nodes, session)
            client = Client(session, nodes, token)
            made = await produce_every_outcome(client, upstream)
            await check_reports(client, made)
            await check_validation_and_isolation(client, made)
        usage_cli = nodes[1].command("keys", "usage", made["busy"]["key_id"])
    finally:
        for node in nodes:
            node.stop()
    busy = client.expected(made["busy"]["key_id"])
    total_line = next(line for line in usage_cli.splitlines() if line.strip().startswith("total"))
    assert total_line.split()[1:] == [str(busy[name]) for name in OUTCOMES], usage_cli


async def check_reports(client: Client, made: dict[str, Any]) -> None:
    busy, quiet, capped = (made[name]["key_id"] for name in ("busy", "quiet", "capped"))
    tally = {key_id: client.expected(key_id) for key_id in (busy, quiet, capped)}
    # shadow_refused needs a shadow rule: tests/pipeline/test_shadow_process.py
    assert all(tally[busy][name] for name in OUTCOMES if name not in (
        "rejected", "quota_exceeded", "shadow_refused"))
    assert tally[quiet]["rejected"] >= 1 and tally[capped] == {
        **dict.fromkeys(OUTCOMES, 0), "success": 2, "quota_exceeded": 2}

    async def totals(key_id: str, granularity: str = "hour") -> Any:
        _, usage = await client.admin("GET", f"/admin/v1/keys/{key_id}/usage"
                                      f"?granularity={granularity}")
        return usage["totals"]

    for key_id, expected in tally.items():  # written behind by both nodes: they add up
        assert await eventually(lambda k=key_id: totals(k), expected, FLUSH + 5) == expected
        for granularity in ("minute", "day"):
            assert await totals(key_id, granularity) == expected, granularity

    now = time.time()
    start = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(now - 600))
    _, minutes = await client.admin(
        "GET", f"/admin/v1/keys/{busy}/usage?granularity=minute&from={start}"
    )
    assert len(minutes["series"]) in (10, 11)  # one entry per minute, zeros included
    assert minutes["series"][0] == {"start": start, **dict.fromkeys(OUTCOMES, 0)}
    summed = {name: sum(entry[name] for entry in minutes["series"]) for name in OUTCOMES}
    assert summed == minutes["totals"] == tally[busy]
    assert minutes["requests"] == tally[busy]["success"] + tally[busy]["upstream_error"]
    assert minutes["last_used_at"] is not None

    _, workspace = await client.admin("GET", f"/admin/v1/workspaces/{made['ws']}/usage")
    assert workspace["totals"] == client.expected(busy, quiet)
    assert [(k["key_id"], k["name"]) for k in workspace["top_keys"]] == [
        (busy, "busy"), (quiet, "quiet")]
    assert workspace["top_keys"][0]["total"] == sum(tally[busy].values())
    assert len(workspace["series"]) == 24  # the last 24 hours by hour
    _, other = await client.admin("GET", f"/admin/v1/workspaces/{made['other']}/usage")
    assert other["quota"]["plan"] == "tiny"
    assert other["quota"]["day"]["limit"] == 2 and other["quota"]["day"]["used"] == 2


async def check_validation_and_isolation(client: Client, made: dict[str, Any]) -> None:
    usage = f"/admin/v1/keys/{made['busy']['key_id']}/usage"
    for query, field in [
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("to=2026-01-01T00:00:00", "to"),  # no time zone
        ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("granularity=minute&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z", "granularity"),
    ]:
        status, problem = await client.admin("GET", f"{usage}?{query}")
        assert status == 400 and problem["code"] == "validation_error", (query, problem)
        assert field in problem["errors"], (query, problem)
    # a workspace admin of the other workspace sees neither this key nor this workspace
    stranger = await client.ok("POST", f"/admin/v1/workspaces/{made['other']}/keys",
                               {"name": "admin", "key_type": "admin"})
    for path in (usage, f"/admin/v1/workspaces/{made['ws']}/usage"):
        status, problem = await client.admin("GET", path, token=stranger["key"])
        assert status == 404, (path, problem)
    status, _ = await client.admin("GET", f"/admin/v1/workspaces/{made['other']}/usage",
                                   token=stranger["key"])
    assert status == 200
