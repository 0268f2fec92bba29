"""The one place a failure becomes an RFC 9457 ``application/problem+json`` response, for
both listeners and for requests the HTTP parser refuses.

The body carries the extension members ``code`` and ``request_id`` (README "Errors") plus the
failure's own (``errors`` of a validation error); 401s carry ``WWW-Authenticate: Bearer``."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from gateway.errors import UNAUTHORIZED_KINDS, GatewayFailure

PROBLEM_JSON = "application/problem+json"
BEARER_CHALLENGE = 'Bearer realm="gateway"'


def problem_response(
    failure: GatewayFailure,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``failure`` as problem+json. ``headers``: what every response to this request carries
    (the request id, quota, CORS), under the failure's own. ``request_id`` None: none known
    (the request never got one), so the body has no ``request_id`` member."""
    kind = failure.kind
    body: dict[str, object] = {
        "type": kind.type_uri,
        "title": kind.title,
        "status": kind.status,
        "detail": failure.detail,
        "code": kind.code,
    }
    if request_id is not None:
        body["request_id"] = request_id
    body.update(failure.extra)
    response = web.Response(status=kind.status, body=orjson.dumps(body), content_type=PROBLEM_JSON)
    if headers:
        response.headers.update(headers)
    response.headers.update(failure.headers)
    if kind in UNAUTHORIZED_KINDS:
        response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return response
