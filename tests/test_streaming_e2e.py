"""Streaming both ways, end to end: big uploads and downloads with flat memory, server-sent events
event by event, client disconnects that give back the concurrency slot, and upstreams that die
mid-body (README "What the upstream receives": bodies are streamed with back-pressure)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Gateway, GatewayFactory, bearer, start_site, until_slot_returns

MiB = 1024 * 1024
TOTAL = 200 * MiB
CHUNK = 256 * 1024
MAX_GROWTH = 64 * MiB

UpstreamHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: UpstreamHandler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, auto_decompress=False)
    port = await start_site(runner)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def gateway_for(make: GatewayFactory, url: str, **route: Any) -> Gateway:
    return await make(routes=[{"name": "bulk", "path": "/bulk/", "upstream": url, **route}])


def blocks(total: int = TOTAL) -> Iterator[bytes]:
    """``total`` bytes in CHUNK pieces, generated on the fly: no two pieces alike."""
    base = os.urandom(CHUNK)
    for index in range(total // CHUNK):
        yield index.to_bytes(8, "big") + base[8:]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@contextlib.contextmanager
def flat_memory() -> Iterator[None]:
    """The whole process (client, gateway and upstream all live in it) may not grow by more
    than MAX_GROWTH: neither its peak RSS nor the peak of Python allocations."""
    rss_before = peak_rss()
    tracemalloc.start()
    try:
        yield
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = peak_rss() - rss_before
    assert rss_growth < MAX_GROWTH, f"peak RSS grew by {rss_growth / MiB:.1f} MiB"
    assert traced_peak < MAX_GROWTH, f"allocations peaked at {traced_peak / MiB:.1f} MiB"


# big bodies ------------------------------------------------------------------------------------
async def test_200_mb_chunked_upload_streams_through(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def hashing(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "bytes": size,
                                  "te": request.headers.get("Transfer-Encoding"),
                                  "cl": request.headers.get("Content-Length")})

    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        for block in blocks():
            sent.update(block)
            yield block

    async with serve(hashing) as url:
        gateway = await gateway_for(make_gateway, url, max_body_bytes=300 * MiB)
        key = await gateway.key()
        started = time.monotonic()
        with flat_memory():
            async with http.post(f"{gateway.url}/bulk/upload", headers=bearer(key),
                                 data=upload()) as response:
                assert response.status == 200, await response.text()
                got = await response.json()
        elapsed = time.monotonic() - started
    assert got == {"sha256": sent.hexdigest(), "bytes": TOTAL, "te": "chunked", "cl": None}
    assert elapsed < 15


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_200_mb_download_streams_through(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, declared: bool
) -> None:
    sent = hashlib.sha256()

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if declared:
            response.content_length = TOTAL
        await response.prepare(request)
        for block in blocks():
            sent.update(block)
            await response.write(block)
        await response.write_eof()
        return response

    async with serve(download) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        received = hashlib.sha256()
        size = 0
        started = time.monotonic()
        with flat_memory():
            async with http.get(f"{gateway.url}/bulk/file", headers=bearer(key)) as response:
                assert response.status == 200
                if declared:
                    assert response.headers["Content-Length"] == str(TOTAL)
                else:
                    assert response.headers["Transfer-Encoding"] == "chunked"
                async for data in response.content.iter_any():
                    received.update(data)
                    size += len(data)
        elapsed = time.monotonic() - started
    assert size == TOTAL
    assert received.hexdigest() == sent.hexdigest()
    assert elapsed < 15


# server-sent events ----------------------------------------------------------------------------
async def read_event(content: aiohttp.StreamReader) -> bytes:
    lines = []
    while (line := await content.readline()) not in (b"\n", b""):
        lines.append(line)
    return b"".join(lines)


async def test_server_sent_events_arrive_event_by_event(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    client_has_first = asyncio.Event()
    upstream_log: list[str] = []

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: one\n\n")
        upstream_log.append("sent 1")
        await asyncio.wait_for(client_has_first.wait(), 5)
        await response.write(b"id: 2\ndata: two\n\n")
        upstream_log.append("sent 2")
        await response.write_eof()
        return response

    async with serve(events) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/bulk/events", headers=bearer(key)) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(read_event(response.content), 5)
            assert first == b"id: 1\ndata: one\n"
            assert upstream_log == ["sent 1"]  # event 2 does not exist yet
            client_has_first.set()
            second = await asyncio.wait_for(read_event(response.content), 5)
            assert second == b"id: 2\ndata: two\n"
            assert await asyncio.wait_for(response.content.read(), 5) == b""


async def test_slow_stream_outlives_the_route_timeout(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # timeout bounds the head and each gap between chunks, not the whole exchange
    async def ticking(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(8):
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.2)
        await response.write_eof()
        return response

    async with serve(ticking) as url:
        gateway = await gateway_for(make_gateway, url, timeout=0.5)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/bulk/ticks", headers=bearer(key)) as response:
            body = await asyncio.wait_for(response.read(), 10)
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(8))


# client disconnects ----------------------------------------------------------------------------
async def disconnect_then_retry(gateway: Gateway, key: str, path: str) -> float:
    """Start a download, read a little, drop the connection; return how long a new request
    by the same key (concurrency_limit=1) took to be admitted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
                 .encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    await asyncio.wait_for(reader.read(1024), 5)
    writer.transport.abort()
    dropped = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{gateway.url}/bulk/quick", headers=bearer(key)) as resp:
                if resp.status == 200:
                    return time.monotonic() - dropped
                assert resp.status == 429, await resp.text()
                assert time.monotonic() - dropped < 3, "the slot was never given back"
            await asyncio.sleep(0.05)


