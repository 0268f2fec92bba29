"""Requests aiohttp's HTTP parser refuses (a control character in a header value, a bad request
line, an unknown method, a line past its limit) never reach the pipeline: aiohttp answers them
itself, and its own 400 body quotes the offending line, an ``Authorization`` header or a query
string included. Here they get problem+json with a request id that quotes nothing — 414
``uri_too_long``, 431 ``headers_too_large``, else 400 ``bad_request`` (README "Security and
reliability") — are counted like any other refused request, and are logged at debug level
without the raw bytes.

A chunked body whose framing breaks mid-stream is a parser error too, but aiohttp's C parser
drops the body stream without telling its reader: the handler forwarding it would wait for
the rest forever, holding the upstream exchange and the key's concurrency slot. Here the stream
fails, so the exchange ends at once (``gateway.pipeline.forward.counted_body``).

Each connection also keeps the slow-client deadlines of ``gateway.deadlines`` (a head within
``limits.header_timeout``, a body that keeps coming), checked by one sweep per server, and the
server closes a connection at once when ``limits.max_connections`` are already open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from gateway.config import LimitsConfig
from gateway.deadlines import CONTINUED, BodyWatch, Deadlines, RequestTimeout
from gateway.errors import (
    BAD_REQUEST,
    HEADERS_TOO_LARGE,
    REQUEST_TIMEOUT,
    URI_TOO_LONG,
    GatewayError,
)
from gateway.http import SERVER_NAME, new_request_id
from gateway.metrics import NO_ROUTE, Metrics
from gateway.problem import problem_response

log = logging.getLogger("gateway.error")

_SERVER_OPTIONS = frozenset({"request_factory", "handler_cancellation", "loop"})  # not a handler's
NOT_HTTP = GatewayError(BAD_REQUEST, "the request is not valid HTTP/1.1")
PARSER_OPTIONS = ("max_line_size", "max_field_size", "max_headers")


def parser_limits(limits: LimitsConfig) -> dict[str, int]:
    """aiohttp's parser options for the request limits. aiohttp counts a header's name and
    value without ": " and CRLF, so a header line of N bytes is a field of N - 2; a LineTooLong
    tells which limit it passed by the limit it names, so the target's is kept distinct."""
    field = limits.max_header_line_bytes - 2
    target = limits.max_target_bytes if limits.max_target_bytes != field else field + 1
    return {"max_line_size": target, "max_field_size": field, "max_headers": limits.max_headers}


def parser_failure(exc: BaseException | None, options: dict[str, int]) -> GatewayError:
    """What a parser error means to the client (``options``: from ``parser_limits``)."""
    if isinstance(exc, LineTooLong):
        if exc.args[1] == options.get("max_line_size"):
            return GatewayError(URI_TOO_LONG, "the request target is too long")
        return GatewayError(HEADERS_TOO_LARGE, "a header line is too long")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return GatewayError(HEADERS_TOO_LARGE, "too many headers")
    if isinstance(exc, RequestTimeout):
        return GatewayError(REQUEST_TIMEOUT, "the request head did not arrive in time")
    return NOT_HTTP


class ProxyRequest(web.BaseRequest):
    """A request whose response says ``Connection: close`` once its connection is closing (the
    drain, README "Graceful shutdown"): aiohttp closes such a connection after the response but
    still announces keep-alive, so a keep-alive client would send its next request into a
    connection that closes unanswered."""

    @property
    def keep_alive(self) -> bool:
        protocol = self._protocol
        closing = isinstance(protocol, ProxyRequestHandler) and protocol.closing
        return not closing and not self._message.should_close


