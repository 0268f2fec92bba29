"""The in-memory key cache: read-through, bounded, with negative entries and single-flight misses.

Design (after Kong's ``kong/cache``): a hit never touches the store; a miss makes exactly one
store query however many requests wait for it; an unknown hash is remembered as a negative
entry for ``negative_ttl``. Negative entries live in their own, smaller LRU so a flood of random
well-formed keys can neither evict real keys nor turn into a flood of store queries.

Invalidation is local-then-broadcast: whoever changes a key calls ``invalidate(hash)`` here and
the change feed (``gateway.keys.invalidation``) does the same on every other node. Positive
entries are re-read after ``ttl`` as a backstop; while the store is down an entry keeps serving
for ``stale_if_error`` seconds past its ttl, then the key gets ``StoreUnavailable`` (503).
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import KeyCacheConfig
from gateway.errors import StoreUnavailable
from gateway.keys.model import KeyRecord
from gateway.keys.single_flight import SingleFlight

if TYPE_CHECKING:
    from gateway.store import Store

Clock = Callable[[], float]


class Miss(enum.Enum):
    MISS = "miss"


MISS = Miss.MISS  # get_nowait: not in the cache, ask the store


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    stale_served: int = 0
    store_errors: int = 0


class KeyCache:
    def __init__(
        self, store: Store, options: KeyCacheConfig, *, clock: Clock = time.monotonic
    ) -> None:
        self._store = store
        self._max = options.max_entries
        self._max_negative = max(1, options.max_entries // 4)
        self._ttl = options.ttl
        self._negative_ttl = options.negative_ttl
        self._stale = options.stale_if_error
        self._clock = clock
        self._positive: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._flights: SingleFlight[str, KeyRecord | None] = SingleFlight()
        self._generation = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)

    async def get(self, key_hash: str) -> KeyRecord | None:
        """The record for ``key_hash``, ``None`` if unknown; ``StoreUnavailable`` if it cannot
        be known (store down and nothing usable cached)."""
        found = self.get_nowait(key_hash)
        return await self.load(key_hash) if found is MISS else found

    def get_nowait(self, key_hash: str) -> KeyRecord | Miss | None:
        """What the cache knows without waiting: the record, ``None`` for a hash remembered as
        unknown, or ``MISS`` when only the store can tell (then ``load`` asks it). The request
        path calls this first, so a hit costs no coroutine."""
        now = self._clock()
        entry = self._positive.get(key_hash)
        if entry is not None and now < entry[1]:
            self._positive.move_to_end(key_hash)
            self.stats.hits += 1
            return entry[0]
        negative = self._negative.get(key_hash)
        if negative is not None and now < negative:
            self.stats.negative_hits += 1
            return None
        return MISS

    async def load(self, key_hash: str) -> KeyRecord | None:
        """Ask the store (one query however many callers miss on this hash at once)."""
        self.stats.misses += 1
        stale = self._positive.get(key_hash)
        return await self._flights.load(key_hash, lambda: self._fetch(key_hash, stale))

    def invalidate(self, key_hash: str) -> None:
        self._positive.pop(key_hash, None)
        self._negative.pop(key_hash, None)
        self._generation += 1

    def invalidate_all(self) -> None:
        self._positive.clear()
        self._negative.clear()
        self._generation += 1

    def cap_ttl(self, ttl: float) -> None:
        """Shorten every entry's remaining life to ``ttl`` (used while invalidations may be
        missed, e.g. the change feed is disconnected)."""
        limit = self._clock() + ttl
        for key_hash, (record, expires) in list(self._positive.items()):
            if expires > limit:
                self._positive[key_hash] = (record, limit)
        for key_hash, expires in list(self._negative.items()):
            if expires > limit:
                self._negative[key_hash] = limit

    async def _fetch(
        self, key_hash: str, stale: tuple[KeyRecord, float] | None
    ) -> KeyRecord | None:
        generation = self._generation
        try:
            record = await self._store.get_key_by_hash(key_hash)
        except StoreUnavailable:
            self.stats.store_errors += 1
            if stale is not None and self._clock() < stale[1] + self._stale:
                self.stats.stale_served += 1
                return stale[0]
            raise
        if generation == self._generation:  # no invalidation raced the read
            self._remember(key_hash, record)
        return record

    def _remember(self, key_hash: str, record: KeyRecord | None) -> None:
        now = self._clock()
        if record is None:
            self._positive.pop(key_hash, None)
            self._negative[key_hash] = now + self._negative_ttl
            self._negative.move_to_end(key_hash)
            if len(self._negative) > self._max_negative:
                self._negative.popitem(last=False)
            return
        self._negative.pop(key_hash, None)
        self._positive[key_hash] = (record, now + self._ttl)
        self._positive.move_to_end(key_hash)
        if len(self._positive) > self._max:
            self._positive.popitem(last=False)
