"""In-process limiter: an exact sliding log per bucket, for one node (the embedded default, and
the ``local`` fallback while Redis is unreachable).

Quotas are two counters per workspace (this UTC day's and month's), checked with everything
else before anything is counted, so a refused request spends nothing.

Each bucket keeps the admission times of the last ``window`` seconds in a deque, so the count in
any window never exceeds the limit and a client under its limit is never refused. Memory per
active bucket is O(limit) floats (8 bytes each); idle buckets are dropped by ``sweep``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gateway.limiter.base import (
    Decision,
    LimiterStats,
    QuotaAsk,
    QuotaState,
    QuotaUsage,
    Window,
    nearest_quota,
    periods,
)

Clock = Callable[[], float]
LEASE = "local"  # in-process slots are counted, not named


class MemoryRateLimiter:
    def __init__(
        self, clock: Clock = time.monotonic, sweep_every: int = 10_000, wall: Clock = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall  # quotas follow the UTC calendar
        self._logs: dict[str, tuple[deque[float], float]] = {}  # bucket -> (log, window)
        self._in_flight: dict[str, int] = {}  # budget -> slots held
        self._quotas: dict[str, list[int]] = {}  # workspace -> [day, count, month, count]
        # the current UTC day and month, and the epoch seconds they end: recomputed once a day
        self._period: tuple[int, int, float, float] = (-1, -1, 0.0, 0.0)
        self._sweep_every = sweep_every
        self._hits = 0

    async def open(self) -> None:
        return None  # in-process: nothing to connect to

    async def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
    ) -> Decision:
        return self.admit_nowait(budget, scope, limit, window, max_in_flight, also, quota)

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
    ) -> Decision:
        """Every check first, then every count: one step, as nothing else runs meanwhile."""
        now = self._clock()
        log = self._log(f"{budget}:{scope}", window, now)
        self._hits += 1
        if self._hits % self._sweep_every == 0:
            self.sweep()
        if len(log) >= limit:
            return _refused(log, limit, window, now)
        nearest = (log, limit, window)
        if also is not None:
            second = self._log(f"{budget}:{also.scope}", also.window, now)
            if len(second) >= also.limit:
                return _refused(second, also.limit, also.window, now)
            if also.limit - len(second) < limit - len(log):
                nearest = (second, also.limit, also.window)
        shown, shown_limit, shown_window = nearest
        held = 0
        if max_in_flight is not None:
            held = self._in_flight.get(budget, 0)
            if held >= max_in_flight:
                reset = shown[0] + shown_window - now if shown else shown_window
                remaining = shown_limit - len(shown)
                return Decision(False, shown_limit, remaining, reset, 1.0, None, True)
        state = None
        if quota is not None:
            state, over = self._spend(quota)
            if over:
                reset = shown[0] + shown_window - now if shown else shown_window
                remaining = shown_limit - len(shown)
                return Decision(
                    False, shown_limit, remaining, reset, over, None, False, state, True
                )
        lease = None
        if max_in_flight is not None:
            self._in_flight[budget] = held + 1
            lease = LEASE
        log.append(now)
        if also is not None:
            self._logs[f"{budget}:{also.scope}"][0].append(now)
        remaining = shown_limit - len(shown)
        return Decision(True, shown_limit, remaining, shown[0] + shown_window - now, 0.0, lease,
                        False, state)

    async def quota_usage(self, workspace: str) -> QuotaUsage:
        counts, (day_reset, month_reset) = self._quota(workspace)
        return QuotaUsage(counts[1], counts[3], day_reset, month_reset)

    def _quota(self, workspace: str) -> tuple[list[int], tuple[float, float]]:
        """The workspace's counters of the current UTC day and month, and their resets."""
        now = self._wall()
        day, month, day_end, month_end = self._period
        if now >= day_end:
            day, month, day_left, month_left = periods(now)
            day_end, month_end = now + day_left, now + month_left
            self._period = (day, month, day_end, month_end)
        counts = self._quotas.get(workspace)
        if counts is None:
            counts = self._quotas[workspace] = [day, 0, month, 0]
        if counts[0] != day:
            counts[0:2] = [day, 0]
        if counts[2] != month:
            counts[2:4] = [month, 0]
        return counts, (day_end - now, month_end - now)

    def _spend(self, quota: QuotaAsk) -> tuple[QuotaState | None, float]:
        """Count one request against the workspace's day and month unless either is spent:
        (the quota nearer to running out, 0.0), or with nothing counted, the seconds until the
        spent period ends (the later one if both are)."""
        counts, (day_reset, month_reset) = self._quota(quota.workspace)
        day, month = counts[1], counts[3]
        over = 0.0
        if quota.day and day >= quota.day:
            over = day_reset
        if quota.month and month >= quota.month:
            over = month_reset
        if not over:
            day = counts[1] = day + 1
            month = counts[3] = month + 1
        return nearest_quota(quota, day, month, day_reset, month_reset), over

    async def peek(self, budget: str, scope: str, limit: int, window: float) -> Decision:
        now = self._clock()
        log = self._log(f"{budget}:{scope}", window, now)
        remaining = max(0, limit - len(log))
        reset = log[0] + window - now if log else window
        return Decision(remaining > 0, limit, remaining, reset, 0.0 if remaining else reset)

    def release(self, budget: str, lease: str) -> None:
        held = self._in_flight.get(budget, 0) - 1
        if held > 0:
            self._in_flight[budget] = held
        else:
            self._in_flight.pop(budget, None)

    def sweep(self) -> None:
        """Drop buckets with nothing left in their window."""
        now = self._clock()
        for bucket, (log, window) in list(self._logs.items()):
            if not log or log[-1] <= now - window:
                del self._logs[bucket]
        month = periods(self._wall())[1]
        for workspace, counts in list(self._quotas.items()):
            if counts[2] != month:
                del self._quotas[workspace]

    async def ping(self) -> None:
        return None  # in-process: always able to decide

    async def close(self) -> None:
        self._logs.clear()
        self._quotas.clear()

    def stats(self) -> LimiterStats | None:
        return None  # decides in-process: no round trips to count

    def _log(self, bucket: str, window: float, now: float) -> deque[float]:
        entry = self._logs.get(bucket)
        if entry is None:
            entry = (deque(), window)
            self._logs[bucket] = entry
        elif entry[1] != window:  # a reload changed the window: the admissions still count
            entry = (entry[0], window)
            self._logs[bucket] = entry
        log = entry[0]
        cutoff = now - window
        while log and log[0] <= cutoff:
            log.popleft()
        return log


def _refused(log: deque[float], limit: int, window: float, now: float) -> Decision:
    wait = log[len(log) - limit] + window - now
    return Decision(False, limit, 0, wait, wait)
