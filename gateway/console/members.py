"""The Members page (README "Web console"): who is in the workspace; admins and owners add
members, change roles, remove them (their keys are revoked) and make sign-in links. Only an
owner makes, changes or removes an owner, and nobody changes or removes themselves, so a
workspace cannot lose its last owner by a slip."""

from __future__ import annotations

from aiohttp import web

from gateway.console.page import Page, can, read_form, render, see_other, session
from gateway.console.state import KEY_SERVICE, SERVICES
from gateway.errors import Conflict, MemberNotFound, ValidationError
from gateway.keys.console import sign_in_url
from gateway.keys.model import ROLES, Member

DONE = {"added": "Member added.", "role": "Role changed.", "removed": "Member removed; "
        "their keys are revoked."}


async def member_list(request: web.Request, status: int = 200, **extra: object) -> web.Response:
    me = session(request)
    members = await request.app[KEY_SERVICE].members.all(me.workspace_id)
    context: dict[str, object] = {"email": "", "role": "member", "errors": {}, "link": None,
                                  "link_for": None}
    context.update(extra)
    return render(request, "members.html", status, members=members, roles=ROLES,
                  done=DONE.get(request.query.get("done", ""), ""),
                  grantable=grantable_roles(request), **context)


async def members_page(request: web.Request) -> web.Response:
    return await member_list(request)


def grantable_roles(request: web.Request) -> tuple[str, ...]:
    return ROLES if can(request, "owner") else tuple(r for r in ROLES if r != "owner")


async def add_member(request: web.Request) -> web.Response:
    me, data = session(request), await read_form(request)
    email, role = data.get("email").strip(), data.get("role")
    if role not in grantable_roles(request):
        return await member_list(request, 400, email=email, role=role,
                                 errors={"role": "you cannot grant this role"})
    try:
        await request.app[KEY_SERVICE].members.add(me.workspace_id, {"email": email,
                                                                     "role": role}, me.user_id)
    except ValidationError as exc:
        return await member_list(request, 400, email=email, role=role, errors=exc.errors)
    except Conflict:
        return await member_list(request, 409, email=email, role=role,
                                 errors={"email": "is already a member of this workspace"})
    return see_other("/members?done=added")


async def _member_of_path(request: web.Request) -> Member:
    """The member the path names, in the signed-in member's workspace (404 otherwise)."""
    user_id = request.match_info["user_id"]
    members = await request.app[KEY_SERVICE].members.all(session(request).workspace_id)
    member = next((m for m in members if m.user_id == user_id), None)
    if member is None:
        raise MemberNotFound(f"member {user_id} not found")
    return member


async def _other_member(request: web.Request) -> Member:
    """The member of the path: another member of this workspace, and no owner unless the
    signed-in member is one (403 otherwise; 404 for anyone unknown)."""
    me = session(request)
    member = await _member_of_path(request)
    if member.user_id == me.user_id:
        raise web.HTTPForbidden(text="You cannot change or remove yourself.")
    if member.role == "owner" and not can(request, "owner"):
        raise web.HTTPForbidden(text="Only an owner can change or remove an owner.")
    return member


async def set_role(request: web.Request) -> web.Response:
    me, member = session(request), await _other_member(request)
    role = (await read_form(request)).get("role")
    if role not in grantable_roles(request):
        raise web.HTTPForbidden(text="You cannot grant this role.")
    await request.app[KEY_SERVICE].members.set_role(me.workspace_id, member.user_id,
                                                    {"role": role}, me.user_id)
    return see_other("/members?done=role")


async def remove_member(request: web.Request) -> web.Response:
    me, member = session(request), await _other_member(request)
    await request.app[KEY_SERVICE].members.remove(me.workspace_id, member.user_id, me.user_id)
    return see_other("/members?done=removed")


async def make_link(request: web.Request) -> web.Response:
    """A sign-in link for a member, shown on this answer only (not kept, not in a URL)."""
    me = session(request)
    member = await _member_of_path(request)
    token = await request.app[KEY_SERVICE].console.make_link(me.workspace_id, member.email,
                                                             me.user_id)
    return await member_list(request, link=sign_in_url(request.app[SERVICES].config, token),
                             link_for=member.email)


PAGES = (
    Page("GET", "/members", members_page, "viewer"),
    Page("POST", "/members", add_member, "admin"),
    Page("POST", "/members/{user_id}/role", set_role, "admin"),
    Page("POST", "/members/{user_id}/remove", remove_member, "admin"),
    Page("POST", "/members/{user_id}/link", make_link, "admin"),
)
