"""How the admin API answers a failure (rendered by ``gateway.problem``), and the only place
the admin app catches a bare ``Exception`` (logged, answered as a 500). Every response carries
the request's ``X-Request-Id``.

A failure answers as its kind (``gateway.errors``): a key-store outage here is 503
``store_unavailable`` (the proxy says ``auth_unavailable``: see ``gateway.pipeline.failure``).
"""

from __future__ import annotations

import logging

from aiohttp import HttpVersion11, web

from gateway.admin.route import Handler
from gateway.admin.state import REQUEST_ID, SERVICES
from gateway.errors import (
    BODY_TOO_LARGE,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    GatewayError,
    GatewayFailure,
    as_failure,
)
from gateway.http import SERVER_NAME, pick_request_id
from gateway.problem import problem_response

log = logging.getLogger("gateway.admin")

# README "Security and reliability": an admin body over ``limits.admin_max_body_bytes`` is
# refused from its Content-Length before a byte of it is read (aiohttp's client_max_size, set to
# the same figure in create_admin_app, stops a chunked one)
def too_large() -> GatewayError:
    return GatewayError(BODY_TOO_LARGE, "the request body is too large")


def admin_failure(exc: Exception) -> GatewayFailure | None:
    """What the admin API answers for ``exc`` (the router's 404 and 405 included); None for a
    bug."""
    failure = as_failure(exc)
    if failure is not None:
        return failure
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return too_large()
    if isinstance(exc, web.HTTPNotFound):
        return GatewayError(NOT_FOUND, "no such admin endpoint")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(exc.allowed_methods))
        return GatewayError(METHOD_NOT_ALLOWED, "method not allowed on this endpoint",
                            headers={"Allow": allow})
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = request_id = pick_request_id(request)
    try:
        if (request.content_length or 0) > request.app[SERVICES].config.limits.admin_max_body_bytes:
            raise too_large()
        response = await handler(request)
    except Exception as exc:
        failure = admin_failure(exc)
        if failure is None:
            log.exception("admin handler failed")
            failure = INTERNAL
        response = problem_response(failure, request_id, {"X-Request-Id": request_id})
        if failure.kind is BODY_TOO_LARGE:
            response.force_close()  # the body is left unread: the connection cannot go on
        return response
    response.headers["X-Request-Id"] = request_id
    return response


async def hide_server(request: web.Request, response: web.StreamResponse) -> None:
    """No version banner (aiohttp's default names itself and Python)."""
    response.headers["Server"] = SERVER_NAME


async def continue_only(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered; any other expectation is ignored (RFC 9110 §10.1.1
    allows either), so the request gets the answer it would get without it: a 401 before
    authentication, not aiohttp's bare 417 ahead of every check."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the body has not started yet (as aiohttp does)
