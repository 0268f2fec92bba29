"""The web console (README "Web console"): the seeds' dashboards — keys, a new key shown once,
a key's usage and history, the audit log, members, the plan — served by the admin listener
under ``/console/``, rendered on the server (Jinja2, autoescaped) with a hand-written
stylesheet, a few lines of script and SVG charts drawn here: no other host is ever contacted.

It is its own aiohttp app, mounted on the admin app (``create_admin_app(mounts=…)``), so the
admin API's bearer-key authentication never sees it and it is never on the proxy's path. It
signs members in with single-use links and keeps server-side sessions (``gateway.keys.console``);
``guard.py`` holds every check a page passes. ``PAGES`` is THE list of pages and form actions,
each with the least role it needs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.console import audit, keys, members, plan, sign_in
from gateway.console.guard import errors, guarded, security_headers
from gateway.console.page import PREFIX, Page
from gateway.console.state import KEY_SERVICE, SERVICES
from gateway.keys.service import KeyService
from gateway.services import Services

__all__ = ["PAGES", "PREFIX", "create_console_app"]

PAGES: tuple[Page, ...] = (
    *sign_in.PAGES,  # sign in with a link, sign out
    *keys.PAGES,  # list, create, shown once, detail, rotate, disable, enable, revoke
    *audit.PAGES,
    *members.PAGES,
    *plan.PAGES,
)
FILTERS = {
    "when": lambda value: value.strftime("%Y-%m-%d %H:%M UTC") if value else "—",
}


def create_console_app(services: Services, key_service: KeyService) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[SERVICES] = services
    app[KEY_SERVICE] = key_service
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, filters=FILTERS,
    )
    environment.globals["static"] = PREFIX + "/static/"
    app.on_response_prepare.append(security_headers)
    for page in PAGES:
        app.router.add_route(page.method, page.path, guarded(page))
    app.router.add_static("/static/", static_directory(), append_version=False)
    return app


def static_directory() -> Path:
    """The stylesheet and script, shipped as package data (pyproject)."""
    return Path(str(resources.files("gateway.console").joinpath("static")))
