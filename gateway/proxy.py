"""The last handler: build the upstream request by rule, stream both ways, map upstream
failures to 502/504, count usage.

Header rules (SPEC §4): hop-by-hop headers (RFC 9110 §7.6.1) and every header named in
``Connection`` are dropped both ways; the client's ``Authorization`` never leaves; every client
copy of the identity headers is dropped (names compared lower-cased, ``_`` read as ``-``) and the
gateway's own are set. The forwarded path is the normalised path that was authorized.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import RouteConfig
from gateway.errors import (
    BAD_REQUEST,
    PAYLOAD_TOO_LARGE,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    GatewayError,
    UpstreamError,
)
from gateway.pipeline.exchange import Exchange, Handler
from gateway.services import Services
from gateway.upstream import UpstreamResponse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
IDENTITY = frozenset(
    {
        "x-workspace-id",
        "x-project-id",
        "x-namespace-id",
        "x-namespace",
        "x-api-key-id",
        "x-api-key-permissions",
        "x-user-id",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)
# set by the gateway or by the upstream client's framing, never copied from the client
NOT_FORWARDED = HOP_BY_HOP | IDENTITY | {"authorization", "host", "content-length", "expect"}
NOT_RETURNED = HOP_BY_HOP | {"content-length", "x-request-id"}
SMALL_BODY = 64 * 1024  # read whole and answered in one write below this size


def connection_named(values: list[str]) -> set[str]:
    names: set[str] = set()
    for value in values:
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


def outbound_headers(exchange: Exchange) -> list[tuple[str, str]]:
    request = exchange.request
    drop = NOT_FORWARDED
    if "Connection" in request.headers:
        drop = drop | connection_named(request.headers.getall("Connection"))
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name.lower().replace("_", "-") not in drop
    ]
    headers.extend(identity_headers(exchange))
    return headers


def identity_headers(exchange: Exchange) -> list[tuple[str, str]]:
    request = exchange.request
    headers = [("X-Request-Id", exchange.request_id)]
    key = exchange.key
    if key is not None:
        headers += [
            ("X-Workspace-Id", key.workspace_id or ""),
            ("X-Project-Id", exchange.project_id or ""),
            ("X-Api-Key-Id", key.key_id),
            ("X-Api-Key-Permissions", ",".join(key.permissions)),
        ]
        if key.user_id:
            headers.append(("X-User-Id", key.user_id))
        if exchange.namespace_id is not None:
            headers.append(("X-Namespace-Id", exchange.namespace_id))
            headers.append(("X-Namespace", exchange.namespace_name or ""))
    peer = request.remote or ""
    headers += [
        ("X-Forwarded-For", peer),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", request.host),
    ]
    return headers


def returned_headers(upstream: UpstreamResponse, exchange: Exchange) -> CIMultiDict[str]:
    drop = NOT_RETURNED
    named = [v for k, v in upstream.headers if k.lower() == "connection"]
    if named:
        drop = drop | connection_named(named)
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in upstream.headers if name.lower() not in drop
    )
    headers.update(exchange.response_headers)
    return headers


def upstream_target(route: RouteConfig, base_path: str, exchange: Exchange) -> str:
    match = exchange.match
    assert match is not None  # routing runs first
    if route.strip_prefix:
        path = base_path.rstrip("/") + "/" + match.remainder
    else:
        path = base_path.rstrip("/") + exchange.path
    return path + "?" + exchange.query if exchange.query else path


async def counted_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused with 413 once it passes ``limit`` bytes (the
    bytes on the wire: a compressed body is counted compressed, never inflated here)."""
    seen = 0
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise GatewayError(PAYLOAD_TOO_LARGE, f"the request body exceeds {limit} bytes")
        yield chunk


async def request_body(
    request: web.Request, limit: int
) -> tuple[bytes | AsyncIterator[bytes] | None, int | None]:
    if not request.body_exists:
        return None, None
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(PAYLOAD_TOO_LARGE, f"the request body exceeds {limit} bytes")
    if length is not None and length <= SMALL_BODY:
        try:
            return await request.content.readexactly(length), length
        except asyncio.IncompleteReadError:
            raise GatewayError(BAD_REQUEST, "the request body ended early") from None
    return counted_body(request, limit), length


async def respond(exchange: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    request = exchange.request
    headers = returned_headers(upstream, exchange)
    length = upstream.content_length
    if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
        body = await upstream.read()
        return web.Response(status=upstream.status, reason=upstream.reason, body=body,
                            headers=headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in upstream.chunks():
            await response.write(chunk)
    except UpstreamError:
        # headers are already sent: the only honest signal left is an aborted message
        upstream.release()
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def build(route: RouteConfig, services: Services) -> Handler:
    group = services.upstreams[route.name]
    usage = services.usage
    limit = route.max_body_bytes
    timeout = route.timeout

    async def forward(exchange: Exchange) -> web.StreamResponse:
        request = exchange.request
        pool = group.pick()
        body, length = await request_body(request, limit)
        try:
            upstream = await pool.request(
                request.method,
                upstream_target(route, pool.base_path, exchange),
                outbound_headers(exchange),
                body,
                timeout=timeout,
                body_length=length,
            )
        except UpstreamError as exc:
            kind = UPSTREAM_TIMEOUT if exc.timeout else UPSTREAM_UNAVAILABLE
            raise GatewayError(kind, "the upstream did not answer" if exc.timeout
                               else "the upstream could not be reached") from None
        if exchange.key is not None:
            usage.used(exchange.key.key_id)
        try:
            return await respond(exchange, upstream)
        finally:
            upstream.release()

    return forward
