"""Hostile families (README "Security and reliability"): each drives a real gateway over
loopback sockets with a bounded corpus, in front of an upstream that parses what it receives
with h11 (``upstream.py``), and records one figure that is printed at the end of the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.hostile.figures import FIGURES
from tests.hostile.upstream import StrictUpstream, strict_upstream

UNLIMITED = {"rate_limit": {"requests": 1_000_000, "window": 60}, "max_concurrent": None}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("hostile figures")
        for family, line in FIGURES.items():
            terminalreporter.write_line(f"{family}: {line}")


@pytest.fixture
async def strict() -> AsyncIterator[StrictUpstream]:
    async with strict_upstream() as upstream:
        yield upstream


def hostile_routes(url: str) -> list[dict[str, Any]]:
    return [
        {"name": "models", "path": "/api/ai/", "upstream": url, "permissions": ["read"],
         "max_body_bytes": 64 * 1024,
         "cors": {"allow_origins": ["https://app.example.com", "https://*.example.com"]}},
        {"name": "retrievers", "path": "/v1/retrievers/{retriever_id}/", "upstream": url,
         "resource": "retriever_id", "permissions": ["read"]},
        {"name": "stripped", "path": "/s/", "upstream": url + "/base", "strip_prefix": True,
         "permissions": ["read"]},
        {"name": "public", "path": "/public/", "upstream": url, "auth": "none"},
    ]


@pytest.fixture
async def hostile(make_gateway: GatewayFactory, strict: StrictUpstream) -> Gateway:
    return await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED)


@dataclass
class Answer:
    status: int  # 0: no answer before the timeout or the connection closed first
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the gateway closed the connection after answering

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    while True:
        status_line = await reader.readline()
        if not status_line:
            return 0, [], b""
        headers: list[tuple[str, str]] = []
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        status = int(status_line.split()[1])
        if status >= 200:
            break
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    if length is not None:
        return status, headers, await reader.readexactly(length)
    body = bytearray()  # chunked: the gateway's own framing, well-formed
    while size := int((await reader.readline()).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return status, headers, bytes(body)


async def send_raw(port: int, payload: bytes, timeout: float = 1.0,
                   close_wait: float = 1.0) -> Answer:
    """Send ``payload`` byte for byte on a new connection and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        try:
            status, headers, body = await asyncio.wait_for(read_answer(reader), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            return Answer(0, [], b"", closed=reader.at_eof())
        closed = False
        if status >= 400:
            try:
                closed = await asyncio.wait_for(reader.read(65536), close_wait) == b""
            except (TimeoutError, ConnectionError):
                closed = False
        return Answer(status, headers, body, closed)
    finally:
        writer.close()


async def bounded(jobs: list[Callable[[], Awaitable[Answer]]], at_once: int = 16) -> list[Answer]:
    gate = asyncio.Semaphore(at_once)

    async def run(job: Callable[[], Awaitable[Answer]]) -> Answer:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))
