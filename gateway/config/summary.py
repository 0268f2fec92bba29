"""A config described for people: the start-up line's fields and ``config check``'s route table.
Nothing here is secret: URLs lose their password (``display_url``), keys are never shown."""

from __future__ import annotations

import os

from gateway.config.model import Config, RouteConfig, RouteRateLimit
from gateway.config.parsers import display_url

ROUTE_COLUMNS = ("ROUTE", "PATH", "UPSTREAM", "AUTH", "PERMISSIONS", "RATE LIMIT", "TIMEOUT")


def limiter_name(config: Config) -> str:
    """``redis <url>`` (password masked) or ``in-process``."""
    return "in-process" if config.redis is None else f"redis {display_url(config.redis)}"


def startup_fields(config: Config, version: str) -> dict[str, object]:
    """What start-up names (README "The start-up line"), as log fields."""
    return {
        "version": version,
        "config": os.path.abspath(config.source),
        "store": display_url(config.database),
        "limiter": limiter_name(config),
        "routes": len(config.routes),
        "workers": config.workers,
        "listen": str(config.listen),
        "admin_listen": str(config.admin_listen),
    }


def _rate(limit: RouteRateLimit | None) -> str:
    if limit is None:
        return "-"
    return f"{limit.requests}/{limit.window:g}s" + (" (shadow)" if limit.shadow else "")


def _permissions(route: RouteConfig) -> str:
    if route.auth == "none":
        return "-"
    if not route.permissions:
        return "any key"
    if list(route.permissions) == ["*"]:  # one list for every method
        return "+".join(route.permissions["*"]) or "any key"
    shown = [f"{method}:{'+'.join(perms) or '-'}" for method, perms in route.permissions.items()]
    return " ".join(shown)


def route_row(route: RouteConfig) -> tuple[str, ...]:
    if route.mode == "verify":  # checks for the other routes, with their settings
        return (route.name, route.path, "(forward auth)", "-", "-", "-", "-")
    return (route.name, route.path, ",".join(route.upstreams), route.auth, _permissions(route),
            _rate(route.rate_limit), f"{route.timeout:g}s")


def route_table(config: Config) -> list[str]:
    """The routes as aligned text lines, a header first, in the order of the file."""
    rows = [ROUTE_COLUMNS, *(route_row(route) for route in config.routes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ROUTE_COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]
