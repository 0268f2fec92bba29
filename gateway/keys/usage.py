"""Usage written behind (README "Usage over time"): every request that carried a known key is
counted in memory, once, per key, minute and outcome; each node writes its counts every
``usage.flush_interval`` seconds (and on shutdown) in one batch, and rolls whole minutes up into
hours and days every ``usage.rollup_interval`` seconds.

On the request path, ``count`` is a dict lookup and an increment: the minute's bucket of a key is
made by its first request, and the clock is read by a timer at each minute's end, not per
request. A key's ``last_used_at`` is when its bucket was closed (a minute's end or a flush), so it
is late by at most the flush interval.

While the store is down the counts stay in memory, merged into the next attempt, up to
``usage.max_pending_buckets`` buckets (key x minute); past that the oldest minutes are dropped,
logged and counted (``gateway_usage_buckets_dropped_total``). The last flush, on shutdown, gets
what is left of ``drain_timeout``; if the store is still down (or slower than that) those counts
are dropped: logged one line per key (``usage_dropped``, enough to replay them by hand) and
counted in ``gateway_usage_dropped_total`` (README "Security and reliability")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.config import UsageConfig
from gateway.errors import StoreUnavailable
from gateway.http import CLIENT_CLOSED_REQUEST
from gateway.keys.model import OUTCOMES
from gateway.periodic import Periodic
from gateway.store.usage import MinuteCounts, Retention
from gateway.store.usage_top import MINUTE

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.store import Store

log = logging.getLogger("gateway.usage")

(
    SUCCESS,
    UPSTREAM_ERROR,
    RATE_LIMITED,
    QUOTA_EXCEEDED,
    CONCURRENCY_LIMITED,
    FORBIDDEN,
    REJECTED,
    OTHER,
    SHADOW_REFUSED,
) = range(len(OUTCOMES))

# the outcome of a request the gateway refused or could not complete, by error code; any code
# not here (400, 404 project or namespace, 413, 503 ...) is OTHER
OUTCOME_OF_CODE = {
    "upstream_unavailable": UPSTREAM_ERROR,
    "upstream_timeout": UPSTREAM_ERROR,
    "rate_limited": RATE_LIMITED,
    "quota_exceeded": QUOTA_EXCEEDED,
    "credits_exhausted": QUOTA_EXCEEDED,  # README "Credits": a spent allowance, like a quota
    "concurrency_limited": CONCURRENCY_LIMITED,
    "insufficient_permissions": FORBIDDEN,
    "resource_forbidden": FORBIDDEN,
    "origin_not_allowed": FORBIDDEN,
    "ip_not_allowed": FORBIDDEN,
    "revoked_api_key": REJECTED,
    "expired_api_key": REJECTED,
    "disabled_api_key": REJECTED,
}


def outcome_of(code: str | None, status: int) -> int:
    """How a request with a known key ended: its error code, else the status the upstream (or
    a verify route) answered with."""
    if code is not None:
        return OUTCOME_OF_CODE.get(code, OTHER)
    if status == CLIENT_CLOSED_REQUEST:
        return OTHER
    return SUCCESS if status < 500 else UPSTREAM_ERROR


Bucket = dict[str, list[int]]  # key_id -> counts by outcome, for one minute


class UsageRecorder:
    def __init__(
        self,
        store: Store,
        config: UsageConfig | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config = config or UsageConfig()
        self._metrics = metrics
        self._clock = clock
        self.dropped = 0  # requests whose usage was never written
        self._minute = _minute_of(clock())
        self._bucket: Bucket = {}  # this minute's counts
        self._pending: dict[int, Bucket] = {}  # closed minutes (start -> bucket), not written
        self._workspaces: dict[str, str | None] = {}  # key_id -> workspace, of pending keys
        self._last_used: dict[str, float] = {}  # key_id -> when its bucket was closed
        self._periodic = Periodic(config.flush_interval, self._flush_or_retry)
        self._minute_timer: asyncio.TimerHandle | None = None

    def count(self, key_id: str, workspace_id: str | None, outcome: int) -> None:
        """One request of this key ended with ``outcome`` (the request path: no await)."""
        counts = self._bucket.get(key_id)
        if counts is None:
            counts = self._bucket[key_id] = [0] * len(OUTCOMES)
            self._workspaces[key_id] = workspace_id
        counts[outcome] += 1

    def record_outcome(self, key_id: str, workspace_id: str | None, code: str) -> None:
        """One key check (README "Key check API") that ended in ``code``: ``ok``, or the error
        code the request path would have answered; counted as that request would be."""
        self.count(key_id, workspace_id, outcome_of(None if code == "ok" else code, 200))

    def start(self) -> None:
        self._periodic.start()
        self._schedule_minute()

    def _schedule_minute(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._minute + MINUTE - self._clock()
        self._minute_timer = loop.call_later(max(0.0, left), self._next_minute)

    def _next_minute(self) -> None:
        self._close()
        self._minute = max(self._minute + MINUTE, _minute_of(self._clock()))
        self._schedule_minute()

    def _close(self) -> None:
        """This minute's counts so far join the pending ones."""
        bucket = self._bucket
        if not bucket:
            return
        self._bucket = {}
        now = self._clock()
        for key_id, counts in bucket.items():
            if counts[SUCCESS] or counts[UPSTREAM_ERROR]:
                self._last_used[key_id] = now
        _merge(self._pending.setdefault(self._minute, {}), bucket)
        if self._metrics is not None:
            self._metrics.usage_pending.set(self.pending_buckets())

    def pending_buckets(self) -> int:
        return sum(len(bucket) for bucket in self._pending.values()) + len(self._bucket)

    async def stop(self, timeout: float | None = None) -> None:
        """The last flush, within ``timeout`` seconds (None: no bound). Twice is harmless."""
        await self._periodic.stop()
        if self._minute_timer is not None:
            self._minute_timer.cancel()
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except (StoreUnavailable, TimeoutError) as exc:
            pending, self._pending, self._last_used = self._pending, {}, {}
            self._drop(pending, "key store unavailable" if isinstance(exc, StoreUnavailable)
                       else f"no answer within {timeout} s")

    async def flush(self) -> None:
        """Write every count so far in one batch; on StoreUnavailable they are kept for the next
        attempt (up to the bound) and the error raised."""
        self._close()
        if not self._pending:
            return
        pending, workspaces, last_used = self._pending, self._workspaces, self._last_used
        self._pending, self._workspaces, self._last_used = {}, {}, {}
        minutes = [
            MinuteCounts(key_id, workspaces.get(key_id), start, tuple(counts))
            for start, bucket in sorted(pending.items())
            for key_id, counts in bucket.items()
        ]
        started = time.perf_counter()
        try:
            await self._store.record_usage(minutes, _as_datetimes(last_used))
        except (StoreUnavailable, asyncio.CancelledError):
            self._merge_back(pending, workspaces, last_used)  # cancelled: the drain's time ran out
            raise
        finally:
            if self._metrics is not None:
                self._metrics.usage_flush.observe(time.perf_counter() - started)
                self._metrics.usage_pending.set(self.pending_buckets())

    def _merge_back(self, pending: dict[int, Bucket], workspaces: dict[str, str | None],
                    last_used: dict[str, float]) -> None:
        """Keep unwritten counts for the next attempt, the newest up to the bound."""
        for start, bucket in pending.items():
            _merge(self._pending.setdefault(start, {}), bucket)
        for key_id, workspace_id in workspaces.items():
            self._workspaces.setdefault(key_id, workspace_id)
        for key_id, at in last_used.items():
            self._last_used[key_id] = max(at, self._last_used.get(key_id, at))
        over = self.pending_buckets() - self._config.max_pending_buckets
        if over > 0:
            self._drop(self._oldest(over), f"more than {self._config.max_pending_buckets} "
                       "buckets waiting for the key store (usage.max_pending_buckets)")

    def _oldest(self, count: int) -> dict[int, Bucket]:
        """Take whole minutes, oldest first, until at least ``count`` buckets are taken."""
        taken: dict[int, Bucket] = {}
        for start in sorted(self._pending):
            if count <= 0:
                break
            taken[start] = bucket = self._pending.pop(start)
            count -= len(bucket)
        return taken

    def _drop(self, pending: dict[int, Bucket], reason: str) -> None:
        buckets = sum(len(bucket) for bucket in pending.values())
        requests = sum(sum(counts) for bucket in pending.values() for counts in bucket.values())
        self.dropped += requests
        if self._metrics is not None:
            self._metrics.usage_dropped.inc(requests)
            self._metrics.usage_buckets_dropped.inc(buckets)
        log.error("usage of %d requests (%d buckets) could not be written: %s",
                  requests, buckets, reason)
        for start, bucket in sorted(pending.items()):
            for key_id, counts in bucket.items():
                log.error("usage_dropped", extra={
                    "key_id": key_id, "minute": _as_datetime(start).isoformat(),
                    **{name: n for name, n in zip(OUTCOMES, counts, strict=True) if n},
                })

    async def _flush_or_retry(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable:
            log.warning("usage flush failed; will retry")


class UsageRollup:
    """Every ``usage.rollup_interval`` seconds: whole minutes into hours and days, and buckets
    past retention deleted. Every node runs it; the store makes that safe."""

    def __init__(
        self, store: Store, config: UsageConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._clock = clock
        days, hours = 86_400, 3_600
        kept = config.retention
        self._retention = Retention(
            int(kept.minute_hours * hours), int(kept.hour_days * days), int(kept.day_days * days)
        )
        self._periodic = Periodic(config.rollup_interval, self._roll_up_or_retry)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def run(self) -> int:
        return await self._store.usage.roll_up(int(self._clock()), self._retention)

    async def _roll_up_or_retry(self) -> None:
        try:
            await self.run()
        except StoreUnavailable:
            log.warning("usage roll-up failed; will retry")


def _merge(into: Bucket, bucket: Bucket) -> None:
    for key_id, counts in bucket.items():
        total = into.get(key_id)
        if total is None:
            into[key_id] = counts
        else:
            for i, n in enumerate(counts):
                total[i] += n


def _minute_of(timestamp: float) -> int:
    return int(timestamp) - int(timestamp) % MINUTE


def _as_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _as_datetimes(timestamps: dict[str, float]) -> dict[str, datetime]:
    return {key_id: _as_datetime(at) for key_id, at in timestamps.items()}
