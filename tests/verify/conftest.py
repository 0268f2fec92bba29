"""Forward-auth fixtures: the real gateway of ``tests/conftest.py`` with a verify route beside
the default proxy routes, on SQLite with the in-process limiter and on Postgres with Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from gateway.keys.usage_report import parse_window
from tests.conftest import Gateway, GatewayFactory, Upstream, bearer, default_routes
from tests.keys.conftest import fresh_pg_database
from tests.limiter.conftest import REDIS_URL, require_redis
from tests.limiter.conftest import redis_prefix as redis_prefix  # the fixture, re-exported

VERIFY_PATH = "/_verify/"
VERIFY_ROUTE = {"name": "verify", "path": VERIFY_PATH, "mode": "verify"}
BACKENDS = ["sqlite", "postgres+redis"]


def verify_routes(upstream_url: str) -> list[dict[str, Any]]:
    return [*default_routes(upstream_url), VERIFY_ROUTE]


@pytest.fixture(params=BACKENDS)
async def gateway(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, upstream: Upstream,
    redis_prefix: str,
) -> AsyncIterator[Gateway]:
    routes = verify_routes(upstream.url)
    if request.param == "sqlite":
        yield await make_gateway(routes)
        return
    require_redis()
    async with fresh_pg_database() as url:
        try:
            yield await make_gateway(routes, database=url, redis=REDIS_URL,
                                     limiter={"prefix": redis_prefix})
        finally:  # the gateway's pool closes before its database is dropped
            await make_gateway.close()  # type: ignore[attr-defined]


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def code(self) -> str:
        """The problem's ``code``."""
        return str(orjson.loads(self.body)["code"])


async def check(
    http: aiohttp.ClientSession, gateway: Gateway, method: str, uri: str,
    key: str | None = None, headers: dict[str, str] | None = None,
) -> Answer:
    """Ask the verify route about ``method uri`` as nginx's auth_request does."""
    sent = {"X-Original-Method": method, "X-Original-URI": uri, **(headers or {})}
    if key is not None:
        sent.update(bearer(key))
    async with http.get(gateway.url + VERIFY_PATH, headers=sent) as response:
        return Answer(response.status, response.headers, await response.read())


async def until_usage(gateway: Gateway, key_id: str, expected: dict[str, int],
                      timeout: float = 10.0) -> None:
    """Flush until the key's usage totals of the last day are ``expected`` (zeros left out):
    a periodic flush may hold the counts in flight when the test's own flush runs."""
    deadline = time.monotonic() + timeout
    while True:
        await gateway.services.usage.flush()
        window = parse_window({"granularity": "minute"}, time.time())
        usage = await gateway.keys.key_usage(key_id, window)
        totals = {name: n for name, n in usage["totals"].items() if n}
        if totals == expected or time.monotonic() > deadline:
            assert totals == expected
            return
        await asyncio.sleep(0.05)
