"""key_usage: request and rate-limited counts per key, written behind in batches
(``gateway.keys.usage.UsageRecorder``), and each key's ``last_used_at``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.keys.model import KeyUsage
from gateway.store.db import Db

SELECT_USAGE = (
    "SELECT k.key_id, COALESCE(u.requests, 0), COALESCE(u.rate_limited, 0), k.last_used_at "
    "FROM api_keys AS k LEFT JOIN key_usage AS u ON u.key_id = k.key_id WHERE k.key_id = $1"
)


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Usage gathered in memory and written behind in one batch."""

    key_id: str
    requests: int
    rate_limited: int
    last_used_at: datetime | None


class UsageTable:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._dialect = db.dialect

    async def add(self, deltas: Sequence[UsageDelta]) -> None:
        """One transaction: counts added per key (unknown keys skipped), ``last_used_at`` only
        ever moves forward."""
        if not deltas:
            return
        async with self._db.transaction() as tx:
            for sql, rows in self._dialect.add_usage(deltas):
                await tx.executemany(sql, rows)

    async def get(self, key_id: str) -> KeyUsage | None:
        row = await self._db.fetchrow(SELECT_USAGE, key_id)
        if row is None:
            return None
        last_used_at = None if row[3] is None else self._dialect.read_timestamp(row[3])
        return KeyUsage(str(row[0]), int(row[1]), int(row[2]), last_used_at)
