"""The admin API (README "Admin API"): its own aiohttp application on the admin listener, so
no proxy stage ever wraps it and it is never reachable on the public port.

Admin keys are ``key_type: admin`` keys: operator keys (no workspace) see everything; workspace
admin keys see their workspace only, and anything else is a 404, never a 403.

Every endpoint but ``/healthz``, ``/readyz``, ``/metrics`` and the secret-scanning report
(signed by the scanner instead, ``gateway.admin.secret_scanning``) needs an admin key — the OpenAPI
document included (see ``gateway.admin.openapi``). Request problems: a body that is not JSON is
a 400 ``bad_request``; anything else wrong with the input (a body that is not an object,
unknown or invalid fields, bad ``limit``/``include_revoked``/``cursor`` query values) is a 400
``validation_error`` whose ``errors`` member names every failing field.

``ROUTES`` below is THE list of endpoints, grouped by noun (one module each); the router, the
OpenAPI document, the query allowlist and the open paths are all built from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiohttp import web

from gateway.admin import (
    audit,
    health,
    key_check,
    keys,
    members,
    openapi,
    secret_scanning,
    subscriptions,
    usage,
    workspaces,
)
from gateway.admin.auth import Authenticator, authentication, bearer_admin_key
from gateway.admin.failure import continue_only, errors_middleware, hide_server
from gateway.admin.query import query_allowlist
from gateway.admin.route import Route
from gateway.admin.state import DRAINING, KEY_SERVICE, OPENAPI, SERVICES, SIGNING_KEYS
from gateway.keys.service import KeyService
from gateway.keys.signing_keys import SigningKeysHolder
from gateway.services import Services

__all__ = ["DRAINING", "PUBLIC_PATHS", "ROUTES", "Authenticator", "create_admin_app"]

ROUTES: tuple[Route, ...] = (
    *workspaces.ROUTES,  # workspaces, and their projects and namespaces
    *members.ROUTES,
    *subscriptions.ROUTES,  # a workspace's plan and its quota counters
    *key_check.ROUTES,  # before keys': /keys/verify is no {key_id}
    *keys.ROUTES,
    *usage.ROUTES,  # a key's and a workspace's usage over time
    *audit.ROUTES,
    *secret_scanning.ROUTES,  # open: GitHub signs its reports instead (README "Leaked keys")
    *openapi.ROUTES,  # the document of this table
    *health.ROUTES,  # healthz, readyz, metrics: open
)
PUBLIC_PATHS = frozenset(route.path for route in ROUTES if route.public)


def create_admin_app(
    services: Services,
    key_service: KeyService,
    authenticators: Sequence[Authenticator] | None = None,
    mounts: Mapping[str, web.Application] | None = None,
) -> web.Application:
    """The admin app; ``authenticators`` say who is acting (default: bearer admin keys).
    ``mounts``: path prefix -> an app served under it that authenticates its own requests and
    reads its own query (the web console, README "Web console")."""
    mounts = mounts or {}
    prefixes = tuple(mounts)
    app = web.Application(middlewares=[
        errors_middleware,
        authentication(authenticators or (bearer_admin_key(services),), PUBLIC_PATHS, prefixes),
        query_allowlist(ROUTES, PUBLIC_PATHS, prefixes),
    ], client_max_size=services.config.limits.admin_max_body_bytes)
    for prefix, mounted in mounts.items():
        app.add_subapp(prefix, mounted)
    app.on_response_prepare.append(hide_server)
    app[SERVICES] = services
    app[KEY_SERVICE] = key_service
    app[OPENAPI] = openapi.build_openapi(ROUTES)
    app[SIGNING_KEYS] = SigningKeysHolder(services.metrics)
    app[DRAINING] = asyncio.Event()
    for route in ROUTES:
        if route.method == "GET":  # and HEAD, as aiohttp does
            app.router.add_get(route.path, route.handler, expect_handler=continue_only)
        else:
            app.router.add_route(route.method, route.path, route.handler,
                                 expect_handler=continue_only)
    return app
