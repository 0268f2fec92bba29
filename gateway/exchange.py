"""Per-request state handed from stage to stage, and the types stages are built from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.keys.model import KeyRecord
from gateway.routing import RouteMatch


class Exchange:
    """What the stages learn about one request. Slots keep it cheap to create per request."""

    __slots__ = (
        "cleanups",
        "client",
        "error_code",
        "key",
        "limit_lines",
        "limit_names",
        "match",
        "namespace_id",
        "namespace_name",
        "path",
        "peek_quota",
        "project_id",
        "query",
        "request",
        "request_id",
        "response_headers",
        "shadow",
        "upstream_seconds",
    )

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.request_id = ""
        # the client's address (gateway.client_address), once a stage or the log needed it
        self.client: str | None = None
        self.path = ""  # normalised path: the one authorized and forwarded
        self.query = ""
        self.match: RouteMatch | None = None
        self.key: KeyRecord | None = None
        self.project_id: str | None = None
        self.namespace_id: str | None = None
        self.namespace_name: str | None = None
        # headers every response to this request carries (request id, CORS, ...)
        self.response_headers: dict[str, str] = {}
        # and the rate-limit and quota headers, as the lines "Name: value" joined by CRLF (a
        # response written whole takes them as they are: gateway.pipeline.forward), with the
        # lower-cased names they hold; every other response reads them from own_headers()
        self.limit_lines = ""
        self.limit_names: frozenset[str] = frozenset()
        # run by the driver once the response is sent or the exchange failed (e.g. a
        # concurrency slot to give back); None until a stage needs one
        self.cleanups: list[Callable[[], None]] | None = None
        # the key's quota headers without counting, for errors raised before rate limiting
        self.peek_quota: Callable[[KeyRecord], Awaitable[dict[str, str]]] | None = None
        # for the access log: the upstream's time to its response head, the error's code
        self.upstream_seconds: float | None = None
        self.error_code: str | None = None
        # README "Shadow mode": the code a shadow rule would have answered (the first one)
        self.shadow: str | None = None

    def own_headers(self) -> dict[str, str]:
        """Every header the gateway adds to this request's response, the limit lines split."""
        if not self.limit_lines:
            return self.response_headers
        headers = dict(self.response_headers)
        headers.update(header_pairs(self.limit_lines))
        return headers

    def on_done(self, cleanup: Callable[[], None]) -> None:
        if self.cleanups is None:
            self.cleanups = []
        self.cleanups.append(cleanup)


def header_pairs(lines: str) -> list[tuple[str, str]]:
    """Header lines joined by CRLF ("Name: value", as ``Exchange.limit_lines``) as pairs."""
    pairs = []
    for line in lines.split("\r\n"):
        name, _, value = line.partition(": ")
        pairs.append((name, value))
    return pairs


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]
# A check inspects the exchange and raises GatewayError to refuse it, returns a response to
# answer it itself (a CORS preflight), or returns None to let the next stage run. A check that
# has to wait (a key cache miss, a shared limiter) returns an awaitable instead, which the
# driver awaits; the common case (cached key, in-process limiter) creates no coroutine at all.
Check = Callable[[Exchange], "Awaitable[web.StreamResponse | None] | web.StreamResponse | None"]
