"""Postgres specifics beyond the shared contract: migrations under concurrency, NOTIFY from the
mutating transaction, timeouts and error translation."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from gateway.config import KeyStoreConfig
from gateway.errors import StoreUnavailable
from gateway.keys.model import KeyHasher, KeyRecord, display_parts, generate_key, new_id, utcnow
from gateway.keys.notify import NOTIFY_CHANNEL
from gateway.store import MinuteCounts
from gateway.store.migrations import migration_files
from gateway.store.postgres import postgres_store


def make_record(workspace_id: str | None = None, **overrides: object) -> KeyRecord:
    plaintext = generate_key("sk_live")
    key_prefix, hint = display_parts(plaintext)
    fields: dict[str, object] = {
        "key_id": new_id("key"),
        "key_hash": KeyHasher(None)(plaintext),
        "key_prefix": key_prefix,
        "hint": hint,
        "name": "k",
        "workspace_id": workspace_id,
        "project_id": None,
        "user_id": None,
        "created_at": utcnow(),
    }
    fields.update(overrides)
    return KeyRecord(**fields)  # type: ignore[arg-type]


def test_postgres_migration_files() -> None:
    files = migration_files("postgres")
    assert files[0][0] == 1 and files[0][1] == "init"
    assert "CREATE TABLE api_keys" in files[0][2]


def test_bad_urls() -> None:
    for url in ("sqlite:///x.db", "mysql://h/db", "http://x"):
        with pytest.raises(ValueError):
            postgres_store(url, KeyStoreConfig())


async def test_five_nodes_opening_an_empty_database_at_once(pg_url: str) -> None:
    stores = [postgres_store(pg_url, KeyStoreConfig()) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert all([await store.ping() for store in stores])
        assert [await store.migrate() for store in stores] == [[]] * 5
    finally:
        for store in stores:
            await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [
        (v, n) for v, n, _ in migration_files("postgres")
    ]


async def test_migrate_from_empty_then_rerun(pg_url: str) -> None:
    store = postgres_store(pg_url, KeyStoreConfig())
    await store.open()  # applies everything
    try:
        assert await store.migrate() == []
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM schema_migrations")
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> 'schema_migrations'"
        )
        await conn.execute(f"DROP TABLE {', '.join(t['tablename'] for t in tables)} CASCADE")
    finally:
        await conn.close()
    again = postgres_store(pg_url, KeyStoreConfig())
    await again.open()
    try:
        assert await again.migrate() == []
        assert await again.list_workspaces() == []
    finally:
        await again.close()


async def test_every_mutation_notifies_on_commit_only(pg_url: str) -> None:
    store = postgres_store(pg_url, KeyStoreConfig())
    await store.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(pg_url)
    payloads: list[str] = []

    def on_notify(*args: object) -> None:
        payload = str(args[3])  # "<key_hash> <epoch seconds at the change>"
        payloads.append(payload)
        heard.put_nowait(payload.split(" ")[0])

    await listener.add_listener(NOTIFY_CHANNEL, on_notify)
    try:
        ws = await store.create_workspace("w")
        key = await store.create_key(make_record(ws.id), max_active_per_user=10)
        assert await asyncio.wait_for(heard.get(), 2) == key.key_hash
        sent_at = float(payloads[-1].split(" ")[1])
        assert abs(time.time() - sent_at) < 5
        await store.update_key(key.key_id, {"name": "renamed"})
        assert await asyncio.wait_for(heard.get(), 2) == key.key_hash
        new = make_record(ws.id)
        await store.rotate_key(key.key_id, new, utcnow() + timedelta(hours=1), None)
        got = {await asyncio.wait_for(heard.get(), 2) for _ in range(2)}
        assert got == {key.key_hash, new.key_hash}
        await store.record_usage([MinuteCounts.of(new.key_id, ws.id, 0, success=1)])  # not a change
        clash = make_record(ws.id, key_hash=new.key_hash)
        with pytest.raises(Exception):  # noqa: B017 - Conflict; rolled back, so no NOTIFY
            await store.rotate_key(new.key_id, clash, utcnow(), None)
        await asyncio.sleep(0.2)
        assert heard.empty()
    finally:
        await listener.close()
        await store.close()


async def test_command_timeout_is_store_unavailable(pg_url: str) -> None:
    store = postgres_store(pg_url, KeyStoreConfig(timeout=0.2))
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):  # a query that outlives the timeout
            async with store.db.connection() as conn:
                await conn.execute("SELECT pg_sleep(2)")
        loop = asyncio.get_running_loop()
        started = loop.time()
        blocker = await asyncpg.connect(pg_url)
        try:
            await blocker.execute("BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable):
                await store.get_key("key_x")
        finally:
            await blocker.close()
        assert loop.time() - started < 1.5
        assert await store.get_key("key_x") is None
    finally:
        await store.close()


async def test_a_usage_batch_costs_the_same_statements_for_any_number_of_keys(
    pg_url: str,
) -> None:
    store = postgres_store(pg_url, KeyStoreConfig(pool_size=1))  # one connection: we watch it
    await store.open()
    try:
        ws = await store.create_workspace("w")
        keys = [
            await store.create_key(make_record(ws.id), max_active_per_user=10) for _ in range(6)
        ]
        statements: list[str] = []
        async with store.db.connection() as conn:
            conn.add_query_logger(lambda record: statements.append(record.query))

        async def flush(batch: list[KeyRecord]) -> list[str]:
            statements.clear()
            minutes = [MinuteCounts.of(k.key_id, ws.id, 0, success=2, rate_limited=1)
                       for k in [*batch, batch[0]]]
            await store.record_usage(minutes, {k.key_id: utcnow() for k in batch})
            return [q for q in statements if "usage" in q or "api_keys" in q]

        few, many = await flush(keys[:1]), await flush(keys)
        assert len(few) == len(many) <= 5, many  # executemany: one round of each per batch
        expected = {keys[0].key_id: (8, 4), keys[1].key_id: (2, 1), keys[5].key_id: (2, 1)}
        for key_id, counts in expected.items():
            usage = await store.get_usage(key_id)
            assert usage is not None and (usage.requests, usage.rate_limited) == counts
    finally:
        await store.close()


async def test_every_call_is_bounded_by_the_command_timeout(pg_url: str) -> None:
    store = postgres_store(pg_url, KeyStoreConfig(timeout=0.3, pool_size=1))
    await store.open()
    loop = asyncio.get_running_loop()
    try:
        async with store.db.connection(deadline=5):  # the pool's only connection is busy
            started = loop.time()
            with pytest.raises(StoreUnavailable):
                await store.get_key("key_x")
            assert loop.time() - started < 0.6
        assert await store.get_key("key_x") is None  # and it recovers
    finally:
        await store.close()


async def test_a_key_created_during_a_subscription_change_gets_the_new_plan(pg_url: str) -> None:
    """Two nodes: a key insert and a subscription change on the same workspace serialize
    (the change locks the workspace row the key's foreign key shares). Else the change could
    miss the key (its hash not in the change log) while another node caches it with the old
    plan until the cache TTL."""
    node_a, node_b = postgres_store(pg_url, KeyStoreConfig()), postgres_store(pg_url,
                                                                            KeyStoreConfig())
    await node_a.open()
    await node_b.open()
    try:
        workspace = await node_a.create_workspace("acme")
        await node_b.subscriptions.put(workspace.id, "free")

        async def paused(store: Any) -> tuple[asyncio.Event, asyncio.Event]:
            """The store's next change-log append (its transaction's last write) waits."""
            reached, go_on = asyncio.Event(), asyncio.Event()
            append = store.changes.append

            async def pause(tx: Any, hashes: Any, now: Any) -> None:
                await append(tx, hashes, now)
                store.changes.append = append
                reached.set()
                await go_on.wait()

            store.changes.append = pause
            return reached, go_on

        # a key being created (inserted, not committed): the change waits, then logs it too
        reached, go_on = await paused(node_a)
        record = make_record(workspace.id)
        create = asyncio.ensure_future(node_a.create_key(record, max_active_per_user=10))
        await reached.wait()
        put = asyncio.ensure_future(node_b.subscriptions.put(workspace.id, "pro"))
        await asyncio.sleep(0.2)
        assert not put.done()
        go_on.set()
        await create
        _, hashes = await put
        assert record.key_hash in hashes

        # a change being made: the key's insert waits for it, so every read has the new plan
        reached, go_on = await paused(node_b)
        put = asyncio.ensure_future(node_b.subscriptions.put(workspace.id, "team"))
        await reached.wait()
        later = make_record(workspace.id)
        create = asyncio.ensure_future(node_a.create_key(later, max_active_per_user=10))
        await asyncio.sleep(0.2)
        assert not create.done()
        go_on.set()
        await put
        assert (await create).plan == "team"
    finally:
        await node_a.close()
        await node_b.close()
