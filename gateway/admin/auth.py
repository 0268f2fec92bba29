"""Who is acting on an admin request: an admin key, sent as ``Authorization: Bearer <key>``
(SPEC §6) and read with the proxy's rules (401 missing or not Bearer, 400 two headers)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.admin.route import Handler
from gateway.admin.state import ADMIN_KEY, SERVICES
from gateway.errors import INSUFFICIENT_PERMISSIONS, INVALID_API_KEY, GatewayError
from gateway.http import bearer_token
from gateway.keys.model import is_well_formed, utcnow


def authentication(public_paths: frozenset[str]) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public_paths:
            return await handler(request)
        services = request.app[SERVICES]
        token = bearer_token(request)
        if not is_well_formed(token, services.prefixes):
            raise GatewayError(INVALID_API_KEY, "the admin key is malformed")
        record = await services.store.get_key_by_hash(services.hasher(token))
        if record is None or record.effective_status(utcnow()) != "active":
            raise GatewayError(INVALID_API_KEY, "unknown, revoked or expired admin key")
        if record.key_type != "admin":
            raise GatewayError(INSUFFICIENT_PERMISSIONS, "the admin API needs an admin key")
        request[ADMIN_KEY] = record
        return await handler(request)

    return authenticate
