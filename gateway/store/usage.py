"""Usage: lifetime counts per key (key_usage, each key's ``last_used_at``) and counts over time
per key and per workspace, bucketed by minute, hour and day (README "Usage over time").

Nodes count in memory (``gateway.keys.usage.UsageRecorder``) and ``add`` minute buckets in
batches, additively, so any number of nodes can write at once. ``roll_up`` (every node runs it
periodically) adds whole minutes to their hour and day rows and deletes what is past retention.
``usage_rollup.rolled_to`` says which minutes have been rolled up: a flush reads it shared and adds
a minute before it (a late write, after an outage) to the hour and day rows itself; the roll-up
takes it exclusively. Each count thus reaches every granularity exactly once, and a read of an
hour or day series adds the minutes not rolled up yet, so it is exact at any moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.keys.model import OUTCOMES, KeyUsage, TopKey, UsagePoint
from gateway.store.db import Conn, Db, Row
from gateway.store.usage_top import DAY, HOUR, MINUTE, TOTAL, top_keys

SELECT_USAGE = (
    "SELECT k.key_id, COALESCE(u.requests, 0), COALESCE(u.rate_limited, 0), k.last_used_at "
    "FROM api_keys AS k LEFT JOIN key_usage AS u ON u.key_id = k.key_id WHERE k.key_id = $1"
)

_COLUMNS = ", ".join(OUTCOMES)
_SUMS = ", ".join(f"SUM({name})" for name in OUTCOMES)
_ADDED = ", ".join(f"{name} = {{table}}.{name} + excluded.{name}" for name in OUTCOMES)
_VALUES = ", ".join(f"${n}" for n in range(4, 4 + len(OUTCOMES)))

ADD_KEY_BUCKET = (
    f"INSERT INTO usage_key_buckets (key_id, granularity, start, workspace_id, {_COLUMNS}) "
    f"VALUES ($1, $2, $3, ${4 + len(OUTCOMES)}, {_VALUES}) "
    "ON CONFLICT (key_id, granularity, start) DO UPDATE SET "
    + _ADDED.format(table="usage_key_buckets")
)
ADD_WORKSPACE_BUCKET = (
    f"INSERT INTO usage_workspace_buckets (workspace_id, granularity, start, {_COLUMNS}) "
    f"VALUES ($1, $2, $3, {_VALUES}) "
    "ON CONFLICT (workspace_id, granularity, start) DO UPDATE SET "
    + _ADDED.format(table="usage_workspace_buckets")
)


def _roll_up(table: str, subject: str, kept: str = "") -> str:
    """Minutes in [$2, $3) added to their buckets of granularity $1; ``kept``: columns that do not
    change from minute to minute (a key's workspace), taken as they are."""
    columns = f"{subject}, {kept}, " if kept else f"{subject}, "
    values = f"{subject}, MAX({kept}), " if kept else f"{subject}, "
    return (
        f"INSERT INTO {table} ({columns}granularity, start, {_COLUMNS}) "
        f"SELECT {values}$1, start - start % $1, {_SUMS} FROM {table} "
        f"WHERE granularity = {MINUTE} AND start >= $2 AND start < $3 "
        f"GROUP BY {subject}, start - start % $1 ORDER BY {subject}, start - start % $1 "
        f"ON CONFLICT ({subject}, granularity, start) DO UPDATE SET "
        + _ADDED.format(table=table)
    )


ROLL_UP = (
    _roll_up("usage_key_buckets", "key_id", "workspace_id"),
    _roll_up("usage_workspace_buckets", "workspace_id"),
)
EXPIRE = tuple(
    f"DELETE FROM {table} WHERE granularity = $1 AND start < $2"
    for table in ("usage_key_buckets", "usage_workspace_buckets")
)


ROLLED_TO = "SELECT rolled_to FROM usage_rollup WHERE id = 1"

# running totals (README "Usage over time"): a day's row starts from the key's last total before
# it, then the day's count is added to it and to every later day's
OPEN_DAY = (
    "INSERT INTO usage_key_running (key_id, day, through) SELECT $1, $2, COALESCE(("
    "SELECT through FROM usage_key_running WHERE key_id = $1 AND day < $2 "
    "ORDER BY day DESC LIMIT 1), 0) WHERE 1 = 1 ON CONFLICT (key_id, day) DO NOTHING"
)
ADD_TO_DAYS = "UPDATE usage_key_running SET through = through + $3 WHERE key_id = $1 AND day >= $2"
ROLLED_DAYS = (  # per key and day, what the minutes of [$1, $2) add
    f"SELECT key_id, start - start % {DAY}, SUM({TOTAL}) FROM usage_key_buckets "
    f"WHERE granularity = {MINUTE} AND start >= $1 AND start < $2 "
    f"GROUP BY key_id, start - start % {DAY} ORDER BY key_id, start - start % {DAY}"
)
EXPIRE_RUNNING = (  # all but each key's last row before the floor
    "DELETE FROM usage_key_running WHERE day < $1 AND EXISTS (SELECT 1 FROM usage_key_running "
    "AS later WHERE later.key_id = usage_key_running.key_id AND later.day > usage_key_running.day "
    "AND later.day < $1)"
)


def _series(table: str, subject: str) -> str:
    """Buckets of granularity $2 in [$3, $4) of one subject ($1), plus the minutes from $5 (the
    roll-up's mark, or $3 if later) the roll-up has not reached yet, summed into their buckets."""
    return (
        f"SELECT b, {_SUMS} FROM ("
        f"SELECT start AS b, {_COLUMNS} FROM {table} WHERE {subject} = $1 AND granularity = $2 "
        "AND start >= $3 AND start < $4 "
        f"UNION ALL SELECT start - start % $2 AS b, {_COLUMNS} FROM {table} "
        f"WHERE {subject} = $1 AND granularity = {MINUTE} AND $2 <> {MINUTE} "
        "AND start >= $5 AND start < $4"
        ") AS u GROUP BY b ORDER BY b"
    )


KEY_SERIES = _series("usage_key_buckets", "key_id")
# per key of a page and day in [$1, $2): the day buckets plus the minutes from $3 not rolled up
DAILY_TOTALS = (
    f"SELECT key_id, b, SUM(n) FROM ("
    f"SELECT key_id, start AS b, {TOTAL} AS n FROM usage_key_buckets WHERE key_id IN ({{ids}}) "
    f"AND granularity = {DAY} AND start >= $1 AND start < $2 "
    f"UNION ALL SELECT key_id, start - start % {DAY} AS b, {TOTAL} AS n FROM usage_key_buckets "
    f"WHERE key_id IN ({{ids}}) AND granularity = {MINUTE} AND start >= $3 AND start < $2"
    ") AS u GROUP BY key_id, b"
)
WORKSPACE_SERIES = _series("usage_workspace_buckets", "workspace_id")
@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Lifetime counts of one key gathered in memory and written behind in one batch."""

    key_id: str
    requests: int
    rate_limited: int
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """One key's counts in one minute, by outcome (``OUTCOMES`` order)."""

    key_id: str
    workspace_id: str | None
    start: int  # epoch seconds, a multiple of 60
    counts: tuple[int, ...]

    @classmethod
    def of(cls, key_id: str, workspace_id: str | None, start: int, **counts: int) -> MinuteCounts:
        """Counts by outcome name, e.g. ``MinuteCounts.of(k, w, t, success=3)``."""
        unknown = set(counts) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcomes: {sorted(unknown)}")
        return cls(key_id, workspace_id, start, tuple(counts.get(name, 0) for name in OUTCOMES))


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds each granularity's buckets are kept."""

    minute: int
    hour: int
    day: int


class UsageTable:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._dialect = db.dialect

    async def add(
        self, minutes: Sequence[MinuteCounts], last_used: Mapping[str, datetime] | None = None
    ) -> None:
        """One transaction: the minutes added to the buckets of their key and workspace, the
        lifetime counts to ``key_usage`` (unknown keys skipped), ``last_used_at`` only ever moved
        forward. Rows are written in one order on every node, so concurrent flushes queue on a
        row rather than deadlock."""
        if not minutes:
            return
        async with self._db.transaction() as tx:
            rolled_to = await tx.fetchval(ROLLED_TO + self._dialect.share_lock)
            keys, workspaces, late_days = _bucket_rows(minutes, int(rolled_to))
            await tx.executemany(ADD_KEY_BUCKET, keys)
            await tx.executemany(ADD_WORKSPACE_BUCKET, workspaces)
            await _add_to_running(tx, late_days)
            for sql, rows in self._dialect.add_usage(_lifetime(minutes, last_used or {})):
                await tx.executemany(sql, rows)

    async def roll_up(self, now: int, retention: Retention) -> int:
        """Roll every whole minute before ``now`` up into hours and days, and delete buckets past
        ``retention``. Safe on every node at once: the second waits for the first and finds
        nothing left to roll. Returns the minute rolled up to."""
        cutoff = now - now % MINUTE
        async with self._db.transaction() as tx:
            rolled_to = int(await tx.fetchval(ROLLED_TO + self._dialect.row_lock))
            if cutoff > rolled_to:
                await self._roll(tx, rolled_to, cutoff)
            await self._expire(tx, now, max(cutoff, rolled_to), retention)
        return max(cutoff, rolled_to)

    async def _roll(self, tx: Conn, rolled_to: int, cutoff: int) -> None:
        days = await tx.fetch(ROLLED_DAYS, rolled_to, cutoff)
        await _add_to_running(tx, [(str(r[0]), int(r[1]), int(r[2])) for r in days])
        for granularity in (HOUR, DAY):
            for sql in ROLL_UP:
                await tx.execute(sql, granularity, rolled_to, cutoff)
        await tx.execute("UPDATE usage_rollup SET rolled_to = $1 WHERE id = 1", cutoff)

    async def _expire(self, tx: Conn, now: int, rolled_to: int, retention: Retention) -> None:
        # a minute is deleted only once rolled up, whatever its retention says
        minute_floor = min(now - retention.minute, rolled_to)
        for granularity, floor in ((MINUTE, minute_floor), (HOUR, now - retention.hour),
                                   (DAY, now - retention.day)):
            for sql in EXPIRE:
                await tx.execute(sql, granularity, floor)
        await tx.execute(EXPIRE_RUNNING, now - retention.day)

    async def key_series(
        self, key_id: str, granularity: int, start: int, end: int
    ) -> list[UsagePoint]:
        """The buckets of [start, end) that have counts, in order."""
        return await self._series(KEY_SERIES, key_id, granularity, start, end)

    async def workspace_series(
        self, workspace_id: str, granularity: int, start: int, end: int
    ) -> list[UsagePoint]:
        return await self._series(WORKSPACE_SERIES, workspace_id, granularity, start, end)

    async def _series(
        self, sql: str, subject: str, granularity: int, start: int, end: int
    ) -> list[UsagePoint]:
        rows = await self._read(sql, subject, granularity, start, end)
        width = len(OUTCOMES)
        return [UsagePoint(int(row[0]), tuple(int(row[i + 1]) for i in range(width)))
                for row in rows]

    async def daily_totals(
        self, key_ids: Sequence[str], start: int, end: int
    ) -> dict[str, dict[int, int]]:
        """Requests of every outcome per key and UTC day in [start, end), days being multiples
        of 86400: one query for a page of keys (the console's sparklines)."""
        if not key_ids:
            return {}
        ids = ", ".join(f"${n}" for n in range(4, 4 + len(key_ids)))
        async with self._db.transaction(snapshot=True) as tx:
            rolled_to = int(await tx.fetchval(ROLLED_TO))
            rows = await tx.fetch(DAILY_TOTALS.format(ids=ids), start, end,
                                  max(start, rolled_to), *key_ids)
        found: dict[str, dict[int, int]] = {}
        for row in rows:
            found.setdefault(str(row[0]), {})[int(row[1])] = int(row[2])
        return found

    async def top_keys(
        self, workspace_id: str, start: int, end: int, limit: int = 10
    ) -> list[TopKey]:
        """The workspace's busiest keys over [start, end): whole days from the running totals,
        the rest from the buckets (see ``usage_top``)."""
        async with self._db.transaction(snapshot=True) as tx:
            rolled_to = int(await tx.fetchval(ROLLED_TO))
            return await top_keys(tx, workspace_id, start, end, rolled_to, limit)

    async def _read(self, sql: str, subject: str, granularity: int, start: int, end: int,
                    *more: object) -> list[Row]:
        """One snapshot: the roll-up's mark, then the rows, so no minute is read twice (as
        itself and in its hour) or missed. The mark is a parameter, not a subquery, so the
        index bounds the minutes read."""
        async with self._db.transaction(snapshot=True) as tx:
            rolled_to = int(await tx.fetchval(ROLLED_TO))
            return await tx.fetch(sql, subject, granularity, start, end, max(start, rolled_to),
                                  *more)

    async def get(self, key_id: str) -> KeyUsage | None:
        row = await self._db.fetchrow(SELECT_USAGE, key_id)
        if row is None:
            return None
        last_used_at = None if row[3] is None else self._dialect.read_timestamp(row[3])
        return KeyUsage(str(row[0]), int(row[1]), int(row[2]), last_used_at)


Values = tuple[object, ...]


def _bucket_rows(
    minutes: Sequence[MinuteCounts], rolled_to: int
) -> tuple[list[Values], list[Values], list[tuple[str, int, int]]]:
    """The key rows and the workspace rows to add, each sorted by its primary key. A minute
    the roll-up has passed (a late one, after an outage) is added to its hour and day as well,
    and its day's count per key is returned third, for the running totals."""
    keys: dict[tuple[str, int, int], list[int]] = {}
    workspace_of: dict[str, str | None] = {}
    workspaces: dict[tuple[str, int, int], list[int]] = {}
    for m in minutes:
        targets = [(MINUTE, m.start)]
        if m.start < rolled_to:
            targets += [(HOUR, m.start - m.start % HOUR), (DAY, m.start - m.start % DAY)]
        workspace_of[m.key_id] = m.workspace_id
        for granularity, start in targets:
            _add(keys, (m.key_id, granularity, start), m.counts)
            if m.workspace_id is not None:
                _add(workspaces, (m.workspace_id, granularity, start), m.counts)
    key_rows: list[Values] = [
        (*k, *counts, workspace_of[k[0]]) for k, counts in sorted(keys.items())
    ]
    workspace_rows: list[Values] = [(*k, *counts) for k, counts in sorted(workspaces.items())]
    late_days = [(key_id, start, sum(counts))
                 for (key_id, granularity, start), counts in keys.items() if granularity == DAY]
    return key_rows, workspace_rows, late_days


async def _add_to_running(tx: Conn, days: list[tuple[str, int, int]]) -> None:
    """Add each (key, day, count), one per key and day, to the key's running totals, in key
    order."""
    rows = sorted(day for day in days if day[2])
    if not rows:
        return
    await tx.executemany(OPEN_DAY, [(key_id, day) for key_id, day, _ in rows])
    await tx.executemany(ADD_TO_DAYS, rows)


def _add(into: dict[tuple[str, int, int], list[int]], at: tuple[str, int, int],
         counts: Sequence[int]) -> None:
    total = into.setdefault(at, [0] * len(counts))
    for i, n in enumerate(counts):
        total[i] += n


_SUCCESS, _UPSTREAM_ERROR, _RATE_LIMITED, _QUOTA_EXCEEDED = range(4)


def _lifetime(
    minutes: Sequence[MinuteCounts], last_used: Mapping[str, datetime]
) -> list[UsageDelta]:
    """The lifetime counts: ``requests`` that reached the upstream, ``rate_limited`` requests
    refused by the key's limit or its workspace's quota."""
    totals: dict[str, list[int]] = {}
    for m in minutes:
        total = totals.setdefault(m.key_id, [0, 0])
        total[0] += m.counts[_SUCCESS] + m.counts[_UPSTREAM_ERROR]
        total[1] += m.counts[_RATE_LIMITED] + m.counts[_QUOTA_EXCEEDED]
    return [UsageDelta(key_id, requests, limited, last_used.get(key_id))
            for key_id, (requests, limited) in sorted(totals.items())]
