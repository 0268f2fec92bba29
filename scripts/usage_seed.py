"""Seed a key store with usage history and time the usage queries (README "Usage over time").

One workspace with ``--keys`` keys and ``--days`` days of history: each key is active in a
random ``--active`` share of the hours (an hour row and its day row), and the ``--busy`` busiest
keys have minute rows for the last 48 hours. Then it times, over ``--runs`` runs each (median
and worst, in ms): a key's 30 days by hour, the workspace's 30 days by hour, its top keys over 24
hours and 30 days by hour and over 90 days by day, and a key's last 24 hours by minute.

    python scripts/usage_seed.py --database postgresql://postgres@127.0.0.1:5432/usage_seed
    python scripts/usage_seed.py --database sqlite:////tmp/usage_seed.db

A Postgres database is created when missing; ``--drop`` drops it afterwards. Run again on a
kept database, it only times the queries.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from gateway.config import KeyStoreConfig
from gateway.keys.model import (
    OUTCOMES,
    KeyHasher,
    KeyRecord,
    display_parts,
    generate_key,
    new_id,
    utcnow,
)
from gateway.services import STORES
from gateway.store import Store

HOUR, DAY, MINUTE = 3600, 86_400, 60
COLUMNS = ("key_id", "granularity", "start", "workspace_id", *OUTCOMES)
WS_COLUMNS = ("workspace_id", "granularity", "start", *OUTCOMES)


async def ensure_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    base, _, name = url.rpartition("/")
    conn = await asyncpg.connect(base + "/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    base, _, name = url.rpartition("/")
    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def open_store(url: str) -> Store:
    factory = STORES[url.partition(":")[0]]
    return factory(url, KeyStoreConfig(timeout=600, pool_size=4))


async def make_keys(store: Store, workspace_id: str, count: int) -> list[str]:
    hasher = KeyHasher(None)
    ids = []
    for i in range(count):
        plaintext = generate_key("sk_live")
        prefix, hint = display_parts(plaintext)
        record = KeyRecord(
            key_id=new_id("key"), key_hash=hasher(plaintext), key_prefix=prefix, hint=hint,
            name=f"key {i}", workspace_id=workspace_id, project_id=None, user_id=None,
            created_at=utcnow(),
        )
        await store.create_key(record, max_active_per_user=count)
        ids.append(record.key_id)
    return ids


Rows = list[tuple[Any, ...]]


def history(key_ids: list[str], workspace_id: str, now: int, days: int, active: float,
            busy: int, rng: random.Random) -> tuple[Rows, Rows, Rows]:
    """Key rows, workspace rows (hours, days, and 48 h of minutes for the busy keys) and each
    key's running totals by day."""
    first_hour = now - now % HOUR - days * DAY
    hours = [first_hour + i * HOUR for i in range(days * 24)]
    rows: Rows = []
    running: Rows = []
    workspace: dict[tuple[int, int], list[int]] = {}

    def add(key_id: str, granularity: int, start: int, counts: list[int]) -> None:
        rows.append((key_id, granularity, start, workspace_id, *counts))
        total = workspace.setdefault((granularity, start), [0] * len(OUTCOMES))
        for i, n in enumerate(counts):
            total[i] += n

    for key_id in key_ids:
        by_day: dict[int, list[int]] = {}
        for start in rng.sample(hours, max(1, int(len(hours) * active))):
            counts = [rng.randint(1, 500), rng.randint(0, 3), rng.randint(0, 20), 0, 0,
                      rng.randint(0, 2), 0, 0]
            add(key_id, HOUR, start, counts)
            day = by_day.setdefault(start - start % DAY, [0] * len(OUTCOMES))
            for i, n in enumerate(counts):
                day[i] += n
        through = 0
        for start, counts in sorted(by_day.items()):
            add(key_id, DAY, start, counts)
            through += sum(counts)
            running.append((key_id, start, through))
    minute0 = now - now % MINUTE - 2 * DAY
    for key_id in key_ids[:busy]:
        for i in range(2 * DAY // MINUTE):
            add(key_id, MINUTE, minute0 + i * MINUTE, [rng.randint(1, 20), 0, 0, 0, 0, 0, 0, 0])
    workspace_rows = [(workspace_id, g, s, *c) for (g, s), c in workspace.items()]
    return rows, workspace_rows, running


async def load(store: Store, rows: Rows, workspace_rows: Rows, running: Rows, now: int) -> None:
    if store.db.dialect.name == "postgres":
        db: Any = store.db  # Postgres: the pool hands out asyncpg connections
        async with db.connection() as conn:
            raw: Any = conn
            await raw.copy_records_to_table("usage_key_buckets", records=rows, columns=COLUMNS)
            await raw.copy_records_to_table("usage_workspace_buckets", records=workspace_rows,
                                            columns=WS_COLUMNS)
            await raw.copy_records_to_table("usage_key_running", records=running,
                                            columns=("key_id", "day", "through"))
            await raw.execute("ANALYZE")
    else:
        marks = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
        async with store.db.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO usage_key_buckets ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
            marks = ", ".join(f"${i + 1}" for i in range(len(WS_COLUMNS)))
            await tx.executemany(f"INSERT INTO usage_workspace_buckets ({', '.join(WS_COLUMNS)}) "
                                 f"VALUES ({marks})", workspace_rows)
            await tx.executemany("INSERT INTO usage_key_running (key_id, day, through) "
                                 "VALUES ($1, $2, $3)", running)
        await store.db.execute("ANALYZE")
    # everything is rolled up: minutes before now are in their hours and days
    await store.db.execute("UPDATE usage_rollup SET rolled_to = $1 WHERE id = 1",
                           now - now % MINUTE)


async def timed(runs: int, query: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = await query()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--active", type=float, default=0.1, help="share of hours a key is used")
    parser.add_argument("--busy", type=int, default=100, help="keys with 48 h of minute rows")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--drop", action="store_true", help="drop the Postgres database after")
    args = parser.parse_args()
    await ensure_database(args.database)
    store = open_store(args.database)
    await store.open()
    rng = random.Random(7)
    now = int(time.time())
    try:
        started = time.perf_counter()
        seeded = [w for w in await store.list_workspaces() if w.name == "seeded"]
        if seeded:  # a run that was kept (no --drop): time the queries again
            workspace = seeded[0]
            found = await store.db.fetch("SELECT key_id FROM api_keys WHERE workspace_id = $1",
                                         workspace.id)
            key_ids = [str(row[0]) for row in found]
            now = int(await store.db.fetchval("SELECT rolled_to FROM usage_rollup WHERE id = 1"))
        else:
            workspace = await store.create_workspace("seeded")
            key_ids = await make_keys(store, workspace.id, args.keys)
            rows, workspace_rows, running = history(key_ids, workspace.id, now, args.days,
                                                    args.active, args.busy, rng)
            await load(store, rows, workspace_rows, running, now)
            print(f"seeded {args.keys} keys, {len(rows)} key buckets, {len(workspace_rows)} "
                  f"workspace buckets in {time.perf_counter() - started:.0f} s")
        count = await store.db.fetchval("SELECT COUNT(*) FROM usage_key_buckets")
        print(f"{args.database}: {len(key_ids)} keys, {count} key buckets")
        usage = store.usage
        end = now - now % HOUR + HOUR
        month, quarter = (end - 30 * DAY, end), (end - end % DAY - 89 * DAY, end - end % DAY + DAY)
        minute_end = now - now % MINUTE + MINUTE
        picks = [rng.choice(key_ids) for _ in range(args.runs)]
        queries: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("key, 30 days by hour", lambda: usage.key_series(picks.pop(), HOUR, *month)),
            ("workspace, 30 days by hour", lambda: usage.workspace_series(workspace.id, HOUR,
                                                                          *month)),
            ("top keys, last 24 hours", lambda: usage.top_keys(workspace.id, end - DAY, end)),
            ("top keys, last 30 days", lambda: usage.top_keys(workspace.id, *month)),
            ("top keys, 90 whole days", lambda: usage.top_keys(workspace.id, *quarter)),
            ("busy key, 24 hours by minute", lambda: usage.key_series(
                key_ids[0], MINUTE, minute_end - DAY, minute_end)),
        ]
        for name, query in queries:
            median, worst, result = await timed(args.runs, query)
            print(f"{name:32} median {median:8.1f} ms  worst {worst:8.1f} ms  ({len(result)} rows)")
    finally:
        await store.close()
        if args.drop and args.database.startswith("postgresql"):
            await drop_database(args.database)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
