"""API keys of a workspace: create (also for a member by email, seed 002's path), list, show,
update, disable, enable, revoke, rotate, top up credits (README "Admin API"); their usage is in
``usage``. A key with credits shows the limiter's live balance (README "Credits")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.admin.handler import (
    LIMIT,
    actor,
    caller_workspace,
    json_response,
    query_bool,
    query_limit,
    read_json,
    visible_workspace,
)
from gateway.admin.route import BAD, READ, WRITE, Route, query_param, returns
from gateway.admin.state import KEY_SERVICE, SERVICES
from gateway.admin.workspaces import WORKSPACE
from gateway.errors import LimiterUnavailable, NotFound, ValidationError
from gateway.keys.model import KeyRecord, utcnow
from gateway.keys.service import KeyService
from gateway.keys.validation import validate_rotate
from gateway.limiter.budget import budget_of

WORKSPACE_KEYS = WORKSPACE + "/keys"
KEY = "/admin/v1/keys/{key_id}"
MEMBER_KEYS = "/admin/v1/organizations/users/{user_email}/api-keys"  # seed 002
STATE = (*READ, "409")  # disable, enable: a revoked or expired key is a conflict
OWNER_FIELDS = ("user_id", "user_email")  # given by the path of MEMBER_KEYS
LIST_PARAMS = (
    query_param("include_revoked", {"type": "boolean", "default": False},
                "also list revoked and expired keys"),
    query_param("user_id", {"type": "string"}, "only keys of this owner"),
    query_param("resource_id", {"type": "string"},
                "only keys whose scopes name this resource, or that have no scopes"),
    LIMIT,
    query_param("cursor", {"type": "string"},
                "next_cursor of the previous page (opaque; empty means the first page)"),
)


async def key_object(request: web.Request, record: KeyRecord) -> dict[str, Any]:
    """The key object, its ``credits.remaining`` the live balance the limiter holds (the
    stored one while the limiter is unreachable)."""
    public = record.to_public(utcnow())
    if record.credits is not None:
        try:
            left = await request.app[SERVICES].limiter.credits_left(budget_of(record),
                                                                    record.credits)
            public["credits"] = record.credits.to_public(left.remaining)
        except LimiterUnavailable:
            pass
    return public


async def create_key(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    record, plaintext = await request.app[KEY_SERVICE].create_key(
        workspace_id, await read_json(request), actor(request)
    )
    return json_response({**await key_object(request, record), "key": plaintext}, 201)


async def create_member_key(request: web.Request) -> web.Response:
    """Seed 002: a key for the member ``user_email`` of the caller's workspace (operator keys
    name it with ``?workspace_id=``); the body is a key create's, without an owner."""
    workspace_id = _callers_workspace(request)
    body = await read_json(request)
    if isinstance(body, dict):
        given = [field for field in OWNER_FIELDS if field in body]
        if given:
            raise ValidationError({field: "the path names the key's owner" for field in given})
        body = {**body, "user_email": request.match_info["user_email"]}
    record, plaintext = await request.app[KEY_SERVICE].create_key(
        workspace_id, body, actor(request)
    )
    return json_response({**await key_object(request, record), "key": plaintext}, 201)


def _callers_workspace(request: web.Request) -> str:
    own, wanted = caller_workspace(request), request.query.get("workspace_id")
    if own is None:
        if not wanted:
            raise ValidationError({"workspace_id": "required with an operator key"})
        return wanted
    if wanted and wanted != own:
        raise NotFound(f"workspace {wanted} not found")
    return own


async def list_keys(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    page = await request.app[KEY_SERVICE].list_keys(
        workspace_id,
        include_revoked=query_bool(request, "include_revoked"),
        user_id=request.query.get("user_id"),
        resource_id=request.query.get("resource_id"),
        limit=query_limit(request),
        cursor=request.query.get("cursor") or None,  # "?cursor=" is the first page
    )
    return json_response({
        "results": await asyncio.gather(*(key_object(request, r) for r in page.results)),
        "total": page.total,
        "next_cursor": page.next_cursor,
    })


async def get_key(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].get_key(
        request.match_info["key_id"], caller_workspace(request)
    )
    return json_response(await key_object(request, record))


async def update_key(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].update_key(
        request.match_info["key_id"], await read_json(request), actor(request),
        caller_workspace(request),
    )
    return json_response(await key_object(request, record))


async def top_up_credits(request: web.Request) -> web.Response:
    record = await request.app[KEY_SERVICE].top_up_credits(
        request.match_info["key_id"], await read_json(request), actor(request),
        caller_workspace(request),
    )
    return json_response(await key_object(request, record))


KeyChange = Callable[[KeyService, str, str | None, str | None], Awaitable[KeyRecord]]


def key_change(apply: KeyChange) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of a body-less change to one key (revoke, disable, enable): the
    ``KeyService`` method ``apply``, answered with the key object."""

    async def change(request: web.Request) -> web.Response:
        record = await apply(request.app[KEY_SERVICE], request.match_info["key_id"],
                             actor(request), caller_workspace(request))
        return json_response(await key_object(request, record))

    return change


revoke_key = key_change(KeyService.revoke_key)
disable_key = key_change(KeyService.disable_key)
enable_key = key_change(KeyService.enable_key)


async def rotate_key(request: web.Request) -> web.Response:
    grace = validate_rotate(await read_json(request))
    _old, new, plaintext = await request.app[KEY_SERVICE].rotate_key(
        request.match_info["key_id"], grace, actor(request),
        caller_workspace(request),
    )
    return json_response({**await key_object(request, new), "key": plaintext}, 201)


ROUTES = (
    Route("POST", WORKSPACE_KEYS, create_key, "Create key", returns(201, "CreatedKey"),
          body="KeyCreate", errors=WRITE),
    Route("GET", WORKSPACE_KEYS, list_keys, "List keys", returns(200, "KeyList"),
          query=LIST_PARAMS, errors=BAD),
    Route("GET", KEY, get_key, "Get key", returns(200, "Key")),
    Route("PATCH", KEY, update_key, "Update key", returns(200, "Key"), body="KeyUpdate",
          errors=WRITE),
    Route("DELETE", KEY, revoke_key, "Revoke key", returns(200, "Key")),
    Route("POST", KEY + "/disable", disable_key, "Disable key", returns(200, "Key"),
          errors=STATE),
    Route("POST", KEY + "/enable", enable_key, "Enable key", returns(200, "Key"), errors=STATE),
    Route("POST", KEY + "/credits", top_up_credits, "Top up credits", returns(200, "Key"),
          body="CreditsTopUp", errors=WRITE),
    Route("POST", KEY + "/rotate", rotate_key, "Rotate key", returns(201, "CreatedKey"),
          body="Rotate", errors=WRITE),
    Route("POST", MEMBER_KEYS, create_member_key, "Create member key",
          returns(201, "CreatedKey"), body="MemberKeyCreate", errors=WRITE, query=(
              query_param("workspace_id", {"type": "string"},
                          "the member's workspace: required with an operator key"),
          )),
)
