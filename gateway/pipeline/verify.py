"""Forward auth (README "Forward auth"): a ``mode: verify`` route tells an ingress that already
holds a request (nginx ``auth_request``, Traefik ``forwardAuth``) whether it may go on.

On this route only, the original method and URI come from ``X-Original-Method`` and
``X-Original-URI``, else ``X-Forwarded-Method`` and ``X-Forwarded-Uri``; every other header is
the original request's, as the ingress passes them on. The ingress must keep a client from
setting the pair read (README "Forward auth": nginx sets ``X-Original-*`` itself, Traefik's
``authRequestHeaders`` keeps the client's copies away). The URI is routed against the proxy
routes (400 when it cannot be normalised, 404 when none matches), and the matched route's stages
then run as if that request had come in: CORS, authenticate, authorize, tenancy, rate limit and
quotas, built a second time at start-up with ``answer`` in place of ``forward``. ``answer``
says 200, empty body, with the identity headers the route's upstream would have received;
refusals are the route's own errors, rendered by the driver like any other.

A concurrency slot taken by the check is given back as soon as the answer is decided (the
driver runs the cleanups): the gateway never sees when the ingress's upstream is done, so
``max_concurrent`` bounds checks in flight, not proxied requests.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping, Sequence

from aiohttp import web
from yarl import URL

from gateway.config import RouteConfig
from gateway.errors import BAD_REQUEST, GatewayError
from gateway.exchange import Check, Exchange
from gateway.pipeline.forward import identity_headers
from gateway.pipeline.match import resolve
from gateway.routing import RouteTable
from gateway.services import Services

# (method header, URI header): nginx's usual names first, then Traefik's
ORIGINAL = (("X-Original-Method", "X-Original-URI"), ("X-Forwarded-Method", "X-Forwarded-Uri"))
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # an RFC 9110 token
TARGET = re.compile(r"/[^\x00-\x20\x7f]*")  # origin-form: no spaces or control characters
MISSING = ("a forward-auth check needs the original request: X-Original-Method and "
           "X-Original-URI, or X-Forwarded-Method and X-Forwarded-Uri")


def single(request: web.BaseRequest, name: str) -> str | None:
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise GatewayError(BAD_REQUEST, f"at most one {name} header is allowed")
    return values[0].strip() if values else None


def original(request: web.BaseRequest) -> tuple[str, str]:
    """The original method and request target, from the first pair of headers present."""
    for method_header, uri_header in ORIGINAL:
        method, target = single(request, method_header), single(request, uri_header)
        if method is None and target is None:
            continue
        if not method or not target:
            raise GatewayError(BAD_REQUEST, MISSING)
        if not METHOD.fullmatch(method):
            raise GatewayError(BAD_REQUEST, f"{method_header} must be an HTTP method")
        if not TARGET.fullmatch(target):
            raise GatewayError(BAD_REQUEST, f"{uri_header} must be a path (and query)")
        return method, target
    raise GatewayError(BAD_REQUEST, MISSING)


async def run(checks: Sequence[Check], exchange: Exchange) -> web.StreamResponse:
    """The matched route's checks, as the driver runs them (gateway.pipeline)."""
    for check in checks:
        answer = check(exchange)
        if answer is None:
            continue
        if not isinstance(answer, web.StreamResponse):
            answer = await answer
            if answer is None:
                continue
        return answer  # answer's 200, or a CORS preflight answered by the cors stage
    raise AssertionError("the last check, answer, always answers")


def build(
    proxied: Sequence[RouteConfig], chains: Mapping[str, Sequence[Check]], services: Services
) -> Check:
    """The one check of every verify route: ``chains`` holds each proxy route's checks."""
    table = RouteTable(proxied)
    prefixes = services.prefixes

    def verify(exchange: Exchange) -> Awaitable[web.StreamResponse]:
        request = exchange.request
        method, target = original(request)
        normalized = resolve(exchange, target, table, prefixes)
        assert exchange.match is not None  # resolve raised route_not_found otherwise
        # the stages read the method, query and headers from the request: the original's
        url = URL.build(path=normalized.path, query_string=normalized.query, encoded=True)
        exchange.request = request.clone(method=method, rel_url=url)
        return run(chains[exchange.match.route.name], exchange)

    return verify


def answer(route: RouteConfig, services: Services) -> Check:
    """The last stage of a check: 200, no body, the identity headers and the route's own
    response headers (request id, ``RateLimit-*``, CORS). Usage is not counted here: the
    driver's recorder (gateway.pipeline.record) counts each request once, from the exchange's
    key and error code and the status, checks and forwarded requests alike."""

    def allow(exchange: Exchange) -> web.Response:
        headers = dict(exchange.own_headers())
        headers.update(identity_headers(exchange))
        return web.Response(status=200, headers=headers)

    return allow
