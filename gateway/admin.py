"""The admin API (SPEC §6): its own aiohttp application on the admin listener, so no proxy
stage ever wraps it and it is never reachable on the public port.

Admin keys are ``key_type: admin`` keys: operator keys (no workspace) see everything; workspace
admin keys see their workspace only, and anything else is a 404, never a 403.

Every endpoint but ``/healthz``, ``/readyz`` and ``/metrics`` needs an admin key — the OpenAPI
document included (see ``gateway.openapi``). Request problems: a body that is not JSON is a
400 ``bad_request``; anything else wrong with the input (a body that is not an object, unknown
or invalid fields, bad ``limit``/``include_revoked``/``cursor`` query values) is a 400
``validation_error`` whose ``errors`` member names every failing field.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import (
    BAD_REQUEST,
    INSUFFICIENT_PERMISSIONS,
    INTERNAL_ERROR,
    INVALID_API_KEY,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    GatewayError,
    GatewayFailure,
    LimiterUnavailable,
    NotFound,
    ValidationError,
    as_failure,
)
from gateway.http import bearer_token, pick_request_id
from gateway.keys.model import KeyRecord, is_well_formed, utcnow
from gateway.keys.rows import MAX_PAGE
from gateway.keys.service import KeyService
from gateway.keys.validation import validate_named, validate_rotate
from gateway.openapi import build_openapi
from gateway.problem import problem_response
from gateway.services import Services

log = logging.getLogger("gateway.admin")

SERVICES = web.AppKey("services", Services)
KEY_SERVICE = web.AppKey("key_service", KeyService)
ADMIN_KEY = web.RequestKey("admin_key", KeyRecord)
REQUEST_ID = web.RequestKey("request_id", str)
OPENAPI = web.AppKey("openapi", dict[str, Any])
QUERY_NAMES = web.AppKey("query_names", dict[tuple[str, str], frozenset[str]])
# set by the server on SIGTERM: /readyz answers 503 from then on, so load balancers move away
DRAINING = web.AppKey("draining", asyncio.Event)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DIGITS = re.compile(r"[0-9]{1,7}")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def admin_failure(exc: Exception) -> GatewayFailure | None:
    """What the admin API answers for ``exc``; None for a bug. A failure answers as its kind
    (a store outage: 503 ``store_unavailable``); the router's 404 and 405 as problems too."""
    failure = as_failure(exc)
    if failure is not None:
        return failure
    if isinstance(exc, web.HTTPNotFound):
        return GatewayError(NOT_FOUND, "no such admin endpoint")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(exc.allowed_methods))
        return GatewayError(METHOD_NOT_ALLOWED, "method not allowed on this endpoint",
                            headers={"Allow": allow})
    return None


def render_admin(request: web.Request, error: GatewayFailure) -> web.Response:
    request_id = request.get(REQUEST_ID, "")
    return problem_response(error, request_id, {"X-Request-Id": request_id})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = pick_request_id(request)
    try:
        response = await handler(request)
    except Exception as exc:
        error = admin_failure(exc)
        if error is None:
            log.exception("admin handler failed")
            error = GatewayError(INTERNAL_ERROR, "internal error")
        return render_admin(request, error)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    services = request.app[SERVICES]
    token = bearer_token(request)  # the proxy's rules: 401 missing/not Bearer, 400 two headers
    if not is_well_formed(token, services.prefixes):
        raise GatewayError(INVALID_API_KEY, "the admin key is malformed")
    record = await services.store.get_key_by_hash(services.hasher(token))
    if record is None or record.effective_status(utcnow()) != "active":
        raise GatewayError(INVALID_API_KEY, "unknown, revoked or expired admin key")
    if record.key_type != "admin":
        raise GatewayError(INSUFFICIENT_PERMISSIONS, "the admin API needs an admin key")
    request[ADMIN_KEY] = record
    return await handler(request)


