"""The one place a ``GatewayError`` becomes an RFC 9457 problem+json response, and the only
place a bare ``Exception`` is caught (logged with the request id, rendered as a 500)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.errors import INTERNAL_ERROR, UNAUTHORIZED_KINDS, GatewayError
from gateway.metrics import NO_ROUTE
from gateway.pipeline.exchange import Exchange
from gateway.services import Services

log = logging.getLogger("gateway.error")

PROBLEM_JSON = "application/problem+json"


def render(error: GatewayError, exchange: Exchange) -> web.Response:
    body = {
        "type": error.kind.type_uri,
        "title": error.kind.title,
        "status": error.kind.status,
        "detail": error.detail,
        "code": error.kind.code,
        "request_id": exchange.request_id,
        **error.extra,
    }
    response = web.Response(
        status=error.kind.status, body=orjson.dumps(body), content_type=PROBLEM_JSON
    )
    response.headers.update(exchange.response_headers)
    response.headers.update(error.headers)
    if error.kind in UNAUTHORIZED_KINDS:
        response.headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    return response


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
        return render(exc, exchange)

    return handle_error
