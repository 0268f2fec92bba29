"""How the proxy answers a failure (rendered by ``gateway.problem``), and the only place a
bare ``Exception`` is caught (logged with the request id, answered as a 500).

A failure answers as its kind (``gateway.errors``) with one exception, decided here and
nowhere else: on the proxy the key store is only asked who a key belongs to (the key lookup
in authenticate, the workspace view in tenancy), so its outage is an authentication outage,
503 ``auth_unavailable`` (README "Errors"), not the admin API's 503 ``store_unavailable``.
A 401 is counted against its client address's failed-auth budget first, and answers 429
``too_many_failed_auth`` when that budget is spent (``gateway.pipeline.failed_auth``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import (
    AUTH_UNAVAILABLE,
    INTERNAL,
    RETRY_SOON,
    GatewayError,
    GatewayFailure,
    StoreUnavailable,
    UpstreamError,
    as_failure,
)
from gateway.exchange import Exchange
from gateway.metrics import NO_ROUTE
from gateway.pipeline import failed_auth
from gateway.problem import problem_response
from gateway.services import Services

log = logging.getLogger("gateway.error")

# rendered for every store outage on the proxy, never raised
AUTH_OUTAGE = GatewayError(AUTH_UNAVAILABLE, StoreUnavailable.public_detail, RETRY_SOON)


def proxy_failure(exc: Exception) -> GatewayFailure | None:
    """What the proxy answers for ``exc``; None for a bug."""
    if isinstance(exc, StoreUnavailable):
        return AUTH_OUTAGE
    return as_failure(exc)


def build(services: Services) -> Callable[[Exchange, Exception], Awaitable[web.Response]]:
    metrics = services.metrics
    count_failed_auth = failed_auth.build_counter(services)  # None: failed_auth is off

    async def handle_error(exchange: Exchange, exc: Exception) -> web.Response:
        failure = proxy_failure(exc)
        if failure is None:
            log.error("unhandled error", exc_info=exc, extra={"request_id": exchange.request_id})
            failure = INTERNAL
        elif isinstance(exc, UpstreamError | StoreUnavailable):
            log_dependency(exchange, exc)
        elif failure.kind.status == 401 and count_failed_auth is not None:
            failure = await count_failed_auth(exchange, failure)  # may become 429
        exchange.error_code = code = failure.kind.code
        match = exchange.match
        metrics.count_error(code, match.route.name if match is not None else NO_ROUTE)
        # every response to a request with a valid key carries its quota (README "The request path")
        peek, key = exchange.peek_quota, exchange.key
        if peek is not None and key is not None and not exchange.limit_lines:
            exchange.response_headers.update(await peek(key))
        response = problem_response(failure, exchange.request_id, exchange.own_headers())
        if must_close(failure, exchange.request):
            response.force_close()
        return response

    return handle_error


def log_dependency(exchange: Exchange, exc: UpstreamError | StoreUnavailable) -> None:
    """A failed upstream or key store, named (README "Metrics and logs"): the client only
    reads 502/504/503, the operator needs to know which server to look at."""
    extra = {"request_id": exchange.request_id}
    match = exchange.match
    if isinstance(exc, UpstreamError) and match is not None:
        extra["route"] = match.route.name
        log.warning("upstream %s failed: %s", ", ".join(match.route.upstreams), exc, extra=extra)
    else:
        log.warning("%s", exc, extra=extra)


def must_close(failure: GatewayFailure, request: web.BaseRequest) -> bool:
    """A malformed request, or one whose body was left unread, ends its connection: whatever
    follows on it cannot be trusted to start a new request (RFC 9112 §6.3, §9.6)."""
    return failure.kind.status in (400, 408, 413, 414, 431) or not request.content.at_eof()
