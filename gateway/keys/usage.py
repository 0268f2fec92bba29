"""Usage written behind: counted in memory on the request path, flushed in one batch
(``Store.record_usage``) every ``interval`` seconds and on shutdown.

While the store is down the counts stay in memory and are merged into the next attempt, so an
outage loses nothing as long as the process outlives it. The last flush, on shutdown, gets what
is left of ``drain_timeout``; if the store is still down (or slower than that), those counts are
dropped: logged one line per key (``usage_dropped``, enough to replay them by hand) and counted
in ``gateway_usage_dropped_total`` (README "Security and reliability")."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.errors import StoreUnavailable
from gateway.periodic import Periodic
from gateway.store.usage import UsageDelta

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.store import Store

log = logging.getLogger("gateway.usage")


class UsageRecorder:
    def __init__(self, store: Store, interval: float = 1.0, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self.dropped = 0  # requests whose usage could not be written on shutdown
        self._pending: dict[str, list[int]] = {}  # key_id -> [requests, rate_limited]
        self._last_used: dict[str, float] = {}  # key_id -> time.time(), converted at flush
        self._periodic = Periodic(interval, self._flush_or_retry)

    def used(self, key_id: str) -> None:
        counts = self._pending.get(key_id)
        if counts is None:
            self._pending[key_id] = [1, 0]
        else:
            counts[0] += 1
        self._last_used[key_id] = time.time()

    def rate_limited(self, key_id: str) -> None:
        counts = self._pending.setdefault(key_id, [0, 0])
        counts[1] += 1

    def record_outcome(self, key_id: str, code: str) -> None:
        """One check of the key (the key check API) that ended in ``code``: ``ok`` or the
        error code the request path would have answered.

        Minimal for now: the usage rebuild (outcomes per key and minute, README "Usage")
        replaces this body; until then ``ok`` counts as a request, a refusal by a rate limit
        or quota as rate limited, anything else not at all."""
        if code == "ok":
            self.used(key_id)
        elif code in ("rate_limited", "quota_exceeded"):
            self.rate_limited(key_id)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self, timeout: float | None = None) -> None:
        """The last flush, within ``timeout`` seconds (None: no bound). Twice is harmless."""
        await self._periodic.stop()
        pending, last_used = self._pending, self._last_used
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except (StoreUnavailable, TimeoutError) as exc:
            self._pending, self._last_used = {}, {}
            self._drop(pending, last_used, "key store unavailable"
                       if isinstance(exc, StoreUnavailable) else f"no answer within {timeout} s")

    def _drop(self, pending: dict[str, list[int]], last_used: dict[str, float],
              reason: str) -> None:
        requests = sum(counts[0] for counts in pending.values())
        self.dropped += requests
        if self._metrics is not None:
            self._metrics.usage_dropped.inc(requests)
        log.error("usage of %d requests (%d keys) could not be written: %s",
                  requests, len(pending), reason)
        for key_id, (count, limited) in pending.items():
            log.error("usage_dropped", extra={"key_id": key_id, "requests": count,
                                              "rate_limited": limited,
                                              "last_used": last_used.get(key_id)})

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, last_used = self._pending, self._last_used
        self._pending, self._last_used = {}, {}
        deltas = [
            UsageDelta(key_id, counts[0], counts[1], _as_datetime(last_used.get(key_id)))
            for key_id, counts in pending.items()
        ]
        try:
            await self._store.record_usage(deltas)
        except StoreUnavailable:
            self._merge_back(pending, last_used)
            raise

    def _merge_back(self, pending: dict[str, list[int]], last_used: dict[str, float]) -> None:
        """Keep unflushed counts for the next attempt instead of losing them."""
        for key_id, (requests, limited) in pending.items():
            counts = self._pending.setdefault(key_id, [0, 0])
            counts[0] += requests
            counts[1] += limited
        for key_id, at in last_used.items():
            self._last_used[key_id] = max(at, self._last_used.get(key_id, at))

    async def _flush_or_retry(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable:
            log.warning("usage flush failed; will retry")


def _as_datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
