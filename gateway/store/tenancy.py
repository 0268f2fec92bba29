"""workspaces, projects, namespaces: who a key belongs to, for every database. A workspace is
created with its default project in one transaction; project and namespace names are unique
within their workspace (the database checks, and says which)."""

from __future__ import annotations

from typing import TypeVar

from gateway.errors import Conflict, NotFound
from gateway.keys.model import Namespace, Project, Workspace, new_id, utcnow
from gateway.store.db import Db
from gateway.store.rows import TIMESTAMP, Rows

KINDS = {"created_at": TIMESTAMP}
ORDER = "ORDER BY created_at, id"
Child = TypeVar("Child", Project, Namespace)


class Tenancy:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._workspaces = Rows("workspaces", Workspace, KINDS, db.dialect)
        self._projects = Rows("projects", Project, KINDS, db.dialect)
        self._namespaces = Rows("namespaces", Namespace, KINDS, db.dialect)

    async def create_workspace(self, name: str) -> Workspace:
        """Create the workspace and its default project together."""
        now = utcnow()
        workspace = Workspace(new_id("ws"), name, new_id("proj"), now)
        default = Project(workspace.default_project_id, "default", workspace.id, now)
        async with self._db.transaction() as tx:
            await tx.execute(self._workspaces.insert, *self._workspaces.params(workspace))
            await tx.execute(self._projects.insert, *self._projects.params(default))
        return workspace

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        row = await self._db.fetchrow(f"{self._workspaces.select} WHERE id = $1", workspace_id)
        return self._workspaces.read(row) if row is not None else None

    async def list_workspaces(self) -> list[Workspace]:
        rows = await self._db.fetch(f"{self._workspaces.select} {ORDER}")
        return [self._workspaces.read(row) for row in rows]

    async def create_project(self, workspace_id: str, name: str) -> Project:
        project = Project(new_id("proj"), name, workspace_id, utcnow())
        return await self._add_child(self._projects, project)

    async def get_project(self, project_id: str) -> Project | None:
        row = await self._db.fetchrow(f"{self._projects.select} WHERE id = $1", project_id)
        return self._projects.read(row) if row is not None else None

    async def list_projects(self, workspace_id: str) -> list[Project]:
        return await self._children(self._projects, workspace_id)

    async def create_namespace(self, workspace_id: str, name: str) -> Namespace:
        """``Conflict`` when the name is taken, ``NotFound`` for an unknown workspace."""
        namespace = Namespace(new_id("ns"), name, workspace_id, utcnow())
        return await self._add_child(self._namespaces, namespace)

    async def list_namespaces(self, workspace_id: str) -> list[Namespace]:
        return await self._children(self._namespaces, workspace_id)

    async def _add_child(self, rows: Rows[Child], child: Child) -> Child:
        """One insert: ``NotFound`` for an unknown workspace (the foreign key), ``Conflict``
        for a name already taken in it (the unique key)."""
        try:
            await self._db.execute(rows.insert, *rows.params(child))
        except NotFound:
            raise NotFound(f"workspace {child.workspace_id} not found") from None
        except Conflict:
            kind, name = type(child).__name__.lower(), child.name
            raise Conflict(f"{kind} {name!r} already exists in {child.workspace_id}") from None
        return child

    async def _children(self, rows: Rows[Child], workspace_id: str) -> list[Child]:
        found = await self._db.fetch(f"{rows.select} WHERE workspace_id = $1 {ORDER}", workspace_id)
        return [rows.read(row) for row in found]
