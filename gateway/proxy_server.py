"""Requests aiohttp's HTTP parser refuses (a control character in a header value, a bad request
line, an unknown method) never reach the pipeline: aiohttp answers them itself, and its own
400 body quotes the offending line, an ``Authorization`` header or a query string included.
Here they get a problem+json 400 ``bad_request`` that quotes nothing, are counted like any other
refused request, and are logged at debug level without the raw bytes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.errors import BAD_REQUEST, GatewayError
from gateway.http import SERVER_NAME
from gateway.metrics import NO_ROUTE, Metrics
from gateway.problem import problem_response

log = logging.getLogger("gateway.error")

_SERVER_OPTIONS = frozenset({"request_factory", "handler_cancellation", "loop"})  # not a handler's
NOT_HTTP = GatewayError(BAD_REQUEST, "the request is not valid HTTP/1.1")


class ProxyRequestHandler(web.RequestHandler):
    __slots__ = ("_metrics",)

    def __init__(self, manager: web.Server, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._metrics = metrics

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
        self._metrics.count_error(BAD_REQUEST.code)
        self._metrics.observe_request(NO_ROUTE, "OTHER", 400, 0.0)
        response = problem_response(NOT_HTTP, None)  # no request id: the request never got one
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class ProxyServer(web.Server):
    """``web.Server`` whose connections answer parser errors with ``ProxyRequestHandler``."""

    def __init__(self, handler: Any, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in _SERVER_OPTIONS}
        self._handler_options = {**options, "metrics": metrics}

    def __call__(self) -> web.RequestHandler:
        # called by the event loop for each new connection
        return ProxyRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_options)
