"""Composition root: the proxy server and the admin application, wired from ``Services``.
No logic here — only which part is built from which."""

from __future__ import annotations

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.console import PREFIX as CONSOLE_PREFIX
from gateway.console import create_console_app
from gateway.keys.service import KeyService
from gateway.pipeline import PipelineHolder, build_pipeline
from gateway.proxy_server import ProxyServer
from gateway.services import Services


def create_key_service(services: Services) -> KeyService:
    """Changes made through this process drop their cache entries here at once."""
    return KeyService(
        services.store,
        services.config,
        on_change=services.cache.invalidate,
        on_tenancy_change=services.tenancy.invalidate,
        live_config=lambda: services.config,  # plans change on reload
    )


def create_proxy_server(services: Services, holder: PipelineHolder | None = None) -> web.Server:
    # A low-level server: the proxy has one handler and needs no router or app middlewares.
    # auto_decompress=False: bodies are forwarded (and counted) exactly as the client sent them.
    # ``holder``: the pipeline in force, for a server whose config can be reloaded.
    # ProxyServer: requests the HTTP parser refuses get problem+json too (gateway/proxy_server.py)
    return ProxyServer(
        build_pipeline(services, holder),
        metrics=services.metrics,
        auto_decompress=False,
        access_log=None,
        limits=services.config.limits,  # 414/431, deadlines, connection cap (proxy_server.py)
    )


def create_admin(services: Services) -> web.Application:
    """The admin API with the web console mounted under /console/ (README "Web console");
    both call the same key service."""
    key_service = create_key_service(services)
    console = create_console_app(services, key_service)
    return create_admin_app(services, key_service, mounts={CONSOLE_PREFIX + "/": console})
