"""Liveness, readiness and metrics: open to load balancers and scrapers, which carry no key
(README "Admin API")."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.admin.handler import json_response
from gateway.admin.route import Reply, Route, Schema
from gateway.admin.state import DRAINING, SERVICES
from gateway.errors import LimiterUnavailable
from gateway.services import Services

STATUS: Schema = {"type": "object", "required": ["status"],
                  "properties": {"status": {"type": "string"}}}


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


ROUTES = (
    Route("GET", "/healthz", healthz, "Liveness", (Reply("200", STATUS, "alive"),),
          errors=(), operation_id="healthz", public=True),
    Route("GET", "/readyz", readyz, "Readiness",
          (Reply("200", STATUS, "ready"), Reply("503", STATUS, "key store unreachable")),
          errors=(), operation_id="readyz", public=True),
    Route("GET", "/metrics", metrics, "Prometheus metrics",
          (Reply("200", {"type": "string"}, "Prometheus text format", "text/plain"),),
          errors=(), operation_id="metrics", public=True),
)
