"""Composition root: the proxy server and the admin application, wired from ``Services``.
No logic here — only which part is built from which."""

from __future__ import annotations

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.keys.service import KeyService
from gateway.pipeline import build_pipeline
from gateway.services import Services


def create_key_service(services: Services) -> KeyService:
    """Changes made through this process drop their cache entries here at once."""
    return KeyService(
        services.store,
        services.config,
        on_change=services.cache.invalidate,
        on_tenancy_change=services.tenancy.invalidate,
    )


def create_proxy_server(services: Services) -> web.Server:
    # A low-level server: the proxy has one handler and needs no router or app middlewares.
    # auto_decompress=False: bodies are forwarded (and counted) exactly as the client sent them.
    return web.Server(
        build_pipeline(services),  # type: ignore[arg-type]
        auto_decompress=False,
        access_log=None,
        keepalive_timeout=75,
    )


def create_admin(services: Services) -> web.Application:
    return create_admin_app(services, create_key_service(services))
