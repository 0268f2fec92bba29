"""Shared fixtures: a real echo upstream on a free port that records what it received, and a
factory that starts a real gateway (proxy + admin listeners, real key store) in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_admin, create_key_service, create_proxy_server
from gateway.config import parse_config
from gateway.echo import EchoLog, create_echo_app
from gateway.keys.model import KeyRecord, Workspace, generate_key
from gateway.keys.service import KeyService
from gateway.services import Services, open_services


def port_of(site: web.TCPSite) -> int:
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def free_port() -> int:
    """A port nobody listens on now (connections to it are refused until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def start_site(runner: web.BaseRunner, host: str = "127.0.0.1") -> int:
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return port_of(site)


@dataclass
class Upstream:
    url: str
    log: EchoLog
    port: int


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    log = EchoLog()
    runner = web.AppRunner(create_echo_app(log), access_log=None)
    port = await start_site(runner)
    yield Upstream(f"http://127.0.0.1:{port}", log, port)
    await runner.cleanup()


class Tagged:
    """An upstream that answers ``<tag> <path>``. A path ending in ``/hold`` waits until
    ``released`` is set (``holding`` is set once one waits); one ending in ``/hold-stream``
    sends ``first\\n`` at once and ``last\\n`` once released. ``arrived`` counts requests."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.released = asyncio.Event()
        self.holding = asyncio.Event()
        self.arrived = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrived += 1
        if request.path.endswith("/hold-stream"):
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first\n")
            self.holding.set()
            await self.released.wait()
            await response.write(b"last\n")
            return response
        if request.path.endswith("/hold"):
            self.holding.set()
            await self.released.wait()
        return web.Response(text=f"{self.tag} {request.path}")

    async def start(self) -> Tagged:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = f"http://127.0.0.1:{await start_site(self._runner)}"
        return self

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def first() -> AsyncIterator[Tagged]:
    upstream = await Tagged("first").start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def second() -> AsyncIterator[Tagged]:
    upstream = await Tagged("second").start()
    yield upstream
    await upstream.stop()


@dataclass
class Gateway:
    url: str
    admin_url: str
    port: int
    services: Services
    keys: KeyService
    workspace: Workspace
    upstream: Upstream
    created: list[KeyRecord] = field(default_factory=list)

    async def key(self, **fields: Any) -> str:
        """A new key in the test workspace (plaintext)."""
        body = {"name": "test key", "permissions": ["read", "write"], **fields}
        record, plaintext = await self.keys.create_key(self.workspace.id, body, "test")
        self.created.append(record)
        return plaintext

    async def admin_key(self) -> str:
        _record, plaintext = await self.keys.create_key(
            None, {"name": "operator", "key_type": "admin"}, "test"
        )
        return plaintext


def default_routes(upstream_url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "models",
            "path": "/api/ai/",
            "upstream": upstream_url,
            "permissions": {"GET": ["read"], "HEAD": ["read"], "POST": ["write"]},
            "max_body_bytes": 1024 * 1024,
            "cors": {"allow_origins": ["https://app.example.com", "https://*.example.com"]},
        },
        {
            "name": "retrievers",
            "path": "/v1/retrievers/{retriever_id}/",
            "upstream": upstream_url,
            "resource": "retriever_id",
            "permissions": ["read"],
        },
        {"name": "public", "path": "/public/", "upstream": upstream_url, "auth": "none",
         "strip_prefix": True},
        {"name": "based", "path": "/based/", "upstream": upstream_url + "/base/path",
         "strip_prefix": True, "permissions": ["read"]},
    ]


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path, upstream: Upstream) -> AsyncIterator[GatewayFactory]:
    stack = contextlib.AsyncExitStack()
    count = 0

    async def factory(routes: list[dict[str, Any]] | None = None, **top: Any) -> Gateway:
        nonlocal count
        count += 1
        data: dict[str, Any] = {
            "listen": "127.0.0.1:1",  # the test binds port 0 itself
            "admin_listen": "127.0.0.1:2",
            "database": f"sqlite:///{tmp_path}/gateway{count}.db",
            "permissions": {"implies": {"admin": ["write"], "write": ["read"]}},
            "routes": routes if routes is not None else default_routes(upstream.url),
            **top,
        }
        config = parse_config(data, "test.yaml", {})
        services = await stack.enter_async_context(open_services(config))
        proxy_runner = web.ServerRunner(create_proxy_server(services), handle_signals=False)
        admin_runner = web.AppRunner(create_admin(services), handle_signals=False)
        port = await start_site(proxy_runner)
        admin_port = await start_site(admin_runner)
        stack.push_async_callback(admin_runner.cleanup)
        stack.push_async_callback(proxy_runner.cleanup)
        keys = create_key_service(services)
        workspace = await keys.create_workspace("acme", "test")
        return Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", port,
                       services, keys, workspace, upstream)

    factory.close = stack.aclose  # type: ignore[attr-defined]  # close early (idempotent)
    yield factory
    await stack.aclose()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def until_slot_returns(
    http: aiohttp.ClientSession, url: str, key: str, within: float
) -> None:
    """GET ``url`` with ``key`` until it is admitted: a concurrency slot held by an abandoned
    exchange comes back once the gateway notices. Only 429s meanwhile, at most ``within`` s."""
    started = time.monotonic()
    while True:
        async with http.get(url, headers=bearer(key)) as response:
            if response.status == 200:
                return
            assert response.status == 429, await response.text()
        assert time.monotonic() - started < within, "the slot was never given back"
        await asyncio.sleep(0.05)


def well_formed_unknown_key() -> str:
    return generate_key("sk_live")


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def raw_request(port: int, head: str, body: bytes = b"") -> RawResponse:
    """Send bytes exactly as written (no client-side path or header normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    status_line = await reader.readline()
    headers: list[tuple[str, str]] = []
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    data = await reader.readexactly(length) if length else b""
    writer.close()
    return RawResponse(int(status_line.split()[1]), headers, data)
