"""/healthz and /readyz on the admin listener: liveness, and readiness that names what is down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.admin import DRAINING
from gateway.app import create_admin
from gateway.errors import LimiterUnavailable
from tests.conftest import Gateway, start_site


@pytest.fixture
async def admin(gateway: Gateway) -> AsyncIterator[tuple[str, web.Application]]:
    """The gateway's admin app, built here so the test can reach its state."""
    app = create_admin(gateway.services)
    runner = web.AppRunner(app, handle_signals=False)
    port = await start_site(runner)
    yield f"http://127.0.0.1:{port}", app
    await runner.cleanup()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_healthz_and_readyz_when_all_is_well(
    admin: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    url, _ = admin
    assert await get(http, f"{url}/healthz") == (200, {"status": "ok"})
    assert await get(http, f"{url}/readyz") == (200, {"status": "ready"})


async def test_readyz_is_503_while_draining_and_healthz_stays_200(
    admin: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    url, app = admin
    app[DRAINING].set()
    assert await get(http, f"{url}/readyz") == (503, {"status": "draining"})
    assert await get(http, f"{url}/healthz") == (200, {"status": "ok"})


async def test_readyz_names_an_unreachable_limiter(
    admin: tuple[str, web.Application],
    http: aiohttp.ClientSession,
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def down() -> None:
        raise LimiterUnavailable("redis: connection refused")

    monkeypatch.setattr(gateway.services.limiter, "ping", down)
    url, _ = admin
    assert await get(http, f"{url}/readyz") == (
        503, {"status": "not ready", "limiter": "unreachable"}
    )


async def test_readyz_names_an_unreachable_store(
    admin: tuple[str, web.Application],
    http: aiohttp.ClientSession,
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def down() -> bool:
        return False

    monkeypatch.setattr(gateway.services.store, "ping", down)
    url, _ = admin
    assert await get(http, f"{url}/readyz") == (
        503, {"status": "not ready", "store": "unreachable"}
    )
