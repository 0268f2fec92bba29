"""The audit log: who created, changed, rotated or revoked what, and when (README "Admin API")."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.handler import LIMIT, caller_workspace, json_response, query_limit
from gateway.admin.route import BAD, Route, query_param, returns
from gateway.admin.state import KEY_SERVICE
from gateway.errors import NotFound


async def audit(request: web.Request) -> web.Response:
    own = caller_workspace(request)
    wanted = request.query.get("workspace_id") or own
    if own is not None and wanted != own:
        raise NotFound(f"workspace {wanted} not found")
    events = await request.app[KEY_SERVICE].audit(wanted or None, query_limit(request))
    return json_response({"results": [e.to_public() for e in events], "total": len(events)})


ROUTES = (
    Route("GET", "/admin/v1/audit", audit, "List audit events", returns(200, "AuditEventList"),
          errors=BAD, query=(
              query_param("workspace_id", {"type": "string"},
                          "events of this workspace (a workspace admin: its own, the default)"),
              LIMIT,
          )),
)
