"""members: who belongs to a workspace, with which role, for every database. An email is unique
in its workspace (the database checks; the service lower-cases it first). Removing a member
revokes its keys in the same transaction (``KeyTable.revoke_owned``), under the owner lock that
key creation takes too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import Conflict, MemberNotFound, NotFound
from gateway.keys.model import KeyRecord, Member, utcnow
from gateway.store.db import Conn, Db
from gateway.store.rows import TIMESTAMP, Rows

if TYPE_CHECKING:
    from gateway.store.keys import KeyTable

ORDER = "ORDER BY created_at, user_id"  # oldest first


class Members:
    def __init__(self, db: Db, keys: KeyTable) -> None:
        self._db = db
        self._keys = keys
        self._rows = Rows("members", Member, {"created_at": TIMESTAMP}, db.dialect)
        self._one = f"{self._rows.select} WHERE workspace_id = $1 AND user_id = $2"

    async def add(self, member: Member) -> Member:
        """``Conflict`` when the email is taken in the workspace, ``NotFound`` for an unknown
        workspace."""
        try:
            await self._db.execute(self._rows.insert, *self._rows.params(member))
        except NotFound:
            raise NotFound(f"workspace {member.workspace_id} not found") from None
        except Conflict:
            raise Conflict(
                f"member {member.email!r} already exists in {member.workspace_id}"
            ) from None
        return member

    async def get(self, workspace_id: str, user_id: str) -> Member | None:
        row = await self._db.fetchrow(self._one, workspace_id, user_id)
        return self._rows.read(row) if row is not None else None

    async def by_email(self, workspace_id: str, email: str) -> Member | None:
        row = await self._db.fetchrow(
            f"{self._rows.select} WHERE workspace_id = $1 AND email = $2", workspace_id, email
        )
        return self._rows.read(row) if row is not None else None

    async def all(self, workspace_id: str) -> list[Member]:
        rows = await self._db.fetch(f"{self._rows.select} WHERE workspace_id = $1 {ORDER}",
                                    workspace_id)
        return [self._rows.read(row) for row in rows]

    async def set_role(self, workspace_id: str, user_id: str, role: str) -> Member:
        async with self._db.transaction() as tx:
            await self._must_get(tx, workspace_id, user_id)
            await tx.execute(
                "UPDATE members SET role = $3 WHERE workspace_id = $1 AND user_id = $2",
                workspace_id, user_id, role,
            )
            return await self._must_get(tx, workspace_id, user_id)

    async def remove(
        self, workspace_id: str, user_id: str, revoked_by: str | None
    ) -> tuple[Member, list[KeyRecord]]:
        """Delete the member and revoke every active key it owns, in one transaction; return
        the member and the keys revoked (their hashes are in the change log)."""
        async with self._db.transaction() as tx:
            await self._keys.lock_owner(tx, user_id)
            member = await self._must_get(tx, workspace_id, user_id)
            revoked = await self._keys.revoke_owned(tx, workspace_id, user_id, revoked_by,
                                                    utcnow())
            await tx.execute(
                "DELETE FROM members WHERE workspace_id = $1 AND user_id = $2",
                workspace_id, user_id,
            )
        return member, revoked

    async def _must_get(self, conn: Conn, workspace_id: str, user_id: str) -> Member:
        row = await conn.fetchrow(self._one, workspace_id, user_id)
        if row is None:
            raise MemberNotFound(f"member {user_id} not found in workspace {workspace_id}")
        return self._rows.read(row)
