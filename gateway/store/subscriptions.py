"""subscriptions: which plan a workspace is on (at most one row per workspace), for every
database.

A change is in force on every node as fast as a revocation: ``put`` appends the hash of every
key of the workspace to the change log in its own transaction, so each node drops those keys
from its cache and reads them again — with the new plan, which ``KeyTable.get_by_hash`` reads in
the same one query as the key.

``put`` first locks the workspace's row (Postgres: FOR UPDATE; SQLite's write transaction
excludes every other writer anyway). A key insert shares that row through its foreign key
(FOR KEY SHARE), so the two serialize: a change waits for a key being created and then logs its
hash too, and a key created meanwhile waits for the change and is read with the new plan.
Without it a key committed between the change's read of the hashes and its commit missed the
change log, and a node could cache it with the old plan until the cache TTL.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import NotFound
from gateway.keys.model import Subscription, new_id, utcnow
from gateway.store.db import Db
from gateway.store.feed import ChangeLog
from gateway.store.rows import TIMESTAMP, Rows

KINDS = {"started_at": TIMESTAMP}
# a new plan starts now; putting the same plan again changes nothing
UPSERT = (
    "INSERT INTO subscriptions (subscription_id, workspace_id, plan, started_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (workspace_id) DO UPDATE SET plan = excluded.plan, "
    "started_at = CASE WHEN subscriptions.plan = excluded.plan THEN subscriptions.started_at "
    "ELSE excluded.started_at END"
)
KEY_HASHES = "SELECT key_hash FROM api_keys WHERE workspace_id = $1"


class Subscriptions:
    def __init__(self, db: Db, changes: ChangeLog) -> None:
        self._db = db
        self._changes = changes
        self._rows = Rows("subscriptions", Subscription, KINDS, db.dialect)

    async def get(self, workspace_id: str) -> Subscription | None:
        row = await self._db.fetchrow(f"{self._rows.select} WHERE workspace_id = $1", workspace_id)
        return self._rows.read(row) if row is not None else None

    async def put(self, workspace_id: str, plan: str) -> tuple[Subscription, list[str]]:
        """Subscribe the workspace to ``plan`` (``NotFound`` for an unknown workspace); returns
        the subscription and the hashes of the workspace's keys, whose cached entries are now
        stale (they are in the change log already)."""
        now = utcnow()
        stamp = self._db.dialect.timestamp(now)
        lock = f"SELECT id FROM workspaces WHERE id = $1{self._db.dialect.row_lock}"
        async with self._db.transaction() as tx:
            if await tx.fetchval(lock, workspace_id) is None:
                raise NotFound(f"workspace {workspace_id} not found")
            await tx.execute(UPSERT, new_id("sub"), workspace_id, plan, stamp)
            row = await tx.fetchrow(f"{self._rows.select} WHERE workspace_id = $1", workspace_id)
            hashes = [str(r[0]) for r in await tx.fetch(KEY_HASHES, workspace_id)]
            if hashes:
                await self._changes.append(tx, hashes, now)
        assert row is not None  # written in this very transaction
        return self._rows.read(row), hashes

    async def using(self, plans: Iterable[str]) -> dict[str, list[str]]:
        """Plan -> the workspaces subscribed to it, for each of ``plans`` that has any."""
        found: dict[str, list[str]] = {}
        for plan in plans:
            rows = await self._db.fetch(
                "SELECT workspace_id FROM subscriptions WHERE plan = $1 ORDER BY workspace_id",
                plan,
            )
            if rows:
                found[plan] = [str(row[0]) for row in rows]
        return found
