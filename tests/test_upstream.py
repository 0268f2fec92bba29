"""The upstream HTTP/1.1 client against real servers on free ports.

Well-behaved upstreams are aiohttp apps (``AppRunner`` + ``TCPSite``); misbehaving ones are raw
asyncio servers that write exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import struct
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.upstream import UpstreamGroup, UpstreamPool, UpstreamResponse
from tests.conftest import free_port

MB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # 64 KiB


# --- a well-behaved upstream ------------------------------------------------------------------


@dataclass
class Upstream:
    port: int
    scheme: str = "http"
    peers: list[tuple[str, int]] = field(default_factory=list)
    sse_next: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    name: str = "a"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(set(self.peers))


STATE = web.AppKey("state", Upstream)
routes = web.RouteTableDef()


@web.middleware
async def count_connections(request: web.Request, handler: Any) -> web.StreamResponse:
    assert request.transport is not None
    request.app[STATE].peers.append(request.transport.get_extra_info("peername"))
    resp: web.StreamResponse = await handler(request)
    return resp


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from {request.app[STATE].name}")


@routes.route("*", "/echo")
async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "host": request.headers.getall("Host"),
            "headers": [[k, v] for k, v in request.headers.items()],
            "length": len(body),
            "body": body.decode("latin-1"),
        }
    )


@routes.get("/slow")
async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2)
    return web.Response(text="slow")


@routes.get("/chunked")
async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"one,", b"two,", b"three"):
        await resp.write(part)
    await resp.write_eof()
    return resp


@routes.get("/download")
async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query["size"])
    resp = web.StreamResponse()
    if request.query.get("length"):
        resp.content_length = size
    await resp.prepare(request)
    sent = 0
    try:
        while sent < size:
            block = BLOCK[: size - sent]
            await resp.write(block)
            sent += len(block)
    except (ConnectionError, RuntimeError):
        request.app[STATE].aborted.set()
        raise
    await resp.write_eof()
    return resp


@routes.post("/upload")
async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    chunked = request.headers.get("Transfer-Encoding", "")
    return web.json_response({"sha256": digest.hexdigest(), "size": size, "chunked": chunked})


@routes.get("/sse")
async def sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: one\n\n")
    await asyncio.wait_for(request.app[STATE].sse_next.wait(), 5)
    await resp.write(b"data: two\n\n")
    await resp.write_eof()
    return resp


@routes.get("/status/{code}")
async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, headers={"ETag": '"x"', "X-Code": str(code)})


@routes.get("/redirect")
async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


@routes.get("/close")
async def close(request: web.Request) -> web.Response:
    resp = web.Response(text="bye")
    resp.force_close()
    return resp


def build_app(state: Upstream) -> web.Application:
    app = web.Application(middlewares=[count_connections])
    app[STATE] = state
    app.add_routes(routes)
    return app


@contextlib.asynccontextmanager
async def serve(
    name: str = "a", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Upstream]:
    state = Upstream(port=0, name=name, scheme="https" if ssl_context else "http")
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve() as state:
        yield state


@pytest.fixture
async def pool(upstream: Upstream) -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(upstream.url)
    yield p
    await p.close()


# --- misbehaving upstreams: raw asyncio servers -----------------------------------------------

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawServer:
    port: int
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def raw_server(handle: RawHandler) -> AsyncIterator[RawServer]:
    state = RawServer(port=0)
    tasks: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        state.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handle(reader, writer, state.connections)
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader, state: RawServer | None = None) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if state is not None:
        state.heads.append(head)
    return head


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def get(pool: UpstreamPool, target: str = "/", timeout: float = 5.0) -> UpstreamResponse:
    return await pool.request("GET", target, [], None, timeout=timeout)


# --- keep-alive and connection management -----------------------------------------------------


async def test_sequential_requests_reuse_one_connection(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    for _ in range(50):
        resp = await get(pool)
        assert resp.status == 200
        assert await resp.read() == b"hello from a"
    assert len(upstream.peers) == 50
    assert upstream.connections == 1


async def test_concurrent_requests_use_several_connections(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    async def one() -> bytes:
        return await (await get(pool, "/slow")).read()

    assert await asyncio.gather(*(one() for _ in range(8))) == [b"slow"] * 8
    assert upstream.connections == 8
    for _ in range(8):  # all eight went back to the pool and are reused
        assert await (await get(pool)).read() == b"hello from a"
    assert upstream.connections == 8


async def test_idle_set_is_bounded(upstream: Upstream) -> None:
    pool = UpstreamPool(upstream.url, max_idle=2)
    try:

        async def one() -> bytes:
            return await (await get(pool, "/slow")).read()

        await asyncio.gather(*(one() for _ in range(5)))
        await asyncio.sleep(0.05)
        assert len(pool._idle) == 2
        assert len(pool._conns) == 2
    finally:
        await pool.close()


async def test_idle_connections_expire(upstream: Upstream) -> None:
    pool = UpstreamPool(upstream.url, idle_timeout=0.2)
    try:
        await (await get(pool)).read()
        assert len(pool._idle) == 1
        await asyncio.sleep(0.45)
        assert pool._idle == []
        assert pool._conns == set()
        await (await get(pool)).read()
        assert upstream.connections == 2
    finally:
        await pool.close()


async def test_connection_close_response_is_not_reused(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    for _ in range(3):
        resp = await get(pool, "/close")
        assert ("Connection", "close") in resp.headers
        assert await resp.read() == b"bye"
    assert upstream.connections == 3
    assert pool._idle == []


async def test_http10_without_keep_alive_is_not_reused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for _ in range(3):
                assert await (await get(pool)).read() == b"ok"
            assert server.connections == 3
        finally:
            await pool.close()


async def test_stale_idle_connection_is_replayed_transparently() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        if n == 1:  # the race: the server drops the idle connection as the request arrives
            writer.write(OK)
            await read_head(reader)
            return
        writer.write(OK)
        while True:
            await read_head(reader)
            writer.write(OK)

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            assert await (await get(pool)).read() == b"ok"
            resp = await pool.request("POST", "/", [], b"replayable", timeout=5)
            assert await resp.read() == b"ok"
            assert server.connections == 2
        finally:
            await pool.close()


async def test_stale_connection_with_streamed_body_is_not_replayed() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(OK)
        await read_head(reader)

    async def body() -> AsyncIterator[bytes]:
        yield b"not replayable"

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            assert await (await get(pool)).read() == b"ok"
            with pytest.raises(UpstreamError) as info:
                await pool.request("POST", "/", [], body(), timeout=5)
            assert info.value.timeout is False
            assert server.connections == 1
        finally:
            await pool.close()


async def test_idle_connection_closed_by_server_is_dropped() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            assert await (await get(pool)).read() == b"ok"
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
            assert pool._idle == []
            assert await (await get(pool)).read() == b"ok"
            assert server.connections == 2
        finally:
            await pool.close()


async def test_abandoned_response_closes_the_connection(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    resp = await get(pool, f"/download?size={20 * MB}")
    async for chunk in resp.chunks():
        assert chunk
        break
    resp.release()
    resp.release()  # idempotent
    await asyncio.wait_for(upstream.aborted.wait(), 5)
    assert pool._idle == []
    assert await (await get(pool)).read() == b"hello from a"
    assert upstream.connections == 2


async def test_release_after_complete_body_reuses_the_connection(
    upstream: Upstream, pool: UpstreamPool
) -> None:
    resp = await get(pool)
    await asyncio.sleep(0.05)  # the small body is fully received, though never read
    resp.release()
    assert len(pool._idle) == 1
    with pytest.raises(RuntimeError):
        await resp.read()
    await (await get(pool)).read()
    assert upstream.connections == 1


async def test_close_closes_everything(upstream: Upstream) -> None:
    pool = UpstreamPool(upstream.url)
    busy = await get(pool, f"/download?size={20 * MB}")
    await (await get(pool)).read()
    assert len(pool._conns) == 2
    assert len(pool._idle) == 1
    await pool.close()
    assert pool._conns == set()
    with pytest.raises(UpstreamError):
        await busy.read()
    with pytest.raises(UpstreamError):
        await get(pool)


# --- request framing --------------------------------------------------------------------------


async def test_request_framing_and_host() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_head(reader, server)
            if b"chunked" in head:
                await reader.readuntil(b"0\r\n\r\n")
            elif b"Content-Length: " in head:
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.write(OK)

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""  # an empty chunk must not end the chunked body
        yield b"def"

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for method, body, length in [
                ("GET", None, None),
                ("POST", None, None),
                ("PUT", b"12345", None),
                ("POST", stream(), None),
                ("POST", stream(), 6),
            ]:
                resp = await pool.request(
                    method, "/p?q=1", [("X-A", "1")], body, timeout=5, body_length=length
                )
                assert await resp.read() == b"ok"
            resp = await pool.request("GET", "/", [("host", "other.example")], None, timeout=5)
            await resp.read()
        finally:
            await pool.close()
    host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
    get_, post_none, put, chunked, sized, own_host = server.heads
    assert get_ == b"GET /p?q=1 HTTP/1.1\r\n" + host + b"X-A: 1\r\n\r\n"
    assert post_none.endswith(b"X-A: 1\r\nContent-Length: 0\r\n\r\n")
    assert put.endswith(b"Content-Length: 5\r\n\r\n")
    assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    assert sized.endswith(b"Content-Length: 6\r\n\r\n")
    assert own_host == b"GET / HTTP/1.1\r\nhost: other.example\r\n\r\n"
    assert server.connections == 1


async def test_request_echo_roundtrip(pool: UpstreamPool) -> None:
    resp = await pool.request(
        "PATCH", "/echo?x=%20y", [("X-Thing", "caf\u00e9")], b"payload", timeout=5
    )
    data = await resp.read()
    echo = json.loads(data)
    assert echo["method"] == "PATCH"
    assert echo["path"] == "/echo?x=%20y"
    assert echo["host"] == [pool.host_header]
    assert ["X-Thing", "caf\u00e9"] in echo["headers"]
    assert echo["body"] == "payload"
    assert resp.content_length == len(data)


async def test_header_injection_is_refused(pool: UpstreamPool) -> None:
    with pytest.raises(ValueError):
        await pool.request("GET", "/", [("X-A", "1\r\nX-B: 2")], None, timeout=5)
    with pytest.raises(ValueError):
        await pool.request("GET", "/a b", [], None, timeout=5)
    with pytest.raises(ValueError):
        await pool.request("GET", "/\n", [], None, timeout=5)


async def test_streamed_body_length_mismatch(pool: UpstreamPool) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"

    with pytest.raises(UpstreamError):
        await pool.request("POST", "/echo", [], stream(), timeout=5, body_length=10)
    with pytest.raises(UpstreamError):
        await pool.request("POST", "/echo", [], stream(), timeout=5, body_length=2)
    assert pool._idle == []


async def test_body_iterator_errors_propagate_and_close(pool: UpstreamPool) -> None:
    class ClientGone(Exception):
        pass

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ClientGone

    with pytest.raises(ClientGone):
        await pool.request("POST", "/upload", [], stream(), timeout=5)
    assert pool._idle == []
    assert pool._conns == set() or all(c.transport.is_closing() for c in pool._conns)


def test_base_url_parsing() -> None:
    p = UpstreamPool("https://api.internal:8443/base/")
    assert (p.host, p.port, p.host_header, p.base_path) == (
        "api.internal",
        8443,
        "api.internal:8443",
        "/base",
    )
    assert UpstreamPool("http://example.com:80/").host_header == "example.com"
    assert UpstreamPool("http://example.com/").base_path == ""
    assert UpstreamPool("https://[::1]:443").host_header == "[::1]"
    assert UpstreamPool("http://[::1]:9000").host_header == "[::1]:9000"
    for bad in ("ftp://x", "http://", "http://x/?q=1", "http://u:p@x/"):
        with pytest.raises(ValueError):
            UpstreamPool(bad)


# --- response framing -------------------------------------------------------------------------


async def test_content_length_and_chunked_responses(pool: UpstreamPool) -> None:
    resp = await get(pool)
    assert resp.content_length == len(b"hello from a")
    assert await resp.read() == b"hello from a"
    resp = await get(pool, "/chunked")
    assert resp.content_length is None
    assert ("Transfer-Encoding", "chunked") in resp.headers
    assert await resp.read() == b"one,two,three"


async def test_until_close_response() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"second")
        await writer.drain()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for _ in range(2):
                resp = await get(pool)
                assert resp.content_length is None
                assert await resp.read() == b"first second"
            assert server.connections == 2
        finally:
            await pool.close()


async def test_head_204_304_have_no_body(upstream: Upstream, pool: UpstreamPool) -> None:
    resp = await pool.request("HEAD", "/", [], None, timeout=5)
    assert resp.status == 200
    assert resp.content_length == len(b"hello from a")
    assert await resp.read() == b""
    for code in (204, 304):
        resp = await get(pool, f"/status/{code}")
        assert resp.status == code
        assert ("X-Code", str(code)) in resp.headers
        assert [c async for c in resp.chunks()] == []
    assert await (await get(pool)).read() == b"hello from a"  # the parser is not confused
    assert upstream.connections == 1


async def test_head_with_content_length_from_raw_server() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await read_head(reader)
        writer.write(OK)
        await reader.read()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for _ in range(2):
                resp = await pool.request("HEAD", "/", [], None, timeout=5)
                assert await resp.read() == b""
            assert await (await get(pool)).read() == b"ok"
            assert server.connections == 1
        finally:
            await pool.close()


async def test_interim_responses_are_skipped() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_head(reader)
            await reader.readexactly(4)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello")

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for _ in range(2):
                resp = await pool.request(
                    "POST", "/", [("Expect", "100-continue")], b"data", timeout=5
                )
                assert (resp.status, resp.reason) == (201, "Created")
                assert resp.headers == [("Content-Length", "5")]
                assert await resp.read() == b"hello"
            assert server.connections == 1
        finally:
            await pool.close()


async def test_headers_keep_order_and_duplicates() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 404 Not Quite Found\r\nSet-Cookie: a=1\r\nX-Y: z\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
        )
        await reader.read()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            resp = await get(pool)
            assert (resp.status, resp.reason) == (404, "Not Quite Found")
            assert resp.headers == [
                ("Set-Cookie", "a=1"),
                ("X-Y", "z"),
                ("Set-Cookie", "b=2"),
                ("Content-Length", "0"),
            ]
            assert await resp.read() == b""
        finally:
            await pool.close()


async def test_redirect_is_returned_not_followed(upstream: Upstream, pool: UpstreamPool) -> None:
    resp = await get(pool, "/redirect")
    assert resp.status == 302
    assert ("Location", "/elsewhere") in resp.headers
    await resp.read()
    assert len(upstream.peers) == 1


# --- errors -----------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(UpstreamError) as info:
            await get(pool)
        assert info.value.timeout is False
        assert str(info.value) == "connect failed: ConnectionRefusedError"
    finally:
        await pool.close()


async def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # deterministic without a resolver
    pool = UpstreamPool("http://no-such-host.invalid:9")
    try:
        with pytest.raises(UpstreamError) as info:
            await get(pool)
        assert info.value.timeout is False
        assert str(info.value) == "connect failed: gaierror"
    finally:
        await pool.close()


async def test_cancelled_request_closes_the_connection() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            task = asyncio.create_task(get(pool))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool._idle == []
            assert all(conn.transport.is_closing() for conn in pool._conns)
        finally:
            await pool.close()


async def test_silent_server_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as info:
                await pool.request("POST", "/secret?token=abc", [], b"secret", timeout=0.3)
            elapsed = time.monotonic() - started
            assert info.value.timeout is True
            assert 0.25 <= elapsed < 1.0
            assert "secret" not in str(info.value)
            assert pool._idle == []
        finally:
            await pool.close()


async def test_body_stall_times_out_per_chunk() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        for _ in range(3):  # slower than nothing, faster than the timeout: fine
            await asyncio.sleep(0.15)
            writer.write(b"x")
        await reader.read()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            resp = await get(pool, timeout=0.3)
            received = b""
            with pytest.raises(UpstreamError) as info:
                async for chunk in resp.chunks():
                    received += chunk
            assert info.value.timeout is True
            assert received == b"0123456789xxx"
            assert pool._conns == set() or all(c.transport.is_closing() for c in pool._conns)
        finally:
            await pool.close()


async def test_reset_mid_body() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            resp = await get(pool)
            with pytest.raises(UpstreamError) as info:
                await resp.read()
            assert info.value.timeout is False
        finally:
            await pool.close()


async def test_eof_before_complete_response() -> None:
    replies = [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(replies[n - 1])
        await writer.drain()

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for _ in replies:
                with pytest.raises(UpstreamError) as info:
                    await (await get(pool)).read()
                assert info.value.timeout is False
        finally:
            await pool.close()


async def test_malformed_response() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(replies[n - 1])
        await reader.read()

    replies = [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    messages = ["malformed response"] * 4 + ["unexpected protocol upgrade"]
    replies.append(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            for message in messages:
                with pytest.raises(UpstreamError) as info:
                    await (await get(pool)).read()
                assert (str(info.value), info.value.timeout) == (message, False)
            assert pool._idle == []
        finally:
            await pool.close()


async def test_early_response_stops_the_upload() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        while await reader.read(65536):
            pass

    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += len(BLOCK)
            yield BLOCK

    async with raw_server(handle) as server:
        pool = UpstreamPool(server.url)
        try:
            resp = await pool.request("PUT", "/", [], endless(), timeout=5)
            assert resp.status == 413
            assert await resp.read() == b"big"
            assert pool._idle == []
            assert produced < 64 * MB
        finally:
            await pool.close()


# --- streaming and back-pressure --------------------------------------------------------------


async def test_streamed_upload_50mb(pool: UpstreamPool) -> None:
    size = 50 * MB
    digest = hashlib.sha256()

    async def generate() -> AsyncIterator[bytes]:
        for i in range(size // len(BLOCK)):
            chunk = i.to_bytes(8, "big") + BLOCK[8:]
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        resp = await pool.request("POST", "/upload", [], generate(), timeout=10)
        result = json.loads(await resp.read())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == {"sha256": digest.hexdigest(), "size": size, "chunked": "chunked"}
    assert peak < 8 * MB, peak


async def test_streamed_upload_with_known_length(pool: UpstreamPool) -> None:
    size = 5 * MB

    async def generate() -> AsyncIterator[bytes]:
        for _ in range(size // len(BLOCK)):
            yield BLOCK

    resp = await pool.request("POST", "/upload", [], generate(), timeout=10, body_length=size)
    result = json.loads(await resp.read())
    assert result["size"] == size
    assert result["chunked"] == ""
    assert result["sha256"] == hashlib.sha256(BLOCK * (size // len(BLOCK))).hexdigest()


@pytest.mark.parametrize("known_length", [False, True])
async def test_streamed_download_50mb(pool: UpstreamPool, known_length: bool) -> None:
    size = 50 * MB
    expected = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        expected.update(BLOCK)
    digest = hashlib.sha256()
    largest = received = 0
    tracemalloc.start()
    try:
        query = "&length=1" if known_length else ""
        resp = await pool.request("GET", f"/download?size={size}{query}", [], None, timeout=10)
        assert resp.content_length == (size if known_length else None)
        async for chunk in resp.chunks():
            digest.update(chunk)
            received += len(chunk)
            largest = max(largest, len(chunk))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    assert largest <= 1 * MB
    assert peak < 8 * MB, peak
    assert len(pool._idle) == 1


async def test_slow_consumer_pauses_reading(pool: UpstreamPool) -> None:
    resp = await get(pool, f"/download?size={8 * MB}")
    await asyncio.sleep(0.2)  # the server keeps sending, the client stops reading at the mark
    conn = resp._conn
    assert conn is not None
    assert conn.read_paused
    assert conn.buffered <= 1 * MB
    body = await resp.read()
    assert len(body) == 8 * MB


async def test_sse_events_arrive_one_by_one(upstream: Upstream, pool: UpstreamPool) -> None:
    resp = await get(pool, "/sse")
    assert ("Content-Type", "text/event-stream") in resp.headers
    events = resp.chunks()
    async with asyncio.timeout(3):
        first = await anext(events)
        assert first == b"data: one\n\n"
        upstream.sse_next.set()
        rest = [chunk async for chunk in events]
    assert b"".join(rest) == b"data: two\n\n"


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_upstream(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with serve(ssl_context=server_ctx) as upstream:
        trusting = ssl.create_default_context(cafile=str(cert))
        for host in ("127.0.0.1", "localhost"):
            pool = UpstreamPool(f"https://{host}:{upstream.port}/", ssl_context=trusting)
            try:
                for _ in range(3):
                    assert await (await get(pool)).read() == b"hello from a"
                resp = await pool.request("POST", "/echo", [], b"over tls", timeout=5)
                assert b'"body": "over tls"' in await resp.read()
                assert len(pool._conns) == 1
            finally:
                await pool.close()
        assert upstream.connections == 2

        untrusting = UpstreamPool(upstream.url)
        try:
            with pytest.raises(UpstreamError) as info:
                await get(untrusting)
            assert str(info.value) == "connect failed: SSLCertVerificationError"
        finally:
            await untrusting.close()


# --- groups -----------------------------------------------------------------------------------


async def test_group_round_robin() -> None:
    async with serve("a") as a, serve("b") as b:
        group = UpstreamGroup([a.url, b.url])
        try:
            bodies = [await (await group.request("GET", "/", [], None, timeout=5)).read()
                      for _ in range(4)]  # fmt: skip
            assert bodies == [b"hello from a", b"hello from b"] * 2
            assert [group.pick().port for _ in range(2)] == [a.port, b.port]
        finally:
            await group.close()
        assert a.connections == b.connections == 1


async def test_group_failover_on_refused_target() -> None:
    async with serve("b") as b:
        group = UpstreamGroup([f"http://127.0.0.1:{free_port()}", b.url], connect_timeout=1)
        try:
            for _ in range(4):
                resp = await group.request("GET", "/", [], None, timeout=5)
                assert await resp.read() == b"hello from b"
            assert [group.pick().port for _ in range(3)] == [b.port] * 3  # the dead one is down
        finally:
            await group.close()


async def test_group_all_targets_down() -> None:
    group = UpstreamGroup([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    try:
        with pytest.raises(UpstreamError) as info:
            await group.request("GET", "/", [], None, timeout=5)
        assert info.value.timeout is False
        with pytest.raises(UpstreamError):  # both marked down: still tried, still failing
            await group.request("GET", "/", [], None, timeout=5)
    finally:
        await group.close()
