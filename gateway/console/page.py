"""One console page or form action as data (method, path, handler, the least role it needs),
and what pages share: rendering a template with the signed-in member, reading a form, the
member's view of a key. ``gateway.console.PAGES`` lists them all; the router and the guard
are built from that list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway.console.state import CSRF, KEY_SERVICE, SERVICES, SESSION
from gateway.errors import NotFound
from gateway.keys.model import ROLES, ConsoleSession, KeyRecord
from gateway.services import Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/console"
# the roles from least to most: each may do what the ones before it may (README "Web console")
RANK = {role: rank for rank, role in enumerate(reversed(ROLES))}  # viewer 0 … owner 3
PUBLIC = ""  # a page anyone may open (sign-in)


@dataclass(frozen=True, slots=True)
class Page:
    method: str
    path: str  # under PREFIX
    handler: Handler
    needs: str  # the least role: viewer | member | admin, or PUBLIC


def session(request: web.Request) -> ConsoleSession:
    return request[SESSION]


def can(request: web.Request, role: str) -> bool:
    """Has the signed-in member at least ``role``?"""
    return RANK[session(request).role] >= RANK[role]


def manages_all(request: web.Request) -> bool:
    """Admins and owners manage every key and the members; members only their own keys."""
    return can(request, "admin")


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    signed_in = request.get(SESSION)
    return aiohttp_jinja2.render_template(template, request, {
        "me": signed_in,
        "csrf": request.get(CSRF, ""),
        "can_change": signed_in is not None and can(request, "member"),
        "manages_all": signed_in is not None and manages_all(request),
        "prefix": PREFIX,
        "nav": _section(request.path),
        **context,
    }, status=status)


def _section(path: str) -> str:
    """Which item of the main navigation the page belongs to."""
    head = path.removeprefix(PREFIX + "/").split("/", 1)[0]
    return head if head in ("audit", "members", "plan") else "keys"


def see_other(location: str) -> web.Response:
    """After a form's POST: the browser GETs the result (a reload repeats nothing). Returned,
    not raised: the admin app's error middleware takes any exception for a failure."""
    return web.Response(status=303, headers={"Location": PREFIX + location})


class Form:
    """A POSTed form's text fields (uploads are ignored): ``get`` the first value of a name,
    ``all`` every value (ticked boxes)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        return self._fields.get(name, [default])[0]

    def all(self, name: str) -> list[str]:
        return self._fields.get(name, [])


async def read_form(request: web.Request) -> Form:
    fields: dict[str, list[str]] = {}
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
    return Form(fields)


async def visible_key(request: web.Request, key_id: str) -> KeyRecord:
    """The key, if this member may see it: their workspace's (any other is a 404, as in the
    admin API), and for the ``member`` role only their own."""
    me = session(request)
    record = await request.app[KEY_SERVICE].get_key(key_id, me.workspace_id)
    if me.role == "member" and record.user_id != me.user_id:
        raise NotFound(f"key {key_id} not found")
    return record


def own_keys_only(request: web.Request) -> str | None:
    """The owner every key list of this member is narrowed to: their own id for ``member``."""
    me = session(request)
    return me.user_id if me.role == "member" else None


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
