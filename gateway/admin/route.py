"""One admin endpoint as data: how it is served (method, path, handler) and how the OpenAPI
document describes it (summary, request and response schemas, query parameters, errors).
``gateway.admin.ROUTES`` lists them all; the router and the document are both built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

JSON = "application/json"
Schema = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# problem+json statuses an endpoint can answer with (described in gateway.admin.openapi.ERRORS)
READ = ("401", "403", "404", "503")
UNSCOPED = ("401", "403", "503")  # nothing in the path or query a workspace admin could miss
BAD = ("400", "401", "403", "404", "503")
WRITE = (*BAD, "409")


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented answer other than a problem: status, body schema, media type."""

    status: str
    schema: Schema
    description: str = ""  # "": the route's summary
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # an aiohttp path template, which is also OpenAPI's
    handler: Handler
    summary: str
    replies: tuple[Reply, ...]
    body: str | None = None  # the components schema of the JSON request body
    query: tuple[Schema, ...] = ()  # the query parameters: documented, and the only ones taken
    headers: tuple[Schema, ...] = ()  # request headers it reads, documented
    errors: tuple[str, ...] = READ
    operation_id: str = ""  # "": the summary in snake case
    public: bool = False  # no admin key: load balancers, scrapers, GitHub carry none (README)


def returns(status: int, schema: str) -> tuple[Reply, ...]:
    """The one answer of an ordinary endpoint: ``status`` with a components schema as JSON."""
    return (Reply(str(status), ref(schema)),)


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def header_param(name: str, description: str) -> Schema:
    """A header the endpoint needs: documented as required (without it: 401)."""
    return {"name": name, "in": "header", "required": True, "schema": {"type": "string"},
            "description": description}
