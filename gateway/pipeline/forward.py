"""The last stage: build the upstream request by rule, stream both ways.
An upstream failure before the response head is an ``UpstreamError`` (502, or 504 on a
timeout); after it, the only honest signal left is an aborted message.

Header rules (README "The request path"): hop-by-hop headers (RFC 9110 §7.6.1) and every
header named in ``Connection`` are dropped both ways; the client's ``Authorization`` never
leaves; every client copy of the identity headers (names compared lower-cased, ``_`` read as
``-``) and of any ``X-Forwarded-*`` (``-Port``, ``-Prefix`` …, which some frameworks trust) is
dropped, and the gateway's own are set. The forwarded path is the normalised path
that was authorized.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from operator import itemgetter
from time import perf_counter
from typing import NamedTuple

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from gateway.client_address import forwarded_for_resolver
from gateway.config import RouteConfig
from gateway.deadlines import CONTINUED, RequestTimeout
from gateway.errors import (
    BAD_REQUEST,
    PAYLOAD_TOO_LARGE,
    REQUEST_TIMEOUT,
    GatewayError,
    UpstreamError,
)
from gateway.exchange import Exchange, Handler, header_pairs
from gateway.http import CLIENT_CLOSED_REQUEST
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
        "x-principal-id",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)
# headers some frameworks read as another method, path or client address (README "Security and
# reliability"): a client's copy would let it pick what the upstream authorizes
REWRITES = frozenset(
    {"x-http-method-override", "x-method-override", "x-original-url", "x-rewrite-url", "x-real-ip"}
)
# set by the gateway or by the upstream client's framing, never copied from the client
NOT_FORWARDED = (
    HOP_BY_HOP | IDENTITY | REWRITES | {"authorization", "host", "content-length", "expect"}
)
# the gateway's own version banner is not sent either (gateway.pipeline.request_id)
NOT_RETURNED = HOP_BY_HOP | {"content-length", "x-request-id", "server"}
SMALL_BODY = 64 * 1024  # read whole and answered in one write below this size
CLIENT_CHECK = 0.25  # seconds between checks that the client is still connected

_name = itemgetter(0)


def connection_named(values: list[str]) -> set[str]:
    names: set[str] = set()
    for value in values:
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


@functools.lru_cache(maxsize=4096)
def canonical(name: str) -> str:
    """How a header name is compared: lower-case, ``_`` read as ``-`` (names repeat across
    requests, so this is a dict lookup on the hot path)."""
    return name.lower().replace("_", "-")


@functools.lru_cache(maxsize=4096)
def never_forwarded(name: str) -> bool:
    """Whether a client header of this name is dropped whatever the request (one cached call
    per header on the hot path)."""
    folded = canonical(name)
    return folded in NOT_FORWARDED or folded.startswith("x-forwarded-")


def outbound_headers(
    exchange: Exchange, forwarded_for: Callable[[web.BaseRequest], str]
) -> list[tuple[str, str]]:
    request = exchange.request
    headers = [
        (name, value) for name, value in request.headers.items() if not never_forwarded(name)
    ]
    if "Connection" in request.headers:  # and what it names
        named = connection_named(request.headers.getall("Connection"))
        headers = [(name, value) for name, value in headers if canonical(name) not in named]
    headers.extend(identity_headers(exchange))
    headers += [
        ("X-Forwarded-For", forwarded_for(request)),  # README "Client address"
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", request.host),
    ]
    return headers


def identity_headers(exchange: Exchange) -> list[tuple[str, str]]:
    """Who is calling, as the upstream hears it (README "What the upstream receives"); also a
    forward-auth answer's headers (gateway.pipeline.verify)."""
    key = exchange.key
    if key is None:
        return [("X-Request-Id", exchange.request_id)]
    headers = [("X-Request-Id", exchange.request_id),
               ("X-Workspace-Id", key.workspace_id or ""),
               ("X-Project-Id", exchange.project_id or ""),
               *key.identity]  # the key's own, made once per record
    if exchange.namespace_id is not None:
        headers.append(("X-Namespace-Id", exchange.namespace_id))
        headers.append(("X-Namespace", exchange.namespace_name or ""))
    return headers


class Returned(NamedTuple):
    """What the header rules make of one list of upstream header names, beside one set of the
    gateway's own (``returned_plan``): the same from response to response of an upstream, so
    worked out once per such pair."""

    kept: tuple[int, ...]  # the positions of the upstream's headers that are returned
    connection: tuple[int, ...]  # of its Connection headers: what their values name is dropped
    vary: bool  # it sent a Vary and so does the gateway: the two are merged
    dated: bool  # it sent a Date
    typed: bool  # ... and a Content-Type


