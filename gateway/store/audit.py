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

    async def page(
        self, workspace_id: str, *, limit: int, before: int | None = None,
        action: str | None = None, target: str | None = None, actor: str | None = None,
        concerning: str | None = None,
    ) -> list[AuditEvent]:
        """The console's audit log: newest first, events older than id ``before``; ``action``
        (``key.`` for every key action), ``target``, ``actor``; ``concerning`` a member: only
        what they did or what was done to their keys."""
        check_limit(limit)
        where, values = ["workspace_id = $1"], list[object]([workspace_id])

        def add(clause: str, value: object) -> None:
            values.append(value)
            where.append(clause.format(f"${len(values)}"))

        if before is not None:
            add("id < {}", before)
        if action:
            add("action LIKE {}", action + "%" if action.endswith(".") else action)
        if target:
            add("target = {}", target)
        if actor:
            add("actor = {}", actor)
        if concerning:
            add("(actor = {0} OR target IN (SELECT key_id FROM api_keys WHERE user_id = {0}))",
                concerning)
        values.append(limit)
        rows = await self._db.fetch(
            f"{self._rows.select} WHERE {' AND '.join(where)} ORDER BY id DESC "
            f"LIMIT ${len(values)}", *values,
        )
        return [self._rows.read(row) for row in rows]
