"""Members of a workspace: add, list, change a role, remove (README "Members and roles").
Removing a member revokes every active key it owns, in the same transaction."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.handler import actor, json_response, read_json, visible_workspace
from gateway.admin.route import BAD, WRITE, Route, returns
from gateway.admin.state import KEY_SERVICE
from gateway.admin.workspaces import WORKSPACE

MEMBERS = WORKSPACE + "/members"
MEMBER = MEMBERS + "/{user_id}"


async def add_member(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    member = await request.app[KEY_SERVICE].members.add(
        workspace_id, await read_json(request), actor(request)
    )
    return json_response(member.to_public(), 201)


async def list_members(request: web.Request) -> web.Response:
    members = await request.app[KEY_SERVICE].members.all(visible_workspace(request))
    return json_response({"results": [m.to_public() for m in members], "total": len(members)})


async def set_role(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    member = await request.app[KEY_SERVICE].members.set_role(
        workspace_id, request.match_info["user_id"], await read_json(request), actor(request)
    )
    return json_response(member.to_public())


async def remove_member(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    member, revoked = await request.app[KEY_SERVICE].members.remove(
        workspace_id, request.match_info["user_id"], actor(request)
    )
    return json_response({**member.to_public(), "revoked_keys": [k.key_id for k in revoked]})


ROUTES = (
    Route("POST", MEMBERS, add_member, "Add member", returns(201, "Member"),
          body="MemberCreate", errors=WRITE),
    Route("GET", MEMBERS, list_members, "List members", returns(200, "MemberList")),
    Route("PATCH", MEMBER, set_role, "Change member role", returns(200, "Member"),
          body="MemberUpdate", errors=BAD),
    Route("DELETE", MEMBER, remove_member, "Remove member", returns(200, "RemovedMember")),
)
