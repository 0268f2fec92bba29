"""Workspaces, and the projects and namespaces inside one (README "Admin API")."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.handler import (
    actor,
    caller_workspace,
    json_response,
    read_json,
    visible_workspace,
)
from gateway.admin.route import BAD, UNSCOPED, WRITE, Handler, Route, returns
from gateway.admin.state import KEY_SERVICE
from gateway.errors import NotFound
from gateway.keys.validation import validate_named

WORKSPACES = "/admin/v1/workspaces"
WORKSPACE = WORKSPACES + "/{workspace_id}"


async def create_workspace(request: web.Request) -> web.Response:
    if caller_workspace(request) is not None:
        raise NotFound("workspace admins cannot create workspaces")
    name = validate_named(await read_json(request))
    workspace = await request.app[KEY_SERVICE].create_workspace(name, actor(request))
    return json_response(workspace.to_public(), 201)


async def list_workspaces(request: web.Request) -> web.Response:
    workspaces = await request.app[KEY_SERVICE].list_workspaces()
    own = caller_workspace(request)
    results = [w.to_public() for w in workspaces if own is None or w.id == own]
    return json_response({"results": results, "total": len(results)})


def _named_create(kind: str) -> Handler:
    async def create(request: web.Request) -> web.Response:
        workspace_id = visible_workspace(request)
        name = validate_named(await read_json(request))
        service = request.app[KEY_SERVICE]
        make = service.create_project if kind == "project" else service.create_namespace
        created = await make(workspace_id, name, actor(request))
        return json_response(created.to_public(), 201)

    return create


def _named_list(kind: str) -> Handler:
    async def list_(request: web.Request) -> web.Response:
        workspace_id = visible_workspace(request)
        service = request.app[KEY_SERVICE]
        fetch = service.list_projects if kind == "project" else service.list_namespaces
        results = [item.to_public() for item in await fetch(workspace_id)]
        return json_response({"results": results, "total": len(results)})

    return list_


def _named_routes(kind: str, plural: str) -> tuple[Route, ...]:
    """Projects and namespaces: a name inside a workspace, created and listed alike."""
    path, title = f"{WORKSPACE}/{plural}", kind.capitalize()
    return (
        Route("POST", path, _named_create(kind), f"Create {kind}", returns(201, title),
              body="NamedCreate", errors=WRITE),
        Route("GET", path, _named_list(kind), f"List {plural}", returns(200, f"{title}List")),
    )


ROUTES = (
    Route("POST", WORKSPACES, create_workspace, "Create workspace", returns(201, "Workspace"),
          body="NamedCreate", errors=BAD),
    Route("GET", WORKSPACES, list_workspaces, "List workspaces", returns(200, "WorkspaceList"),
          errors=UNSCOPED),
    *_named_routes("project", "projects"),
    *_named_routes("namespace", "namespaces"),
)
