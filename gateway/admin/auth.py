"""Who is acting on an admin request: one pluggable step.

An ``Authenticator`` looks at the request and returns the acting principal (today always an
admin key), None when the request carries no credential of its kind, or raises
``GatewayError`` to refuse it. The admin app is built with a sequence of them and asks each in
turn: the bearer admin key today (README "Admin API"); a console session cookie can join it without
touching a handler. A request none of them recognises is a 401 ``missing_api_key``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.admin.route import Handler
from gateway.admin.state import ADMIN_KEY
from gateway.errors import INSUFFICIENT_PERMISSIONS, INVALID_API_KEY, GatewayError
from gateway.http import bearer_token, missing_key
from gateway.keys.model import KeyRecord, is_well_formed, utcnow
from gateway.services import Services


class Authenticator(Protocol):
    async def __call__(self, request: web.Request) -> KeyRecord | None:
        """The principal acting on ``request``; None: no credential of this kind here."""


def bearer_admin_key(services: Services) -> Authenticator:
    """``Authorization: Bearer <admin key>``, read with the proxy's rules (401 not Bearer,
    400 two headers); the key must be well formed, active and ``key_type: admin``."""

    async def authenticate(request: web.Request) -> KeyRecord | None:
        if hdrs.AUTHORIZATION not in request.headers:
            return None
        token = bearer_token(request)
        if not is_well_formed(token, services.prefixes):
            raise GatewayError(INVALID_API_KEY, "the admin key is malformed")
        record = await services.store.get_key_by_hash(services.hasher(token))
        if record is None or record.effective_status(utcnow()) != "active":
            raise GatewayError(INVALID_API_KEY, "unknown, revoked, expired or disabled admin key")
        if record.key_type != "admin":
            raise GatewayError(INSUFFICIENT_PERMISSIONS, "the admin API needs an admin key")
        return record

    return authenticate


def authentication(
    authenticators: Sequence[Authenticator], public_paths: frozenset[str],
    own_auth: tuple[str, ...] = (),
) -> Middleware:
    """The middleware: the first principal an authenticator returns acts on the request.
    Paths under the ``own_auth`` prefixes belong to mounted apps that authenticate their own
    requests (the web console's session cookie, README "Web console")."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public_paths or request.path.startswith(own_auth):
            return await handler(request)
        for authenticator in authenticators:
            principal = await authenticator(request)
            if principal is not None:
                request[ADMIN_KEY] = principal
                return await handler(request)
        raise missing_key(request)

    return authenticate
