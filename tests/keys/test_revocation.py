"""ChangeFeedListener: a committed key change evicts the cached entry; a lost listener caps the
cache ttl, reconnects, and catches up from the change log once it is back (the rest of the
cache stays)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]

from gateway.config import KeyCacheConfig, KeyStoreConfig
from gateway.keys.cache import KeyCache
from gateway.keys.model import utcnow
from gateway.keys.notify import ChangeFeedListener
from gateway.store.postgres import postgres_store
from tests.keys.test_postgres import make_record

CONNECT_TIMEOUT = KeyStoreConfig().connect_timeout


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_revocation_evicts_and_listener_loss_caps_ttl(pg_url: str) -> None:
    writer = postgres_store(pg_url, KeyStoreConfig())  # "another node"
    reader = postgres_store(pg_url, KeyStoreConfig())
    await writer.open()
    await reader.open()
    clock = [1000.0]
    cache = KeyCache(reader, KeyCacheConfig(ttl=60.0), clock=lambda: clock[0])
    invalidator = ChangeFeedListener(
        pg_url, cache, connect_timeout=CONNECT_TIMEOUT, min_backoff=0.01, max_backoff=0.05,
        keepalive=0.05, catch_up_slack=0.0,
    )
    await invalidator.start()
    try:
        assert invalidator.connected
        ws = await writer.create_workspace("w")
        key = await writer.create_key(make_record(ws.id), max_active_per_user=10)
        # the creation is a change too: once heard, it cannot evict what is cached next
        await until(lambda: invalidator.notifications >= 1)
        assert (await cache.get(key.key_hash)) == key
        assert len(cache) == 1

        await writer.update_key(key.key_id, {"status": "revoked", "revoked_at": utcnow()})
        await until(lambda: len(cache) == 0)
        cached = await cache.get(key.key_hash)
        assert cached is not None and cached.status == "revoked"

        # the listener's connection dies: ttl capped at 5 s, then it reconnects
        await asyncio.sleep(0.2)  # keep-alives have read the change log's mark
        assert await kill_listener(pg_url) == 1
        await until(lambda: invalidator.reconnects == 1)
        assert invalidator.connected
        assert len(cache) == 1  # nothing changed meanwhile: nothing dropped

        # while down, entries live at most fallback_ttl
        await cache.get(key.key_hash)
        invalidator._down(None)
        clock[0] += 5.01
        assert cache._positive[key.key_hash][1] <= clock[0]

        # and it still hears changes after reconnecting
        other = await writer.create_key(make_record(ws.id), max_active_per_user=10)
        await cache.get(other.key_hash)
        await writer.update_key(other.key_id, {"name": "renamed"})
        await until(lambda: other.key_hash not in cache._positive)
    finally:
        await invalidator.stop()
        await reader.close()
        await writer.close()


async def kill_listener(pg_url: str) -> int:
    """Terminate this database's listener connections (only this test's database)."""
    admin = await asyncpg.connect(pg_url)
    try:
        return int(await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'gateway-listener' AND datname = current_database()"
        ))
    finally:
        await admin.close()


async def test_a_reconnect_catches_up_on_missed_changes_and_keeps_the_rest(
    pg_url: str, unused_tcp_port: int
) -> None:
    """A change committed while the listener is away is caught up from the change log; the
    other cached keys stay cached (no cold start against a database that just came back)."""
    writer = postgres_store(pg_url, KeyStoreConfig())
    reader = postgres_store(pg_url, KeyStoreConfig())
    await writer.open()
    await reader.open()
    cache = KeyCache(reader, KeyCacheConfig(ttl=60.0))
    invalidator = ChangeFeedListener(
        pg_url, cache, connect_timeout=CONNECT_TIMEOUT, keepalive=0.1, min_backoff=0.05,
        max_backoff=0.2, catch_up_slack=0.2,
    )
    await invalidator.start()
    try:
        ws = await writer.create_workspace("w")
        keys = [await writer.create_key(make_record(ws.id), max_active_per_user=10)
                for _ in range(5)]
        for key in keys:
            await cache.get(key.key_hash)
        created = time.time()
        # keep-alives read the change log's mark (the database's clock, this host's): wait for
        # one past the keys' creation plus the catch-up slack, so only later changes catch up
        await until(lambda: invalidator._mark is not None and invalidator._mark[1] > created + 0.3)
        invalidator._url = f"postgresql://127.0.0.1:{unused_tcp_port}/x"  # it cannot come back
        assert await kill_listener(pg_url) == 1
        await until(lambda: not invalidator.connected)
        # committed while nobody listens: its message is lost
        await writer.update_key(keys[0].key_id, {"status": "revoked", "revoked_at": utcnow()})
        invalidator._url = pg_url  # now it can
        await until(lambda: invalidator.reconnects == 1)
        assert invalidator.caught_up == 1
        assert keys[0].key_hash not in cache._positive  # caught up: evicted
        assert all(k.key_hash in cache._positive for k in keys[1:])  # the rest stays cached
        revoked = await cache.get(keys[0].key_hash)
        assert revoked is not None and revoked.status == "revoked"
    finally:
        await invalidator.stop()
        await reader.close()
        await writer.close()


async def test_start_with_postgres_down_keeps_trying(unused_tcp_port: int) -> None:
    store = postgres_store(
        f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x", KeyStoreConfig()
    )
    cache = KeyCache(store, KeyCacheConfig())
    invalidator = ChangeFeedListener(store.db.url, cache, connect_timeout=0.5, max_backoff=0.05)
    await invalidator.start()  # does not raise
    try:
        assert not invalidator.connected
        await asyncio.sleep(0.2)
        assert invalidator._task is not None and not invalidator._task.done()
    finally:
        await invalidator.stop()