@functools.lru_cache(maxsize=1024)
def returned_plan(
    names: tuple[str, ...], own: tuple[str, ...], limit_names: frozenset[str], owns_cors: bool
) -> Returned:
    owned = {canonical(name) for name in own} | limit_names
    folded = [canonical(name) for name in names]
    kept = tuple(
        i for i, name in enumerate(folded)
        if name not in NOT_RETURNED and name not in owned
        and not (owns_cors and name.startswith("access-control-"))
    )
    connection = tuple(i for i, name in enumerate(folded) if name == "connection")
    return Returned(kept, connection, "vary" in folded and "vary" in owned, "date" in folded,
                    "content-type" in folded)


@functools.lru_cache(maxsize=256)
def plain_connection(value: str) -> bool:
    """A Connection value that names no header to drop beyond the hop-by-hop ones (the usual
    ``keep-alive``): one cached call per response."""
    return connection_named([value]) <= {"keep-alive", "close"}


def returned_headers(
    upstream: UpstreamResponse, exchange: Exchange, owns_cors: bool = False
) -> tuple[list[tuple[str, str]], Returned]:
    """The upstream's response headers by rule, then the gateway's own (``exchange``'s), which
    replace any the upstream sent under the same names. On a route with ``cors`` the gateway
    owns every ``Access-Control-*`` header, so an origin outside its list never gets an allow
    header. With the plan they were picked by."""
    own = exchange.response_headers
    headers = upstream.headers
    plan = returned_plan(tuple(map(_name, headers)), tuple(own), exchange.limit_names,
                         owns_cors)
    named = [headers[i][1] for i in plan.connection]
    if named and not all(map(plain_connection, named)):
        hops = connection_named(named)
        kept = [headers[i] for i in plan.kept if canonical(headers[i][0]) not in hops]
    else:
        kept = [headers[i] for i in plan.kept]
    kept.extend(own.items())
    if plan.vary:  # both vary: the response varies on the union, not on ours alone
        theirs = [value for name, value in headers if canonical(name) == "vary"]
        kept = [(n, v) for n, v in kept if canonical(n) != "vary"]
        kept.append(("Vary", merge_vary([*theirs, own["Vary"]])))
    return kept, plan


def merge_vary(values: list[str]) -> str:
    tokens: dict[str, str] = {}
    for value in values:
        for token in value.split(","):
            token = token.strip()
            if token:
                tokens.setdefault(token.lower(), token)
    return "*" if "*" in tokens else ", ".join(tokens.values())


def upstream_target(route: RouteConfig, exchange: Exchange) -> str:
    """The target below the upstream's base path (the pool puts its base path in front)."""
    match = exchange.match
    assert match is not None  # routing runs first
    path = "/" + match.remainder if route.strip_prefix else exchange.path
    return path + "?" + exchange.query if exchange.query else path


