"""audit_log: who created, changed, rotated or revoked what, and when; newest first."""

from __future__ import annotations

from typing import Any

from gateway.keys.model import AuditEvent, utcnow
from gateway.store.db import Db
from gateway.store.rows import JSON, TIMESTAMP, Rows, check_limit

INSERT_EVENT = (
    "INSERT INTO audit_log (at, actor, action, target, workspace_id, changes) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)


class AuditLog:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._rows = Rows("audit_log", AuditEvent, {"at": TIMESTAMP, "changes": JSON}, db.dialect)

    async def add(
        self,
        *,
        actor: str | None,
        action: str,
        target: str,
        workspace_id: str | None,
        changes: dict[str, Any],
    ) -> None:
        at, payload = self._rows.value("at", utcnow()), self._rows.value("changes", changes)
        await self._db.execute(INSERT_EVENT, at, actor, action, target, workspace_id, payload)

    async def latest(self, workspace_id: str | None, limit: int = 100) -> list[AuditEvent]:
        """Newest first; ``workspace_id`` None: every workspace's events and the others."""
        check_limit(limit)
        if workspace_id is None:
            rows = await self._db.fetch(f"{self._rows.select} ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await self._db.fetch(
                f"{self._rows.select} WHERE workspace_id = $1 ORDER BY id DESC LIMIT $2",
                workspace_id,
                limit,
            )
        return [self._rows.read(row) for row in rows]
