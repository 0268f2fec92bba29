"""Typed state of the admin app: what it is built with, and what middlewares leave on a
request for the handlers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.keys.model import KeyRecord
from gateway.keys.service import KeyService
from gateway.keys.signing_keys import SigningKeysHolder
from gateway.services import Services

SERVICES = web.AppKey("services", Services)
KEY_SERVICE = web.AppKey("key_service", KeyService)
OPENAPI = web.AppKey("openapi", dict[str, Any])
# the public keys of secret-scanning reports in force (README "Leaked keys")
SIGNING_KEYS = web.AppKey("signing_keys", SigningKeysHolder)
# set by the server on SIGTERM: /readyz answers 503 from then on, so load balancers move away
DRAINING = web.AppKey("draining", asyncio.Event)

REQUEST_ID = web.RequestKey("request_id", str)
# who is acting (gateway.admin.auth): an admin key, for now the only kind of principal
ADMIN_KEY = web.RequestKey("admin_key", KeyRecord)
