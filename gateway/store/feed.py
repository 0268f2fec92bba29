"""key_changes: the change log. Every key mutation appends the changed hashes in its own
transaction; nodes that cannot be told at commit (SQLite) poll it (``ChangeFeedPoller``).
Rows older than ``CHANGE_RETENTION`` are pruned, but ``seq`` never moves back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.store.db import Conn, Db

CHANGE_RETENTION = timedelta(hours=1)  # how long the change log keeps a row


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One row of the change feed: the hash whose cached entry must be dropped."""

    seq: int
    key_hash: str


class ChangeLog:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._dialect = db.dialect

    async def append(self, tx: Conn, key_hashes: Sequence[str], now: datetime) -> None:
        """In the mutation's transaction ``tx``: log the hashes, prune what is too old."""
        at = self._dialect.timestamp(now)
        await tx.executemany(*self._dialect.append_changes(key_hashes, at))
        await tx.execute(
            "DELETE FROM key_changes WHERE changed_at < $1",
            self._dialect.timestamp(now - CHANGE_RETENTION),
        )

    async def since(self, seq: int) -> list[KeyChange]:
        """Key hashes changed after ``seq``, oldest first. (On Postgres a sequence may commit
        out of order under concurrency; there polling is only the fallback of LISTEN.)"""
        rows = await self._db.fetch(
            "SELECT seq, key_hash FROM key_changes WHERE seq > $1 ORDER BY seq", seq
        )
        return [KeyChange(int(row[0]), str(row[1])) for row in rows]

    async def last_seq(self) -> int:
        """The highest seq ever handed out (pruning never moves it back)."""
        return int(await self._db.fetchval(self._dialect.last_change_seq) or 0)
