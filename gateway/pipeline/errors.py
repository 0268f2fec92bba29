"""How the proxy answers a failure (rendered by ``gateway.problem``), and the only place a
bare ``Exception`` is caught (logged with the request id, answered as a 500)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import INTERNAL_ERROR, GatewayError
from gateway.metrics import NO_ROUTE
from gateway.pipeline.exchange import Exchange
from gateway.problem import problem_response
from gateway.services import Services

log = logging.getLogger("gateway.error")


def build(services: Services) -> Callable[[Exchange, Exception], Awaitable[web.Response]]:
    metrics = services.metrics

    async def handle_error(exchange: Exchange, exc: Exception) -> web.Response:
        if not isinstance(exc, GatewayError):
            log.error("unhandled error", exc_info=exc, extra={"request_id": exchange.request_id})
            exc = GatewayError(INTERNAL_ERROR, "internal error")
        exchange.error_code = code = exc.kind.code
        match = exchange.match
        metrics.count_error(code, match.route.name if match is not None else NO_ROUTE)
        # every response to a request with a valid key carries its quota (SPEC §4)
        peek, key, headers = exchange.peek_quota, exchange.key, exchange.response_headers
        if peek is not None and key is not None and "RateLimit-Limit" not in headers:
            headers.update(await peek(key))
        return problem_response(exc, exchange.request_id, exchange.response_headers)

    return handle_error
