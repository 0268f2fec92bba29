"""KeyCache against a counting store (the contract suite covers real stores; here we count
queries) and an injected clock."""

import asyncio
from datetime import UTC, datetime

import pytest

from gateway.config import KeyCacheConfig
from gateway.errors import StoreUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.model import KeyRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.queries = 0
        self.down = False
        self.delay = 0.0

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.queries += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("down")
        return self.records.get(key_hash)


def record(key_hash: str) -> KeyRecord:
    return KeyRecord(
        key_id="key_" + key_hash, key_hash=key_hash, key_prefix="sk_live_abcd", hint="wxyz",
        name="k", workspace_id="ws_1", project_id="proj_1", user_id=None,
        created_at=datetime.now(UTC),
    )


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_cache(store: CountingStore, clock: Clock, **kwargs: float) -> KeyCache:
    options = {"ttl": 60.0, "negative_ttl": 30.0, "stale_if_error": 300.0, **kwargs}
    config = KeyCacheConfig(max_entries=8, **options)
    return KeyCache(store, config, clock=clock)  # type: ignore[arg-type]


async def test_hit_does_not_query(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    cache = make_cache(store, clock)
    for _ in range(100):
        assert (await cache.get("h1")) == store.records["h1"]
    assert store.queries == 1


async def test_unknown_hashes_are_remembered(store: CountingStore, clock: Clock) -> None:
    cache = make_cache(store, clock)
    for _ in range(100):
        assert await cache.get("nope") is None
    assert store.queries == 1
    clock.now += 31
    assert await cache.get("nope") is None
    assert store.queries == 2


async def test_concurrent_misses_make_one_query(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    store.delay = 0.01
    cache = make_cache(store, clock)
    results = await asyncio.gather(*(cache.get("h1") for _ in range(50)))
    assert all(r is not None for r in results)
    assert store.queries == 1


async def test_cancelled_waiter_does_not_break_others(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    store.delay = 0.02
    cache = make_cache(store, clock)
    first = asyncio.ensure_future(cache.get("h1"))
    second = asyncio.ensure_future(cache.get("h1"))
    await asyncio.sleep(0.005)
    first.cancel()
    assert (await second) is not None


async def test_flood_of_unknown_keys_keeps_real_keys(store: CountingStore, clock: Clock) -> None:
    store.records["real"] = record("real")
    cache = make_cache(store, clock)
    await cache.get("real")
    for i in range(1000):
        await cache.get(f"random{i}")
    queries = store.queries
    await cache.get("real")
    assert store.queries == queries  # still cached: negatives live in their own LRU
    assert len(cache) <= 8 + 2


async def test_invalidate_drops_entry(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    cache = make_cache(store, clock)
    await cache.get("h1")
    store.records["h1"] = record("h1").with_changes(status="revoked")
    cache.invalidate("h1")
    got = await cache.get("h1")
    assert got is not None and got.status == "revoked"


async def test_invalidate_also_drops_negative_entries(store: CountingStore, clock: Clock) -> None:
    cache = make_cache(store, clock)
    assert await cache.get("new") is None
    store.records["new"] = record("new")
    cache.invalidate("new")
    assert await cache.get("new") is not None


async def test_store_down_serves_stale_within_window(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    cache = make_cache(store, clock)
    await cache.get("h1")
    store.down = True
    clock.now += 61  # ttl passed: a refresh is attempted and fails
    assert await cache.get("h1") is not None
    clock.now += 300  # past ttl + stale_if_error
    with pytest.raises(StoreUnavailable):
        await cache.get("h1")


async def test_store_down_uncached_raises(store: CountingStore, clock: Clock) -> None:
    store.down = True
    cache = make_cache(store, clock)
    with pytest.raises(StoreUnavailable):
        await cache.get("h1")


async def test_cap_ttl(store: CountingStore, clock: Clock) -> None:
    store.records["h1"] = record("h1")
    cache = make_cache(store, clock)
    await cache.get("h1")
    cache.cap_ttl(5)
    clock.now += 6
    await cache.get("h1")
    assert store.queries == 2
