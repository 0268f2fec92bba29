"""Everything a gateway process holds open, opened in one place and closed in reverse.

``open_services(config)`` picks the key store backend by the URL scheme of ``database`` (one
registry: the backend brings its change feed too) and the limiter by whether ``redis`` is set,
then opens the cache, the change feed, the usage writer and one upstream pool group per proxy
route.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.config import Config, KeyStoreConfig, LimiterConfig, RouteConfig
from gateway.errors import ConfigError
from gateway.keys.cache import KeyCache
from gateway.keys.model import KeyHasher
from gateway.keys.tenancy_cache import TenancyCache
from gateway.keys.usage import UsageRecorder, UsageRollup
from gateway.limiter.base import RateLimiter
from gateway.limiter.blocked import BlockedAddresses
from gateway.limiter.memory import MemoryRateLimiter
from gateway.limiter.redis import RedisRateLimiter, cluster_limiter
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.postgres import postgres_store
from gateway.store.sqlite import sqlite_store
from gateway.upstream import UpstreamGroup

Section = TypeVar("Section")  # a backend's config section
Backend = TypeVar("Backend")

# The backends by URL scheme: ``database`` picks the key store (it brings its change feed),
# ``redis`` the shared limiter (one Redis, or a Redis Cluster); no ``redis`` is the in-process
# limiter.
STORES: dict[str, Callable[[str, KeyStoreConfig], Store]] = {
    "sqlite": sqlite_store,
    "postgresql": postgres_store,
    "postgres": postgres_store,
}
LIMITERS: dict[str, Callable[[str, LimiterConfig], RateLimiter]] = {
    "redis": RedisRateLimiter,
    "rediss": RedisRateLimiter,
    "unix": RedisRateLimiter,
    "redis+cluster": cluster_limiter,
    "rediss+cluster": cluster_limiter,
}


@dataclass
class Services:
    config: Config
    store: Store
    hasher: KeyHasher
    prefixes: frozenset[str]
    cache: KeyCache
    tenancy: TenancyCache
    limiter: RateLimiter
    local_limiter: MemoryRateLimiter  # the fallback for on_limiter_error: local
    usage: UsageRecorder
    metrics: Metrics
    upstreams: dict[str, UpstreamGroup]
    access_log: AccessLog | None = None  # None: logging.access_log is off
    # addresses past their failed-auth budget, kept across reloads (gateway.limiter.blocked)
    blocked: BlockedAddresses = field(default_factory=BlockedAddresses)


def backend(
    registry: dict[str, Callable[[str, Section], Backend]], config: Config, key: str, url: str,
    what: str,
) -> Callable[[str, Section], Backend]:
    """The factory ``registry`` holds for the scheme of ``url``, the value of config ``key``."""
    scheme = url.partition(":")[0]
    factory = registry.get(scheme)
    if factory is None:
        raise ConfigError(
            f"{config.source}: {key}: the {scheme} {what} is not available in this "
            f"version (supported: {', '.join(sorted(registry))}), got {url!r}"
        )
    return factory


def create_store(config: Config) -> Store:
    factory = backend(STORES, config, "database", config.database, "key store")
    return factory(config.database, config.key_store)


def create_limiter(config: Config) -> RateLimiter:
    if config.redis is None:
        return MemoryRateLimiter()
    factory = backend(LIMITERS, config, "redis", config.redis, "limiter")
    return factory(config.redis, config.limiter)


def upstream_group(route: RouteConfig) -> UpstreamGroup:
    """The pools of ``route``'s targets and their health; ``start()`` it once the loop runs."""
    return UpstreamGroup(route.upstreams, health=route.health, name=route.name)


@contextlib.asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    """Just the key store (migrated), for the CLI."""
    store = create_store(config)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    limiter = create_limiter(config)
    async with contextlib.AsyncExitStack() as stack:
        await limiter.open()  # an unreachable Redis is not fatal: on_limiter_error applies
        stack.push_async_callback(limiter.close)
        store = await stack.enter_async_context(open_store(config))
        cache = KeyCache(store, config.key_cache)
        metrics = Metrics()
        poll = config.key_cache.poll_interval
        feed = store.change_feed(cache, poll_interval=poll, metrics=metrics)
        await feed.start()
        stack.push_async_callback(feed.stop)
        usage = UsageRecorder(store, config.usage, metrics)
        usage.start()
        stack.push_async_callback(usage.stop)
        rollup = UsageRollup(store, config.usage)
        rollup.start()
        stack.push_async_callback(rollup.stop)
        # a verify route (README "Forward auth") has no upstream of its own
        upstreams = {r.name: upstream_group(r) for r in config.routes if r.upstreams}
        for group in upstreams.values():
            stack.push_async_callback(group.close)
            group.start()
        metrics.watch(cache, upstreams, limiter)
        metrics.start()
        stack.push_async_callback(metrics.stop)
        access_log = AccessLog(config) if AccessLog.wanted(config) else None
        if access_log is not None:
            stack.callback(access_log.close)
        yield Services(
            config=config,
            store=store,
            hasher=KeyHasher(config.keys.hash_pepper),
            prefixes=frozenset(config.keys.prefixes.values()),
            cache=cache,
            tenancy=TenancyCache(store),
            limiter=limiter,
            local_limiter=MemoryRateLimiter(),
            usage=usage,
            metrics=metrics,
            upstreams=upstreams,
            access_log=access_log,
        )