async def counted_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused with 413 once it passes ``limit`` bytes (the
    bytes on the wire: a compressed body is counted compressed, never inflated here).

    A body the client cut short (disconnect, broken chunked framing) is a 400, never a
    shorter body passed on as complete: the exception aborts the upstream request."""
    seen = 0
    try:
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > limit:
                raise GatewayError(PAYLOAD_TOO_LARGE, f"the request body exceeds {limit} bytes")
            yield chunk
    except (ConnectionError, HttpProcessingError) as exc:
        raise body_failure(exc) from None


async def request_body(
    request: web.Request, limit: int
) -> tuple[bytes | AsyncIterator[bytes] | None, int | None]:
    """A request with a body (``body_exists``): the body whole when small, else a stream."""
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(PAYLOAD_TOO_LARGE, f"the request body exceeds {limit} bytes")
    if request.version >= (1, 1) and "Expect" in request.headers:
        await expect_continue(request)
    if length is not None and length <= SMALL_BODY:
        try:
            return await request.content.readexactly(length), length
        except (asyncio.IncompleteReadError, ConnectionError, HttpProcessingError) as exc:
            raise body_failure(exc) from None
    return counted_body(request, limit), length


def body_failure(exc: Exception) -> GatewayError:
    """A body that did not arrive whole: 408 when it came too slowly (``gateway.deadlines``),
    else 400."""
    if isinstance(exc, RequestTimeout):
        return GatewayError(REQUEST_TIMEOUT, "the request body did not arrive in time")
    return GatewayError(BAD_REQUEST, "the request body ended early")


async def expect_continue(request: web.Request) -> None:
    """``Expect`` is not forwarded, so no ``100 Continue`` can come from the upstream: the
    gateway sends it itself once the request has passed every check. Without it, clients such
    as curl wait a second before sending the body (RFC 9110 §10.1.1)."""
    if request.headers["Expect"].strip().lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request[CONTINUED] = True  # the body's deadline runs from here (gateway.deadlines)
        request.writer.output_size = 0  # the interim response is not part of the answer


class ClientWatch:
    """While the upstream is at work, cancel the handler once the client's connection is gone.

    aiohttp does not cancel handlers on disconnect, and a write only fails when there is
    something to write: a long poll (before the response head) or a quiet stream (server-sent
    events between events) would otherwise hold the key's concurrency slot and the upstream
    connection until the route's timeout. One timer per route checks every exchange in flight
    every CLIENT_CHECK seconds, so a quick exchange costs a set insert and removal."""

    def __init__(self) -> None:
        self._watched: dict[asyncio.Task[object], web.BaseRequest] = {}
        self._fired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, request: web.BaseRequest) -> asyncio.Task[object] | None:
        task = asyncio.current_task()
        if task is not None:
            self._watched[task] = request
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(CLIENT_CHECK, self._sweep)
        return task

    def stop(self, task: asyncio.Task[object] | None) -> bool:
        """Stop watching; True when the watch cancelled the task (the client had left)."""
        if task is None:
            return False
        self._watched.pop(task, None)
        if task in self._fired:
            self._fired.discard(task)
            return True
        return False

    def _sweep(self) -> None:
        self._timer = None
        for task, request in list(self._watched.items()):
            transport = request.transport
            if transport is None or transport.is_closing():
                del self._watched[task]
                self._fired.add(task)
                task.cancel()
        if self._watched:
            self._timer = asyncio.get_running_loop().call_later(CLIENT_CHECK, self._sweep)


class WrittenResponse(web.StreamResponse):
    """A response already written whole to the client's transport, head and body in one write
    (``write_whole``): aiohttp's ``prepare`` and ``write_eof`` see it sent and do nothing, and
    it reports what the access log and the driver read (status, keep-alive, body length)."""

    def __init__(self, status: int, reason: str, keep_alive: bool, body_length: int,
                 headers: list[tuple[str, str]], lines: str) -> None:
        # StreamResponse's own __init__ builds a header multidict this never needs
        self._state = {}
        self._status, self._reason = status, reason
        self._keep_alive = keep_alive
        self._eof_sent = True
        self._body_length = body_length
        self._sent_headers, self._sent_lines = headers, lines

    @property
    def headers(self) -> CIMultiDict[str]:
        sent = CIMultiDict(self._sent_headers)
        if self._sent_lines:
            sent.extend(header_pairs(self._sent_lines))
        return sent


# statuses whose response has no body (RFC 9110 §6.4.1), left to aiohttp's own rules
NO_BODY = frozenset({204, 304})


def writes_whole(request: web.BaseRequest, status: int) -> bool:
    """Whether ``write_whole`` may answer: HTTP/1.1, a status with a body, a transport open."""
    transport = request.transport
    return (request.version == HttpVersion11 and status >= 200 and status not in NO_BODY
            and transport is not None and not transport.is_closing())


def write_whole(
    exchange: Exchange, upstream: UpstreamResponse, owns_cors: bool, body: bytes
) -> WrittenResponse:
    """An HTTP/1.1 response with its whole body in hand (its headers: ``returned_headers``,
    then ``Exchange.limit_lines`` as they are), written in one transport write, as aiohttp
    would have framed it: ``Content-Length``, a ``Date`` and a
    ``Content-Type`` when the upstream sent none (the gateway's own headers never are either),
    ``Connection: close`` when the connection ends after it; only where ``writes_whole`` says
    so (aiohttp frames the rest: HTTP/1.0, a status without a body). No header can hold a CR
    or LF: llhttp refuses them from the upstream (README "Security and reliability"), and the
    gateway's own values are numbers, ids and validated config."""
    request = exchange.request
    transport = request.transport
    assert transport is not None  # writes_whole said so
    headers, plan = returned_headers(upstream, exchange, owns_cors)
    lines = exchange.limit_lines
    status = upstream.status
    extra = "" if plan.dated else f"\r\nDate: {rfc822_formatted_time()}"
    if body and not plan.typed:
        extra += "\r\nContent-Type: application/octet-stream"
    keep_alive = request.keep_alive
    close = "" if keep_alive else "\r\nConnection: close"
    fields = "\r\n".join(map(": ".join, headers))
    if lines:
        fields = f"{fields}\r\n{lines}"
    head = (f"HTTP/1.1 {status} {upstream.reason}\r\n{fields}{extra}"
            f"\r\nContent-Length: {len(body)}{close}\r\n\r\n")
    transport.write(head.encode("utf-8", "surrogateescape") + body)
    return WrittenResponse(status, upstream.reason, keep_alive, len(body), headers, lines)


def whole_body(request: web.BaseRequest, upstream: UpstreamResponse) -> bool:
    """A response small enough to be read whole and answered in one write."""
    length = upstream.content_length
    return request.method != "HEAD" and length is not None and length <= SMALL_BODY


def respond_now(
    exchange: Exchange, upstream: UpstreamResponse, owns_cors: bool
) -> WrittenResponse | None:
    """The usual answer without a wait: a small body already all in, written whole at once;
    else None, with nothing read (``respond`` answers)."""
    request = exchange.request
    if not (whole_body(request, upstream) and writes_whole(request, upstream.status)):
        return None
    body = upstream.read_now()
    return None if body is None else write_whole(exchange, upstream, owns_cors, body)


async def drained(request: web.BaseRequest) -> None:
    """Wait as aiohttp does for a client slow to read what was written."""
    if transport_backlog(request):
        with contextlib.suppress(ConnectionError):  # gone: as aiohttp's write_eof
            await request.writer.drain()


async def respond(
    exchange: Exchange, upstream: UpstreamResponse, owns_cors: bool = False
) -> web.StreamResponse:
    request = exchange.request
    body: bytes | None = None
    if whole_body(request, upstream):
        body = await upstream.read()  # an UpstreamError: nothing sent yet, a clean 502/504
        if writes_whole(request, upstream.status):
            written = write_whole(exchange, upstream, owns_cors, body)
            await drained(request)
            return written
    length = upstream.content_length
    headers, _ = returned_headers(upstream, exchange, owns_cors)
    every = CIMultiDict(headers)
    if exchange.limit_lines:
        every.extend(header_pairs(exchange.limit_lines))
    if body is not None:
        return web.Response(status=upstream.status, reason=upstream.reason, body=body,
                            headers=every)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=every)
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        async for chunk in upstream.chunks():
            await response.write(chunk)
        await response.write_eof()
    except UpstreamError:
        # headers are already sent: the only honest signal left is an aborted message
        upstream.release()
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:
        pass  # the client went away mid-write: aiohttp treats the exchange as disconnected
    return response