class ProxyRequestHandler(web.RequestHandler):
    __slots__ = (
        "_deadlines",
        "_head_since",
        "_metrics",
        "_opened_at",
        "_parser_options",
        "_watch",
    )

    @property
    def closing(self) -> bool:
        """No request after the current one: the server is draining (``Server.pre_shutdown``
        closes each connection) or shut down."""
        return self._close or self._force_close

    def __init__(
        self, manager: web.Server, *, metrics: Metrics, deadlines: Deadlines, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._metrics = metrics
        self._parser_options = {k: kwargs[k] for k in PARSER_OPTIONS if k in kwargs}
        self._deadlines = deadlines
        self._opened_at = 0.0
        self._head_since: float | None = None  # a request head's first byte, while it is partial
        self._watch: BodyWatch | None = None  # the body being read, as the last sweep saw it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, ProxyServer) and not manager.admits():
            self._manager = None  # never registered: connection_lost has nothing to undo
            transport.close()
            return
        self._opened_at = self._loop.time()
        super().connection_made(transport)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status not in (400, 408) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.debug("malformed request from %s: %s", request.remote, type(exc).__name__)
        failure = parser_failure(exc, self._parser_options)
        self._metrics.count_error(failure.kind.code)
        self._metrics.observe_request(NO_ROUTE, "OTHER", failure.kind.status, 0.0)
        request_id = new_request_id()  # the client's X-Request-Id is in the unparsed head
        response = problem_response(
            failure, request_id, {"X-Request-Id": request_id, "Server": SERVER_NAME}
        )
        response.force_close()
        return response

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._head_since = None
            if isinstance(self._messages[-1][0], _ErrInfo):
                self._fail_body(self._messages[-1][0].exc)
        elif self._head_since is None and self._awaits_head():
            self._head_since = self._loop.time()  # a head arrives in pieces: its deadline runs

    def _awaits_head(self) -> bool:
        """Bytes now are a request head's: none was parsed yet, or the connection waits for
        its next request (not answering, not reading what is left of a body)."""
        waiter = self._waiter
        return not self._request_count or (waiter is not None and not waiter.done())

    def keep_deadlines(self, now: float) -> None:
        """Called by the server's sweep: end a head or a body that came too slowly."""
        if self._force_close or self.transport is None:
            return
        request = self._current_request
        if request is not None:
            self._head_since = None
            if "Expect" in request.headers and CONTINUED not in request:
                self._watch = None  # the client waits for our 100 Continue: not its time
            else:
                self._keep_body_deadline(request.content, now)
            return
        self._watch = None
        if self._close or not self._awaits_head():
            return  # answering, closing, or reading a body's rest (at most lingering_time)
        since = self._head_since if self._request_count else self._opened_at
        if since is not None and now - since >= self._deadlines.header:
            self._head_timed_out()

    def _head_timed_out(self) -> None:
        if self._head_since is None:  # not a byte of a request: nobody waits for an answer
            self._metrics.connections_closed.labels("header_timeout").inc()
            self.force_close()
            return
        # answered like a parser error (``handle_error``), then closed; nothing more is parsed
        exc = RequestTimeout()
        self._messages.append((_ErrInfo(status=408, exc=exc, message=exc.message), EMPTY_PAYLOAD))
        self._close = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _keep_body_deadline(self, content: StreamReader, now: float) -> None:
        watch = self._watch
        if watch is None or watch.content is not content:
            if not content.is_eof():
                self._watch = BodyWatch(content, now)
            return
        if watch.failed_at is not None:  # answered 408 by now, unless a response was begun
            if now - watch.failed_at >= self._deadlines.tick:
                self.force_close()
            return
        if content.is_eof() or content.exception() is not None:
            return
        if watch.too_slow(now, self._reading_paused, self._deadlines):
            watch.failed_at = now
            self._lingering_time = 0.0  # closed after the answer: the rest is never read
            content.set_exception(RequestTimeout())

    def _fail_body(self, exc: BaseException | None) -> None:
        """The body in progress broke (see the module docstring): fail its stream."""
        current = self._current_request
        if current is not None and not current.content.is_eof():
            current.content.set_exception(
                exc if isinstance(exc, BadHttpMessage) else BadHttpMessage("broken body")
            )


class ProxyServer(web.Server):
    """``web.Server`` whose connections answer parser errors with ``ProxyRequestHandler``,
    keep the slow-client deadlines and are capped at ``max_connections`` (None: no cap)."""

    def __init__(
        self, handler: Any, *, metrics: Metrics, limits: LimitsConfig, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in _SERVER_OPTIONS}
        self._deadlines = Deadlines.of(limits)
        self._handler_options = {
            **options, **parser_limits(limits), "keepalive_timeout": limits.idle_timeout,
            "metrics": metrics, "deadlines": self._deadlines,
        }
        self._metrics = metrics
        self._max_connections = limits.max_connections
        self._sweep_handle: asyncio.TimerHandle | None = None

    def __call__(self) -> web.RequestHandler:
        # called by the event loop for each new connection
        return ProxyRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_options)

    def admits(self) -> bool:
        """A new connection may open: under the cap (else it is counted and closed at once).
        Keeps the deadline sweep running while any connection is open."""
        cap = self._max_connections
        if cap is not None and len(self._connections) >= cap:
            self._metrics.connections_closed.labels("max_connections").inc()
            return False
        if self._sweep_handle is None:
            self._sweep_handle = self._loop.call_later(self._deadlines.tick, self._sweep)
        return True

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self._loop.time()
        for connection in self.connections:
            if isinstance(connection, ProxyRequestHandler):
                connection.keep_deadlines(now)
        if self._connections:
            self._sweep_handle = self._loop.call_later(self._deadlines.tick, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        await super().shutdown(timeout)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return ProxyRequest(message, payload, protocol, writer, task, self._loop)
