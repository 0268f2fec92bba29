"""Workspace views for the tenancy stage: which projects and namespaces a workspace has.

Read-through with a short TTL; a lookup that misses (an unknown project id or namespace name)
reloads the view at most once per ``refresh_after`` seconds, so new projects show up quickly
while garbage headers cannot turn into a flood of store queries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.keys.single_flight import SingleFlight

if TYPE_CHECKING:
    from gateway.store import Store


@dataclass(frozen=True, slots=True)
class WorkspaceView:
    workspace_id: str
    default_project_id: str | None
    project_ids: frozenset[str]
    namespaces_by_name: dict[str, str]  # name -> id
    namespaces_by_id: dict[str, str]  # id -> name
    loaded_at: float

    def namespace(self, ref: str) -> tuple[str, str] | None:
        """(id, name) for a namespace given by id (``ns_…``) or by name."""
        name = self.namespaces_by_id.get(ref)
        if name is not None:
            return ref, name
        namespace_id = self.namespaces_by_name.get(ref)
        return (namespace_id, ref) if namespace_id is not None else None


class TenancyCache:
    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 30.0,
        refresh_after: float = 1.0,
        max_entries: int = 10_000,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._refresh_after = refresh_after
        self._max = max_entries
        self._views: OrderedDict[str, WorkspaceView] = OrderedDict()
        self._flights: SingleFlight[str, WorkspaceView] = SingleFlight()

    async def view(self, workspace_id: str) -> WorkspaceView:
        view = self._views.get(workspace_id)
        if view is not None and time.monotonic() - view.loaded_at < self._ttl:
            return view
        return await self._load(workspace_id)

    async def refreshed(self, view: WorkspaceView) -> WorkspaceView:
        """A newer view after a miss, unless the current one is younger than refresh_after."""
        if time.monotonic() - view.loaded_at < self._refresh_after:
            return view
        return await self._load(view.workspace_id)

    def invalidate(self, workspace_id: str) -> None:
        self._views.pop(workspace_id, None)

    async def _load(self, workspace_id: str) -> WorkspaceView:
        return await self._flights.load(workspace_id, lambda: self._fetch(workspace_id))

    async def _fetch(self, workspace_id: str) -> WorkspaceView:
        workspace = await self._store.get_workspace(workspace_id)
        projects = await self._store.list_projects(workspace_id) if workspace else []
        namespaces = await self._store.list_namespaces(workspace_id) if workspace else []
        view = WorkspaceView(
            workspace_id=workspace_id,
            default_project_id=workspace.default_project_id if workspace else None,
            project_ids=frozenset(p.id for p in projects),
            namespaces_by_name={n.name: n.id for n in namespaces},
            namespaces_by_id={n.id: n.name for n in namespaces},
            loaded_at=time.monotonic(),
        )
        self._views[workspace_id] = view
        self._views.move_to_end(workspace_id)
        if len(self._views) > self._max:
            self._views.popitem(last=False)
        return view
