"""What the upstream receives and what the client gets back (SPEC §4, README "What the upstream
receives"), end to end: a real gateway, a real key store, real upstreams over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.echo import Received
from tests.conftest import Gateway, GatewayFactory, bearer, raw_request, start_site

IDENTITY = (
    "X-Workspace-Id",
    "X-Project-Id",
    "X-Namespace-Id",
    "X-Namespace",
    "X-Api-Key-Id",
    "X-Api-Key-Permissions",
    "X-User-Id",
    "X-Request-Id",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
)

UpstreamHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: UpstreamHandler) -> AsyncIterator[str]:
    """A one-handler aiohttp upstream that sees bodies exactly as sent (no auto-inflate)."""
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, auto_decompress=False)
    port = await start_site(runner)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_upstream(response: bytes) -> AsyncIterator[str]:
    """An upstream that answers every body-less request with ``response``, byte for byte."""
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def gateway_for(make: GatewayFactory, url: str, **route: Any) -> Gateway:
    return await make(routes=[{"name": "up", "path": "/up/", "upstream": url, **route}])


def only(received: Received, name: str) -> str:
    """The single value of ``name`` the upstream received (fails on zero or several copies)."""
    values = received.all(name)
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


# identity headers ------------------------------------------------------------------------------
async def test_identity_headers_set_by_the_gateway(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key(user_id="alice@example.com")
    record = gateway.created[-1]
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    got = gateway.upstream.log.last
    assert only(got, "X-Workspace-Id") == gateway.workspace.id
    assert only(got, "X-Project-Id") == record.project_id == gateway.workspace.default_project_id
    assert only(got, "X-Api-Key-Id") == record.key_id
    assert only(got, "X-Api-Key-Permissions") == "read,write"
    assert only(got, "X-User-Id") == "alice@example.com"
    assert only(got, "X-Request-Id") == request_id
    assert only(got, "X-Forwarded-For") == "127.0.0.1"
    assert only(got, "X-Forwarded-Proto") == "http"
    assert only(got, "X-Forwarded-Host") == f"127.0.0.1:{gateway.port}"
    assert only(got, "Host") == f"127.0.0.1:{gateway.upstream.port}"  # its own host
    assert got.all("X-Namespace-Id") == got.all("X-Namespace") == []  # none selected
    assert got.all("Authorization") == []


async def test_key_without_user_id_sends_no_user_id(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "X-User-Id": "mallory", "X-Namespace-Id": "ns_forged"}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
    got = gateway.upstream.log.last
    assert got.all("X-User-Id") == []
    assert got.all("X-Namespace-Id") == []


async def test_project_header_selects_another_project(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    project = await gateway.keys.create_project(gateway.workspace.id, "p2", "test")
    key = await gateway.key()
    headers = {**bearer(key), "X-Project-Id": project.id}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
    assert only(gateway.upstream.log.last, "X-Project-Id") == project.id


@pytest.mark.parametrize("how", ["name", "id", "query"])
async def test_namespace_selection(
    gateway: Gateway, http: aiohttp.ClientSession, how: str
) -> None:
    namespace = await gateway.keys.create_namespace(gateway.workspace.id, "team-a", "test")
    key = await gateway.key()
    url, headers = f"{gateway.url}/api/ai/models", bearer(key)
    if how == "name":
        headers["X-Namespace"] = "team-a"
    elif how == "id":
        headers["X-Namespace"] = namespace.id
    else:
        url += "?namespace=team-a"
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
    got = gateway.upstream.log.last
    assert only(got, "X-Namespace-Id") == namespace.id
    assert only(got, "X-Namespace") == "team-a"
    if how == "query":
        assert got.path == "/api/ai/models?namespace=team-a"


async def test_client_copies_of_identity_headers_are_replaced(gateway: Gateway) -> None:
    project = await gateway.keys.create_project(gateway.workspace.id, "p2", "test")
    namespace = await gateway.keys.create_namespace(gateway.workspace.id, "team-a", "test")
    key = await gateway.key(user_id="alice@example.com")
    record = gateway.created[-1]
    forged = [
        "x-workspace-id: ws_forged",
        "X-WORKSPACE-ID: ws_forged2",
        "X-Workspace-Id: ws_forged3",
        "x-api-key-id: key_forged",
        "X-API-KEY-ID: key_forged2",
        "x-api-key-permissions: admin",
        "X-Api-Key-Permissions: admin,write",
        "x-user-id: mallory",
        "X-USER-ID: mallory2",
        "x-namespace-id: ns_forged",
        "X-Namespace-ID: ns_forged2",
        "x-forwarded-for: 6.6.6.6",
        "X-FORWARDED-FOR: 7.7.7.7",
        "x-forwarded-proto: https",
        "X-Forwarded-Host: evil.example",
        "x-forwarded-host: evil2.example",
        "Forwarded: for=6.6.6.6;proto=https",
        "forwarded: for=7.7.7.7",
        "x-request-id: client-id-1",
        # read by the tenancy stage (once each), then replaced by the gateway's copy
        f"x-project-id: {project.id}",
        "X-NAMESPACE: team-a",
    ]
    head = "\n".join(
        ["GET /api/ai/models HTTP/1.1", "Host: client.example", f"Authorization: Bearer {key}",
         *forged, ""]
    )
    response = await raw_request(gateway.port, head)
    assert response.status == 200, response.body
    got = gateway.upstream.log.last
    assert only(got, "X-Workspace-Id") == gateway.workspace.id
    assert only(got, "X-Project-Id") == project.id
    assert only(got, "X-Namespace-Id") == namespace.id
    assert only(got, "X-Namespace") == "team-a"
    assert only(got, "X-Api-Key-Id") == record.key_id
    assert only(got, "X-Api-Key-Permissions") == "read,write"
    assert only(got, "X-User-Id") == "alice@example.com"
    assert only(got, "X-Request-Id") == "client-id-1"  # a safe token: kept, once
    assert only(got, "X-Forwarded-For") == "127.0.0.1"
    assert only(got, "X-Forwarded-Proto") == "http"
    assert only(got, "X-Forwarded-Host") == "client.example"
    assert got.all("Forwarded") == []
    assert got.all("Authorization") == []
    for name in IDENTITY:
        assert all("forged" not in v and "mallory" not in v for v in got.all(name)), name


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc/123", False), ("abc-123_x.y:z", True), ("bad id;drop", False),
     ("x" * 129, False)],
)
async def test_request_id_kept_only_when_safe(
    gateway: Gateway, http: aiohttp.ClientSession, sent: str, kept: bool
) -> None:
    key = await gateway.key()
    headers = {**bearer(key), "X-Request-Id": sent}
    async with http.get(f"{gateway.url}/api/ai/models", headers=headers) as response:
        assert response.status == 200
        returned = response.headers["X-Request-Id"]
    forwarded = only(gateway.upstream.log.last, "X-Request-Id")
    assert forwarded == returned
    assert (forwarded == sent) is kept
    assert forwarded  # generated when the client's was refused


async def test_authorization_never_reaches_the_upstream(gateway: Gateway) -> None:
    key = await gateway.key()
    response = await raw_request(
        gateway.port,
        f"GET /api/ai/models HTTP/1.1\nHost: x\nauthorization: bearer {key}\n"
        "Proxy-Authorization: Basic dXNlcjpwYXNz\n",
    )
    assert response.status == 200
    got = gateway.upstream.log.last
    assert got.all("Authorization") == []
    assert got.all("Proxy-Authorization") == []
    assert key.encode() not in b"".join(v.encode() for _, v in got.headers)


async def test_hop_by_hop_request_headers_are_removed(gateway: Gateway) -> None:
    key = await gateway.key()
    head = "\n".join(
        [
            "GET /api/ai/models HTTP/1.1",
            "Host: x",
            f"Authorization: Bearer {key}",
            "Connection: keep-alive, X-Custom-Hop",
            "Connection: x-other-hop",
            "Keep-Alive: timeout=5, max=100",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Upgrade: websocket",
            "Proxy-Authorization: Basic dXNlcjpwYXNz",
            "Proxy-Connection: keep-alive",
            "X-Custom-Hop: secret",
            "X-Other-Hop: secret",
            "X-End-To-End: kept",
            "",
        ]
    )
    response = await raw_request(gateway.port, head)
    assert response.status == 200, response.body
    got = gateway.upstream.log.last
    for name in ("Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization",
                 "Proxy-Connection", "X-Custom-Hop", "X-Other-Hop"):
        assert got.all(name) == [], name
    assert all("custom-hop" not in v.lower() for v in got.all("Connection"))
    assert only(got, "X-End-To-End") == "kept"


async def test_hop_by_hop_response_headers_are_removed(make_gateway: GatewayFactory) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: X-Secret, keep-alive\r\n"
        b"X-Secret: 1\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Trailer: X-Checksum\r\n"
        b"X-Visible: yes\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
        b"ok"
    )
    async with raw_upstream(answer) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        response = await raw_request(
            gateway.port, f"GET /up/x HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
        )
    assert response.status == 200
    assert response.body == b"ok"
    names = {name.lower() for name, _ in response.headers}
    for name in ("x-secret", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer"):
        assert name not in names, name
    assert all("x-secret" not in v.lower() for k, v in response.headers
               if k.lower() == "connection")
    assert response.header("X-Visible") == "yes"
    assert response.header("X-Request-Id")


async def test_every_set_cookie_arrives(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        for i in range(3):
            response.headers.add("Set-Cookie", f"c{i}=v{i}; Path=/; HttpOnly")
        return response

    async with serve(cookies) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/up/x", headers=bearer(key)) as response:
            assert response.status == 200
            assert response.headers.getall("Set-Cookie") == [
                f"c{i}=v{i}; Path=/; HttpOnly" for i in range(3)
            ]


async def test_auth_none_route_sets_no_identity(gateway: Gateway) -> None:
    head = "\n".join(
        [
            "GET /public/x HTTP/1.1",
            "Host: client.example",
            "X-Workspace-Id: ws_forged",
            "x-project-id: proj_forged",
            "X-NAMESPACE: forged",
            "X-Namespace-Id: ns_forged",
            "X-Api-Key-Id: key_forged",
            "X-Api-Key-Permissions: admin",
            "x-user-id: mallory",
            "X-Forwarded-For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Request-Id: public-1",
            "",
        ]
    )
    response = await raw_request(gateway.port, head)
    assert response.status == 200, response.body
    got = gateway.upstream.log.last
    assert got.path == "/x"
    for name in ("X-Workspace-Id", "X-Project-Id", "X-Namespace", "X-Namespace-Id",
                 "X-Api-Key-Id", "X-Api-Key-Permissions", "X-User-Id", "Forwarded"):
        assert got.all(name) == [], name
    assert only(got, "X-Request-Id") == "public-1"
    assert only(got, "X-Forwarded-For") == "127.0.0.1"
    assert only(got, "X-Forwarded-Proto") == "http"
    assert only(got, "X-Forwarded-Host") == "client.example"


# paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/api/ai/x/../models", "/api/ai/models"),
        ("/api/ai/./models", "/api/ai/models"),
        ("/api/ai/%6dodels", "/api/ai/models"),
        ("/api/ai/%7Euser%2d1", "/api/ai/~user-1"),
        ("/api/ai/a%20b%3ac", "/api/ai/a%20b%3Ac"),  # reserved stay encoded, upper-cased
        ("/api/ai/models?q=a%2Fb&s=%20x+y&r=1&r=2&e=&u=%C3%A9",
         "/api/ai/models?q=a%2Fb&s=%20x+y&r=1&r=2&e=&u=%C3%A9"),  # query untouched
        ("/api/ai/x/../models?next=../../etc", "/api/ai/models?next=../../etc"),
        ("/api/ai", "/api/ai"),
    ],
)
async def test_forwarded_path_is_the_normalised_path(
    gateway: Gateway, sent: str, forwarded: str
) -> None:
    key = await gateway.key()
    response = await raw_request(
        gateway.port, f"GET {sent} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
    )
    assert response.status == 200, response.body
    assert gateway.upstream.log.last.path == forwarded


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/based/a/b?q=1", "/base/path/a/b?q=1"),
        ("/based/", "/base/path/"),
        ("/based/a/../b", "/base/path/b"),
        ("/based/%61", "/base/path/a"),
        ("/public/x", "/x"),
        ("/public/x/y?z=%2F", "/x/y?z=%2F"),
        ("/public/", "/"),
        ("/public/a/./b/../c", "/a/c"),
    ],
)
async def test_strip_prefix(gateway: Gateway, sent: str, forwarded: str) -> None:
    key = await gateway.key(permissions=["read"])
    response = await raw_request(
        gateway.port, f"GET {sent} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
    )
    assert response.status == 200, response.body
    assert gateway.upstream.log.last.path == forwarded


@pytest.mark.parametrize(
    "path",
    [
        "/based/..%2Fsecret",
        "/based/a%2F..%2F..%2Fsecret",
        "/based/a%2fb",
        "/based/../api/ai/models",
        "/based/a/../../api/ai/models",
        "/based/%2e%2e/api/ai/models",
        "/based/.%2E/public/x",
        "/public/..%2fapi/ai/models",
        "/public/%2e%2e/api/ai/models",
        "/public/x/../../api/ai/models",
        "/public/x/%2E%2E/%2e%2e/based/a",
        "/api/ai/models%2F..%2F..%2Fpublic",
        "/api/ai/..%5Cadmin",
    ],
)
async def test_escapes_out_of_the_prefix_are_refused(gateway: Gateway, path: str) -> None:
    key = await gateway.key(permissions=["read"])
    response = await raw_request(
        gateway.port, f"GET {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
    )
    assert response.status == 400, (path, response.status)
    assert b'"bad_request"' in response.body
    assert gateway.upstream.log.received == []


@pytest.mark.parametrize(
    "path",
    ["/based/../secret", "/based/a/../../secret", "/based/%2e%2e/secret", "/based/..",
     "/public/..", "/public/.%2e/x"],
)
async def test_escapes_landing_on_no_route_reach_nothing(gateway: Gateway, path: str) -> None:
    # the resolved path ("/secret", "/") is outside every route: dot segments climbed out of
    # the prefix, which is a malformed request (400) before any upstream is involved
    key = await gateway.key(permissions=["read"])
    response = await raw_request(
        gateway.port, f"GET {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
    )
    assert response.status == 400, (path, response.status)
    assert b'"bad_request"' in response.body
    assert gateway.upstream.log.received == []


# redirects -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_returned_not_followed(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, status: int
) -> None:
    seen: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/up/start":
            return web.Response(status=status, headers={"Location": "/up/target"},
                                text="moved")
        return web.Response(text="target")

    async with serve(redirect) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.get(f"{gateway.url}/up/start", headers=bearer(key),
                            allow_redirects=False) as response:
            assert response.status == status
            assert response.headers["Location"] == "/up/target"
            assert await response.read() == b"moved"
    assert seen == ["/up/start"]


# methods, statuses, bodies ---------------------------------------------------------------------
async def test_head_keeps_content_length_and_sends_no_body(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    methods: list[str] = []

    async def sized(request: web.Request) -> web.Response:
        methods.append(request.method)
        return web.Response(body=b"z" * 12345, content_type="application/octet-stream")

    async with serve(sized) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        async with http.head(f"{gateway.url}/up/file", headers=bearer(key)) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == "12345"
            assert await response.read() == b""
        # the connection is still usable: a GET right after gets the whole body
        async with http.get(f"{gateway.url}/up/file", headers=bearer(key)) as response:
            assert await response.read() == b"z" * 12345
    assert methods == ["HEAD", "GET"]


async def test_head_through_raw_socket_has_no_body(make_gateway: GatewayFactory) -> None:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 200_000)

    async with serve(sized) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        request = (f"HEAD /up/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
                   f"GET /up/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                   "Connection: close\r\n\r\n")
        writer.write(request.encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 200000" in first
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes between the two responses
    assert rest.endswith(b"z" * 200_000)


@pytest.mark.parametrize(
    ("status", "body"),
    [(204, b""), (304, b""), (404, b'{"error": "nope"}'), (500, b"boom" * 30_000),
     (503, b"down"), (418, b"teapot")],
)
async def test_statuses_pass_through(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, status: int, body: bytes
) -> None:
    async def answer(request: web.Request) -> web.Response:
        headers = {"ETag": '"v1"', "X-Upstream": "yes"}
        if status in (204, 304):
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    async with serve(answer) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        for _ in range(2):  # twice: the upstream connection survives each status
            async with http.get(f"{gateway.url}/up/x", headers=bearer(key)) as response:
                assert response.status == status
                assert await response.read() == body
                assert response.headers["ETag"] == '"v1"'
                assert response.headers["X-Upstream"] == "yes"
                assert response.headers["X-Request-Id"]
                assert "application/problem+json" not in response.headers.get(
                    "Content-Type", "")


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses_send_no_body_bytes(
    make_gateway: GatewayFactory, status: int
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"ETag": '"v1"'})

    async with serve(empty) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        one = f"GET /up/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        writer.write(f"{one}\r\n{one}Connection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    first, second = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 %d" % status)
    assert b"transfer-encoding" not in first.lower()
    assert second.startswith(b"HTTP/1.1 %d" % status)  # nothing in between
    assert second.endswith(b"\r\n\r\n")  # and nothing after


BINARY = bytes(range(256))


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("size", [0, 1, 1000, 64 * 1024, 64 * 1024 + 1, 300_000])
async def test_request_bodies_arrive_intact(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, size: int
) -> None:
    key = await gateway.key()
    payload = (BINARY * (size // 256 + 1))[:size]
    async with http.request(method, f"{gateway.url}/v1/retrievers/r1/docs",
                            headers=bearer(key), data=payload) as response:
        assert response.status == 200, await response.text()
    got = gateway.upstream.log.last
    assert got.method == method
    assert got.body == payload
    if size:
        assert only(got, "Content-Length") == str(size)


@pytest.mark.parametrize("size", [10, 300_000])
async def test_chunked_request_body_arrives_intact(
    gateway: Gateway, http: aiohttp.ClientSession, size: int
) -> None:
    key = await gateway.key()
    payload = os.urandom(size)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, size, 7000):
            yield payload[i : i + 7000]

    async with http.post(f"{gateway.url}/api/ai/upload", headers=bearer(key),
                         data=chunks()) as response:
        assert response.status == 200
    assert gateway.upstream.log.last.body == payload


@pytest.mark.parametrize("chunked", [True, False])
async def test_upstream_answering_before_reading_the_body(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, chunked: bool
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=413, text="upstream says too big")

    payload = b"p" * (4 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with serve(refuse) as url:
        gateway = await gateway_for(make_gateway, url, max_body_bytes=64 * 1024 * 1024)
        key = await gateway.key()
        async with http.post(f"{gateway.url}/up/x", headers=bearer(key),
                             data=chunks() if chunked else io.BytesIO(payload),
                             timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 413
            assert await response.read() == b"upstream says too big"


@pytest.mark.parametrize("compressible", [True, False])
async def test_gzip_request_body_is_never_inflated(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, compressible: bool
) -> None:
    # 5 MiB of zeros compresses below the 1 MiB limit: the limit counts bytes on the wire
    raw = bytes(5 * 1024 * 1024) if compressible else os.urandom(200_000)
    compressed = gzip.compress(raw)
    bodies: list[tuple[str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        bodies.append((request.headers.get("Content-Encoding"), await request.read()))
        return web.Response(text="ok")

    async with serve(record) as url:
        gateway = await gateway_for(make_gateway, url, max_body_bytes=1024 * 1024)
        key = await gateway.key()
        headers = {**bearer(key), "Content-Encoding": "gzip",
                   "Content-Type": "application/octet-stream"}
        async with http.post(f"{gateway.url}/up/upload", headers=headers,
                             data=compressed) as response:
            assert response.status == 200
    assert bodies == [("gzip", compressed)]


@pytest.mark.parametrize("size", [1000, 2_000_000])
async def test_gzip_response_passes_through_compressed(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, size: int
) -> None:
    compressed = gzip.compress(os.urandom(size))

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip",
                                                      "Content-Type": "text/plain"})

    async with serve(zipped) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        headers = {**bearer(key), "Accept-Encoding": "gzip"}
        async with http.get(f"{gateway.url}/up/z", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Length"] == str(len(compressed))
            assert await response.read() == compressed


async def test_read_until_close_response_arrives_whole(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    body = os.urandom(300_000)
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: a/b\r\n\r\n" + body
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        served += 1
        writer.close()  # no Content-Length, not chunked: the close ends the body

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gateway = await gateway_for(make_gateway, f"http://127.0.0.1:{port}")
        key = await gateway.key()
        for _ in range(2):
            async with http.get(f"{gateway.url}/up/x", headers=bearer(key)) as response:
                assert response.status == 200
                assert await response.read() == body
    finally:
        server.close()
        await server.wait_closed()
    assert served == 2


async def test_interim_responses_are_not_passed_on(make_gateway: GatewayFactory) -> None:
    answer = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
    async with raw_upstream(answer) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        response = await raw_request(
            gateway.port, f"GET /up/x HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
        )
    assert response.status == 200
    assert response.body == b"final"


async def test_gateway_headers_win_over_the_upstreams(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def claims(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={
            "X-Request-Id": "upstream-made-this-up", "RateLimit-Remaining": "999999",
            "X-RateLimit-Limit": "999999", "X-Upstream": "kept"})

    async with serve(claims) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        headers = {**bearer(key), "X-Request-Id": "client-1"}
        async with http.get(f"{gateway.url}/up/x", headers=headers) as response:
            assert response.headers.getall("X-Request-Id") == ["client-1"]
            assert response.headers.getall("RateLimit-Remaining") == ["99"]
            assert response.headers.getall("X-RateLimit-Limit") == ["100"]
            assert response.headers["X-Upstream"] == "kept"


# keep-alive ------------------------------------------------------------------------------------
async def test_upstream_connections_are_reused(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    ports: list[int] = []

    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(text="ok")

    async with serve(peer) as url:
        gateway = await gateway_for(make_gateway, url)
        key = await gateway.key()
        for _ in range(50):
            async with http.get(f"{gateway.url}/up/x", headers=bearer(key)) as response:
                assert response.status == 200
                await response.read()
    assert len(ports) == 50
    assert len(set(ports)) <= 2, sorted(set(ports))


# upstream groups -------------------------------------------------------------------------------
def recorder(name: str, seen: list[str]) -> UpstreamHandler:
    async def record(request: web.Request) -> web.Response:
        seen.append(f"{name}{request.raw_path}")
        return web.Response(text=name)

    return record


async def test_round_robin_over_a_group(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    seen: list[str] = []
    async with serve(recorder("a", seen)) as a, serve(recorder("b", seen)) as b:
        gateway = await make_gateway(routes=[
            {"name": "up", "path": "/up/", "upstream": [a + "/base-a", b + "/base-b/"],
             "strip_prefix": True},
        ])
        key = await gateway.key()
        for i in range(4):
            async with http.get(f"{gateway.url}/up/x?i={i}", headers=bearer(key)) as response:
                assert response.status == 200
    assert sorted(seen) == ["a/base-a/x?i=0", "a/base-a/x?i=2", "b/base-b/x?i=1",
                            "b/base-b/x?i=3"]


@pytest.mark.parametrize("dead_first", [True, False])
async def test_a_refusing_target_is_skipped(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, dead_first: bool
) -> None:
    # README: "a target that refuses connections is skipped for 2 s"
    seen: list[str] = []
    async with serve(recorder("live", seen)) as live:
        dead = "http://127.0.0.1:9"  # nothing listens on the discard port
        targets = [dead, live] if dead_first else [live, dead]
        gateway = await make_gateway(routes=[{"name": "up", "path": "/up/", "upstream": targets}])
        key = await gateway.key()
        for i in range(6):
            async with http.post(f"{gateway.url}/up/x", headers=bearer(key),
                                 data=b"body %d" % i) as response:
                assert response.status == 200, await response.text()
    assert len(seen) == 6


# Expect: 100-continue --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [5, 200_000])
async def test_expect_100_continue_is_answered(gateway: Gateway, size: int) -> None:
    key = await gateway.key()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(f"POST /api/ai/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"e" * size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    got = gateway.upstream.log.last
    assert got.body == b"e" * size
    assert got.all("Expect") == []


async def test_expect_100_continue_refused_without_reading_the_body(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /api/ai/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        assert head.startswith(b"HTTP/1.1 401")  # a final answer, no 100 first
    finally:
        writer.close()
    assert gateway.upstream.log.received == []


async def test_expect_100_continue_with_aiohttp_client(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    async with http.post(f"{gateway.url}/api/ai/upload", headers=bearer(key),
                         data=b"x" * 100_000, expect100=True,
                         timeout=aiohttp.ClientTimeout(total=3)) as response:
        assert response.status == 200
    assert gateway.upstream.log.last.body == b"x" * 100_000


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_a_small_response_is_framed_as_aiohttp_would(
    make_gateway: GatewayFactory, version: str
) -> None:
    """A small response is written in one write by the gateway itself (README "Benchmark"),
    HTTP/1.0 by aiohttp (which also drops a header's non-UTF-8 bytes, where the one-write path
    passes them on unchanged): either way a Date and a Content-Type are added when the upstream sent
    none, one Content-Length, keep-alive honoured, and ``Connection: close`` ends the connection."""
    upstream = b"HTTP/1.1 201 Made It\r\nX-Bytes: caf\xe9\r\ncontent-length: 5\r\n\r\nhello"
    async with raw_upstream(upstream) as url:
        gateway = await gateway_for(make_gateway, url, auth="none")
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        one = f"GET /up/x HTTP/{version}\r\nHost: x\r\n"
        keep, close = ("", "Connection: close\r\n") if version == "1.1" else (
            "Connection: keep-alive\r\n", "")  # HTTP/1.0 closes unless asked not to
        writer.write(f"{one}{keep}\r\n{one}{close}\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)  # EOF: the gateway closed it
        writer.close()
    answers = data.split(f"HTTP/{version} 201 Made It\r\n".encode())
    assert answers[0] == b"" and len(answers) == 3, data
    for answer, closing in zip(answers[1:], (False, True), strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        names = [line.split(b":")[0].lower() for line in lines]
        assert body == b"hello"
        assert names.count(b"content-length") == 1 and b"Content-Length: 5" in lines
        if version == "1.1":  # aiohttp's own writer (HTTP/1.0) drops the byte it cannot encode
            assert b"X-Bytes: caf\xe9" in lines
        assert names.count(b"date") == 1
        assert b"Content-Type: application/octet-stream" in lines
        assert b"Server: gateway" in lines and names.count(b"x-request-id") == 1
        assert (b"Connection: close" in lines) is (closing and version == "1.1")
