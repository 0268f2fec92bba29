"""The outermost stage: the one place a ``GatewayError`` becomes an RFC 9457 problem+json
response, and the only place a bare ``Exception`` is caught (logged, rendered as a 500)."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from gateway.errors import INTERNAL_ERROR, UNAUTHORIZED_KINDS, GatewayError
from gateway.pipeline.exchange import Exchange, Handler
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


def build(services: Services, next_handler: Handler) -> Handler:
    metrics = services.metrics

    async def handle_errors(exchange: Exchange) -> web.StreamResponse:
        try:
            return await next_handler(exchange)
        except GatewayError as error:
            metrics.count_error(error.kind.code)
            return render(error, exchange)
        except Exception:
            log.exception("unhandled error", extra={"request_id": exchange.request_id})
            return render(GatewayError(INTERNAL_ERROR, "internal error"), exchange)

    return handle_errors
