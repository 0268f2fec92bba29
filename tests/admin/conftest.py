"""Admin API fixtures: a small client that sends JSON with an admin key and returns
(status, body), on top of the real gateway from ``tests/conftest.py``.

Every admin test runs on both key stores (issue: the admin API must work on both): the
``gateway`` fixture is overridden here, parametrized by backend, each on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, bearer
from tests.keys.conftest import BACKENDS, fresh_pg_database


@pytest.fixture(params=BACKENDS)
async def gateway(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory
) -> AsyncIterator[Gateway]:
    if request.param == "sqlite":
        yield await make_gateway()
        return
    async with fresh_pg_database() as url:
        try:
            yield await make_gateway(database=url)
        finally:  # the gateway's pool closes before its database is dropped
            await make_gateway.close()  # type: ignore[attr-defined]


@dataclass
class Admin:
    http: aiohttp.ClientSession
    base: str  # the admin listener's URL
    token: str | None  # None: send no Authorization header

    async def call(
        self, method: str, path: str, json: Any = None, *, data: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = bearer(self.token) if self.token is not None else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(method, self.base + path, json=json, data=data,
                                     params=params, headers=headers) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            return r.status, body

    async def ok(self, method: str, path: str, json: Any = None, **kw: Any) -> Any:
        status, body = await self.call(method, path, json, **kw)
        assert status in (200, 201), (status, body)
        return body


@pytest.fixture
async def operator(gateway: Gateway, http: aiohttp.ClientSession) -> Admin:
    return Admin(http, gateway.admin_url, await gateway.admin_key())


async def workspace_admin(
    gateway: Gateway, http: aiohttp.ClientSession, workspace_id: str
) -> Admin:
    _record, token = await gateway.keys.create_key(
        workspace_id, {"name": "ws admin", "key_type": "admin"}, "test"
    )
    return Admin(http, gateway.admin_url, token)
