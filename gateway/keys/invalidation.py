"""Cache invalidation across processes: each node follows the store's key changes and drops the
changed hashes from its own cache (invalidate-local-then-broadcast, after Kong).

``ChangeFeed`` is the contract; the store's backend picks the implementation
(``Store.change_feed``):

- ``ChangeFeedPoller`` (here) polls the change log — SQLite, where another process (the CLI)
  may write the same file;
- ``ChangeFeedListener`` (``notify.py``) hears Postgres NOTIFY, sent at commit.

While a feed cannot be followed, every cached entry's life is capped at ``fallback_ttl`` so a
missed change cannot keep a revoked key alive.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from gateway.errors import StoreUnavailable
from gateway.periodic import Periodic

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.store.feed import ChangeLog

log = logging.getLogger("gateway.invalidation")


class ChangeFeed(Protocol):
    async def start(self) -> None:
        """Follow from now on; a store that cannot be reached is not an error (the feed keeps
        trying, with the cache's ttl capped)."""

    async def stop(self) -> None: ...


class ChangeFeedPoller:
    def __init__(
        self,
        changes: ChangeLog,
        cache: KeyCache,
        *,
        interval: float,
        fallback_ttl: float = 5.0,
    ) -> None:
        self._changes = changes
        self._cache = cache
        self._fallback_ttl = fallback_ttl
        self._seq = 0
        self._periodic = Periodic(interval, self._poll)
        self._healthy = True

    async def start(self) -> None:
        try:
            self._seq = await self._changes.last_seq()
        except StoreUnavailable:
            self._healthy = False
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def poll_once(self) -> int:
        changes = await self._changes.since(self._seq)
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
