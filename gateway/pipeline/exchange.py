"""Per-request state handed from stage to stage, and the handler type every stage wraps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.keys.model import KeyRecord
from gateway.routing import RouteMatch


class Exchange:
    """What the stages learn about one request. Slots keep it cheap to create per request."""

    __slots__ = (
        "key",
        "match",
        "namespace_id",
        "namespace_name",
        "path",
        "project_id",
        "query",
        "request",
        "request_id",
        "response_headers",
    )

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.request_id = ""
        self.path = ""  # normalised path: the one authorized and forwarded
        self.query = ""
        self.match: RouteMatch | None = None
        self.key: KeyRecord | None = None
        self.project_id: str | None = None
        self.namespace_id: str | None = None
        self.namespace_name: str | None = None
        # headers every response to this request carries (request id, rate limit, CORS)
        self.response_headers: dict[str, str] = {}


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]
