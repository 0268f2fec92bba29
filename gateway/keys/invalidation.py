"""Cache invalidation across processes: each node follows the store's change feed and drops
the changed hashes from its own cache (invalidate-local-then-broadcast, after Kong).

``ChangeFeedPoller`` polls ``KeyStore.changes_since`` — the embedded default, where another
process (the CLI) may write the same SQLite file. While the feed cannot be read, every cached
entry's life is capped at ``fallback_ttl`` so a missed change cannot keep a revoked key alive.
"""

from __future__ import annotations

import logging

from gateway.errors import StoreUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.store import KeyStore
from gateway.periodic import Periodic

log = logging.getLogger("gateway.invalidation")


class ChangeFeedPoller:
    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        *,
        interval: float,
        fallback_ttl: float = 5.0,
    ) -> None:
        self._store = store
        self._cache = cache
        self._fallback_ttl = fallback_ttl
        self._seq = 0
        self._periodic = Periodic(interval, self._poll)
        self._healthy = True

    async def start(self) -> None:
        try:
            self._seq = await self._store.last_change_seq()
        except StoreUnavailable:
            self._healthy = False
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def poll_once(self) -> int:
        changes = await self._store.changes_since(self._seq)
        for change in changes:
            self._cache.invalidate(change.key_hash)
            self._seq = max(self._seq, change.seq)
        return len(changes)

    async def _poll(self) -> None:
        try:
            await self.poll_once()
        except StoreUnavailable:
            if self._healthy:
                log.warning("change feed unreadable; capping cache ttl")
            self._healthy = False
            self._cache.cap_ttl(self._fallback_ttl)
            return
        self._healthy = True
