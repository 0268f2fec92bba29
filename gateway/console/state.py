"""Typed state of the console app: what it is built with, and what its guard leaves on a
request for the pages."""

from __future__ import annotations

from aiohttp import web

from gateway.keys.model import ConsoleSession
from gateway.keys.service import KeyService
from gateway.services import Services

SERVICES = web.AppKey("console_services", Services)
KEY_SERVICE = web.AppKey("console_key_service", KeyService)

SESSION = web.RequestKey("console_session", ConsoleSession)  # who is signed in
CSRF = web.RequestKey("console_csrf", str)  # this session's form token
