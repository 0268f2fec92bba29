"""What admin handlers share: the caller's scope (a workspace admin sees its own workspace
only, anything else is a 404, never a 403), reading the JSON body and query values, and the
JSON answer."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.route import JSON, query_param
from gateway.admin.state import ADMIN_KEY
from gateway.errors import BAD_REQUEST, GatewayError, NotFound, ValidationError
from gateway.store.rows import MAX_PAGE

DIGITS = re.compile(r"[0-9]{1,7}")
LIMIT = query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
                    "page size")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=JSON)


# scoping: a workspace admin sees its own workspace only ------------------------------------------
def caller_workspace(request: web.Request) -> str | None:
    return request[ADMIN_KEY].workspace_id


def actor(request: web.Request) -> str:
    return request[ADMIN_KEY].key_id


def visible_workspace(request: web.Request) -> str:
    workspace_id = request.match_info["workspace_id"]
    own = caller_workspace(request)
    if own is not None and own != workspace_id:
        raise NotFound(f"workspace {workspace_id} not found")
    return workspace_id


# input -------------------------------------------------------------------------------------
async def read_json(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise GatewayError(BAD_REQUEST, "the body is not valid JSON") from None


def query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise ValidationError({name: "must be true or false"})
    return value == "true"


def query_limit(request: web.Request) -> int:
    """``?limit=`` (documented as ``LIMIT``)."""
    raw = request.query.get("limit", "50")
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationError({"limit": f"must be an integer from 1 to {MAX_PAGE}"})
    return int(raw)