def transport_backlog(request: web.BaseRequest) -> bool:
    """Bytes the transport could not send yet (a client that reads slowly)."""
    transport = request.transport
    return transport is not None and transport.get_write_buffer_size() > 0


def build(route: RouteConfig, services: Services) -> Handler:
    group = services.upstreams[route.name]
    limit = route.max_body_bytes
    timeout = route.timeout
    owns_cors = route.cors is not None
    forwarded_for = forwarded_for_resolver(services.config.trusted_proxies)

    watcher = ClientWatch()
    upstream_latency = services.metrics.upstream_latency(route.name)

    async def forward(exchange: Exchange) -> web.StreamResponse:
        request = exchange.request
        body = length = None
        if request.body_exists:
            body, length = await request_body(request, limit)
        task = watcher.watch(request)
        try:
            sent = perf_counter()
            # the group picks a target in service (round robin) and tries another once for a
            # request that never reached one (README "Upstream health"); each target puts its
            # own base path in front
            upstream = await group.request(
                request.method,
                upstream_target(route, exchange),
                outbound_headers(exchange, forwarded_for),
                body,
                timeout=timeout,
                body_length=length,
            )
            exchange.upstream_seconds = elapsed = perf_counter() - sent
            upstream_latency.observe(elapsed)
            try:
                written = respond_now(exchange, upstream, owns_cors)
                if written is None:
                    return await respond(exchange, upstream, owns_cors)
                if transport_backlog(request):  # no coroutine made for the usual answer
                    await drained(request)
                return written
            finally:
                upstream.release()
        except asyncio.CancelledError:
            if not watcher.stop(task) or task is None:
                raise
            task.uncancel()
            return web.Response(status=CLIENT_CLOSED_REQUEST)  # for the access log: nobody reads it
        finally:
            watcher.stop(task)

    return forward