def query_names(document: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """(METHOD, path template) -> the query parameters the OpenAPI document lists for it."""
    allowed: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                params = operation.get("parameters", [])
                names = frozenset(p["name"] for p in params if p["in"] == "query")
                allowed[(method.upper(), path)] = names
    return allowed


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown query parameters are rejected like unknown body fields."""
    route = request.match_info.route.resource
    if route is not None and request.path not in PUBLIC_PATHS:
        allowed = request.app[QUERY_NAMES].get((request.method, route.canonical), frozenset())
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise ValidationError({name: "unknown query parameter" for name in unknown})
    return await handler(request)


# scoping: a workspace admin sees its own workspace only ------------------------------------------
def caller_workspace(request: web.Request) -> str | None:
    return request[ADMIN_KEY].workspace_id


def actor(request: web.Request) -> str:
    return request[ADMIN_KEY].key_id


def visible_workspace(request: web.Request) -> str:
    workspace_id = request.match_info["workspace_id"]
    own = caller_workspace(request)
    if own is not None and own != workspace_id:
        raise NotFound(f"workspace {workspace_id} not found")
    return workspace_id


async def read_json(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise GatewayError(BAD_REQUEST, "the body is not valid JSON") from None


def query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise ValidationError({name: "must be true or false"})
    return value == "true"


def query_limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationError({"limit": f"must be an integer from 1 to {MAX_PAGE}"})
    return int(raw)


# handlers ----------------------------------------------------------------------------------
async def create_workspace(request: web.Request) -> web.Response:
    if caller_workspace(request) is not None:
        raise NotFound("workspace admins cannot create workspaces")
    name = validate_named(await read_json(request))
    workspace = await request.app[KEY_SERVICE].create_workspace(name, actor(request))
    return json_response(workspace.to_public(), 201)


async def list_workspaces(request: web.Request) -> web.Response:
    workspaces = await request.app[KEY_SERVICE].list_workspaces()
    own = caller_workspace(request)
    results = [w.to_public() for w in workspaces if own is None or w.id == own]
    return json_response({"results": results, "total": len(results)})


def _named_create(kind: str) -> Handler:
    async def create(request: web.Request) -> web.Response:
        workspace_id = visible_workspace(request)
        name = validate_named(await read_json(request))
        service = request.app[KEY_SERVICE]
        make = service.create_project if kind == "project" else service.create_namespace
        created = await make(workspace_id, name, actor(request))
        return json_response(created.to_public(), 201)

    return create


def _named_list(kind: str) -> Handler:
    async def list_(request: web.Request) -> web.Response:
        workspace_id = visible_workspace(request)
        service = request.app[KEY_SERVICE]
        fetch = service.list_projects if kind == "project" else service.list_namespaces
        results = [item.to_public() for item in await fetch(workspace_id)]
        return json_response({"results": results, "total": len(results)})

    return list_


async def create_key(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    record, plaintext = await request.app[KEY_SERVICE].create_key(
        workspace_id, await read_json(request), actor(request)
    )
    return json_response({**record.to_public(utcnow()), "key": plaintext}, 201)


async def list_keys(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    page = await request.app[KEY_SERVICE].list_keys(
        workspace_id,
        include_revoked=query_bool(request, "include_revoked"),
        user_id=request.query.get("user_id"),
        resource_id=request.query.get("resource_id"),
        limit=query_limit(request),
        cursor=request.query.get("cursor") or None,  # "?cursor=" is the first page
    )
    now = utcnow()
    return json_response({
        "results": [r.to_public(now) for r in page.results],
        "total": page.total,
        "next_cursor": page.next_cursor,
    })


async def get_key(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].get_key(
        request.match_info["key_id"], caller_workspace(request)
    )
    return json_response(record.to_public(utcnow()))


async def update_key(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].update_key(
        request.match_info["key_id"], await read_json(request), actor(request),
        caller_workspace(request),
    )
    return json_response(record.to_public(utcnow()))


async def revoke_key(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].revoke_key(
        request.match_info["key_id"], actor(request), caller_workspace(request)
    )
    return json_response(record.to_public(utcnow()))


async def rotate_key(request: web.Request) -> web.Response:
    grace = validate_rotate(await read_json(request))
    _old, new, plaintext = await request.app[KEY_SERVICE].rotate_key(
        request.match_info["key_id"], grace, actor(request),
        caller_workspace(request),
    )
    return json_response({**new.to_public(utcnow()), "key": plaintext}, 201)


async def key_usage(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    usage = await request.app[KEY_SERVICE].usage(key_id, caller_workspace(request))
    last = usage.last_used_at
    return json_response({
        "key_id": key_id,
        "requests": usage.requests,
        "rate_limited": usage.rate_limited,
        "last_used_at": last.isoformat().replace("+00:00", "Z") if last else None,
    })


async def audit(request: web.Request) -> web.Response:
    own = caller_workspace(request)
    wanted = request.query.get("workspace_id") or own
    if own is not None and wanted != own:
        raise NotFound(f"workspace {wanted} not found")
    events = await request.app[KEY_SERVICE].audit(wanted or None, query_limit(request))
    return json_response({"results": [e.to_public() for e in events], "total": len(events)})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while this process should get traffic: not draining, and both the key store and the
    limiter answer. Each failing part is named in the 503 body."""
    if request.app[DRAINING].is_set():
        return json_response({"status": "draining"}, 503)
    services = request.app[SERVICES]
    store_ok, limiter_ok = await asyncio.gather(services.store.ping(), limiter_answers(services))
    if store_ok and limiter_ok:
        return json_response({"status": "ready"})
    body = {"status": "not ready"}
    if not store_ok:
        body["store"] = "unreachable"
    if not limiter_ok:
        body["limiter"] = "unreachable"
    return json_response(body, 503)


async def limiter_answers(services: Services) -> bool:
    try:
        await services.limiter.ping()
    except LimiterUnavailable:
        return False
    return True


async def metrics(request: web.Request) -> web.Response:
    text = request.app[SERVICES].metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def create_admin_app(services: Services, key_service: KeyService) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware, query_middleware])
    app[SERVICES] = services
    app[KEY_SERVICE] = key_service
    app[OPENAPI] = build_openapi()
    app[QUERY_NAMES] = query_names(app[OPENAPI])
    app[DRAINING] = asyncio.Event()
    v1 = "/admin/v1"
    app.router.add_post(f"{v1}/workspaces", create_workspace)
    app.router.add_get(f"{v1}/workspaces", list_workspaces)
    for kind, plural in (("project", "projects"), ("namespace", "namespaces")):
        app.router.add_post(f"{v1}/workspaces/{{workspace_id}}/{plural}", _named_create(kind))
        app.router.add_get(f"{v1}/workspaces/{{workspace_id}}/{plural}", _named_list(kind))
    app.router.add_post(f"{v1}/workspaces/{{workspace_id}}/keys", create_key)
    app.router.add_get(f"{v1}/workspaces/{{workspace_id}}/keys", list_keys)
    app.router.add_get(f"{v1}/keys/{{key_id}}", get_key)
    app.router.add_patch(f"{v1}/keys/{{key_id}}", update_key)
    app.router.add_delete(f"{v1}/keys/{{key_id}}", revoke_key)
    app.router.add_post(f"{v1}/keys/{{key_id}}/rotate", rotate_key)
    app.router.add_get(f"{v1}/keys/{{key_id}}/usage", key_usage)
    app.router.add_get(f"{v1}/audit", audit)
    app.router.add_get(f"{v1}/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