async def test_client_disconnect_mid_download_releases_the_slot(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stopped = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        if request.path == "/bulk/quick":
            return web.Response(text="quick")
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass
        finally:
            stopped.set()
        return response

    async with serve(endless) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key(concurrency_limit=1)
        waited = await disconnect_then_retry(gateway, key, "/bulk/stream")
        assert waited < 1.0
        await asyncio.wait_for(stopped.wait(), 5)  # the upstream exchange was abandoned too
    assert not [r for r in caplog.records if r.name == "gateway.error"]  # not a gateway bug


async def test_client_disconnect_from_idle_event_stream_releases_the_slot(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # the upstream goes quiet after one event: no write will ever fail on its own
    upstream_gone = asyncio.Event()

    async def quiet(request: web.Request) -> web.StreamResponse:
        if request.path == "/bulk/quick":
            return web.Response(text="quick")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n" * 100)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # quiet, but watching its own connection
            if request.transport is None or request.transport.is_closing():
                upstream_gone.set()
                break
            await asyncio.sleep(0.02)
        return response

    async with serve(quiet) as url:
        gateway = await gateway_for(make_gateway, url)  # route timeout: the default 30 s
        key = await gateway.key(concurrency_limit=1)
        waited = await disconnect_then_retry(gateway, key, "/bulk/events")
        assert waited < 1.0
        # and the gateway hung up on the upstream instead of waiting for its next event
        await asyncio.wait_for(upstream_gone.wait(), 2)
    assert not [r for r in caplog.records if r.name == "gateway.error"]


async def test_client_disconnect_while_the_upstream_thinks_releases_the_slot(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # a long poll: the upstream takes its time before the response head
    upstream_gone = asyncio.Event()

    async def long_poll(request: web.Request) -> web.Response:
        if request.path == "/bulk/quick":
            return web.Response(text="quick")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                upstream_gone.set()
                break
            await asyncio.sleep(0.02)
        return web.Response(text="late")

    async with serve(long_poll) as url:
        gateway = await gateway_for(make_gateway, url)  # route timeout: the default 30 s
        key = await gateway.key(concurrency_limit=1)
        _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"GET /bulk/poll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                     "\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
        async with aiohttp.ClientSession() as session:
            await until_slot_returns(session, f"{gateway.url}/bulk/quick", key, within=1)
        await asyncio.wait_for(upstream_gone.wait(), 2)
    assert not [r for r in caplog.records if r.name == "gateway.error"]


# upstream failures mid-body --------------------------------------------------------------------
@contextlib.asynccontextmanager
async def dying_upstream(answer: bytes, *, reset: bool) -> AsyncIterator[str]:
    """Reads one request head, writes ``answer``, then dies (FIN, or RST with ``reset``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(0.05)
        finally:
            if reset:
                writer.transport.abort()
            else:
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


LARGE_PARTIAL = (b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"a" * 300_000)
CHUNKED_PARTIAL = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"10000\r\n" + b"b" * 0x10000 + b"\r\n" + b"4\r\nbbbb\r\n")
MEDIUM_PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"c" * 1000


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("answer", [LARGE_PARTIAL, CHUNKED_PARTIAL, MEDIUM_PARTIAL],
                         ids=["content-length", "chunked", "medium"])
async def test_upstream_dying_mid_body_aborts_the_response(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, answer: bytes, reset: bool
) -> None:
    async with dying_upstream(answer, reset=reset) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/bulk/x", headers=bearer(key)) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), 5)
        # the key's slot and the gateway survive: the next request is answered at once
        async with http.get(f"{gateway.url}/bulk/x", headers=bearer(key)) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), 5)


SMALL_PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"d" * 10


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    "answer",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Le", SMALL_PARTIAL, b"HTTP/1.1 2xx nonsense\r\n\r\n"],
    ids=["nothing", "half-head", "small-body", "malformed"],
)
async def test_upstream_dying_before_the_client_saw_a_byte_is_a_502(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, answer: bytes, reset: bool
) -> None:
    # while the client has seen no byte of the response, the gateway can still say what
    # happened: 502 upstream_unavailable, never a half-sent 200 or a 500
    async with dying_upstream(answer, reset=reset) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/bulk/x", headers=bearer(key)) as response:
            assert response.status == 502, await response.text()
            body = await response.json(content_type=None)
            assert body["code"] == "upstream_unavailable"


# client failures mid-upload --------------------------------------------------------------------
def recording_sink(outcomes: list[tuple[str, int]]) -> UpstreamHandler:
    """Reads the body as it comes and records whether it ended cleanly, and after how much."""

    async def sink(request: web.Request) -> web.Response:
        if request.path == "/bulk/quick":
            return web.Response(text="quick")
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
        except (aiohttp.ClientPayloadError, ConnectionError):
            outcomes.append(("broken", size))
            raise
        outcomes.append(("complete", size))
        return web.Response(text="done")

    return sink


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_client_disconnect_mid_upload(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, framing: str, reset: bool
) -> None:
    outcomes: list[tuple[str, int]] = []
    async with serve(recording_sink(outcomes)) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key(concurrency_limit=1)
        _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        head = f"POST /bulk/up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        if framing == "chunked":
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for _ in range(20):
                writer.write(b"10000\r\n" + b"u" * 0x10000 + b"\r\n")
        else:
            writer.write(f"{head}Content-Length: 5000000\r\n\r\n".encode())
            writer.write(b"u" * 20 * 0x10000)
        await writer.drain()
        await asyncio.sleep(0.2)
        if reset:
            writer.transport.abort()
        else:
            writer.close()
        async with aiohttp.ClientSession() as session:
            await until_slot_returns(session, f"{gateway.url}/bulk/quick", key, within=1)
        for _ in range(100):
            if outcomes:
                break
            await asyncio.sleep(0.02)
    # the upstream saw a broken request, never a shorter body passed off as complete
    assert [outcome for outcome, _ in outcomes] == ["broken"], outcomes
    assert not [r for r in caplog.records if r.name == "gateway.error"]
