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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _ErrInfo

from gateway.config import LimitsConfig
from gateway.errors import BAD_REQUEST, HEADERS_TOO_LARGE, URI_TOO_LONG, GatewayError
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
    __slots__ = ("_metrics", "_parser_options")

    @property
    def closing(self) -> bool:
        """No request after the current one: the server is draining (``Server.pre_shutdown``
        closes each connection) or shut down."""
        return self._close or self._force_close

    def __init__(self, manager: web.Server, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._metrics = metrics
        self._parser_options = {k: kwargs[k] for k in PARSER_OPTIONS if k in kwargs}

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or request.writer.output_size > 0:
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
        if len(self._messages) > queued and isinstance(self._messages[-1][0], _ErrInfo):
            self._fail_body(self._messages[-1][0].exc)

    def _fail_body(self, exc: BaseException | None) -> None:
        """The body in progress broke (see the module docstring): fail its stream."""
        current = self._current_request
        if current is not None and not current.content.is_eof():
            current.content.set_exception(
                exc if isinstance(exc, BadHttpMessage) else BadHttpMessage("broken body")
            )


class ProxyServer(web.Server):
    """``web.Server`` whose connections answer parser errors with ``ProxyRequestHandler``."""

    def __init__(self, handler: Any, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in _SERVER_OPTIONS}
        self._handler_options = {**options, "metrics": metrics}

    def __call__(self) -> web.RequestHandler:
        # called by the event loop for each new connection
        return ProxyRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_options)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return ProxyRequest(message, payload, protocol, writer, task, self._loop)
