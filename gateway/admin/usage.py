"""Usage over time of a key and of a workspace (README "Usage over time"): one series entry per
bucket of ``[from, to)``, zeros included, by outcome."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.admin.handler import caller_workspace, json_response, visible_workspace
from gateway.admin.route import BAD, Route, query_param, returns
from gateway.admin.state import KEY_SERVICE
from gateway.admin.subscriptions import quota_of
from gateway.keys.usage_report import parse_window

WINDOW_PARAMS = (
    query_param("from", {"type": "string", "format": "date-time"},
                "start of the window (RFC 3339; default: 24 hours before to), widened to a "
                "whole bucket"),
    query_param("to", {"type": "string", "format": "date-time"},
                "end of the window, excluded (RFC 3339; default: now), widened to a whole bucket"),
    query_param("granularity", {"enum": ["minute", "hour", "day"], "default": "hour"},
                "bucket length; at most 1440 buckets per window"),
)


async def key_usage(request: web.Request) -> web.Response:
    window = parse_window(request.query, time.time())
    found = await request.app[KEY_SERVICE].key_usage(
        request.match_info["key_id"], window, caller_workspace(request)
    )
    return json_response(found)


async def workspace_usage(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    window = parse_window(request.query, time.time())
    found = await request.app[KEY_SERVICE].workspace_usage(workspace_id, window)
    return json_response({**found, "quota": await quota_of(request, workspace_id)})


ROUTES = (
    Route("GET", "/admin/v1/keys/{key_id}/usage", key_usage, "Key usage",
          returns(200, "Usage"), query=WINDOW_PARAMS, errors=BAD),
    Route("GET", "/admin/v1/workspaces/{workspace_id}/usage", workspace_usage,
          "Workspace usage", returns(200, "WorkspaceUsage"), query=WINDOW_PARAMS, errors=BAD),
)
