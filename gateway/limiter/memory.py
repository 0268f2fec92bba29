"""In-process limiter: an exact sliding log per bucket, for one node (the embedded default, and
the ``local`` fallback while Redis is unreachable).

Each bucket keeps the admission times of the last ``window`` seconds in a deque, so the count in
any window never exceeds the limit and a client under its limit is never refused. Memory per
active bucket is O(limit) floats (8 bytes each); idle buckets are dropped by ``sweep``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gateway.limiter.base import Decision, LimiterStats

Clock = Callable[[], float]
LEASE = "local"  # in-process slots are counted, not named


class MemoryRateLimiter:
    def __init__(self, clock: Clock = time.monotonic, sweep_every: int = 10_000) -> None:
        self._clock = clock
        self._logs: dict[str, tuple[deque[float], float]] = {}  # bucket -> (log, window)
        self._in_flight: dict[str, int] = {}  # budget -> slots held
        self._sweep_every = sweep_every
        self._hits = 0

    async def open(self) -> None:
        return None  # in-process: nothing to connect to

    async def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None
    ) -> Decision:
        return self.admit_nowait(budget, scope, limit, window, max_in_flight)

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None
    ) -> Decision:
        now = self._clock()
        log = self._log(f"{budget}:{scope}", window, now)
        self._hits += 1
        if self._hits % self._sweep_every == 0:
            self.sweep()
        if len(log) >= limit:
            wait = log[len(log) - limit] + window - now
            return Decision(False, limit, 0, wait, wait)
        lease = None
        if max_in_flight is not None:
            held = self._in_flight.get(budget, 0)
            if held >= max_in_flight:
                reset = log[0] + window - now if log else window
                return Decision(False, limit, limit - len(log), reset, 1.0, None, True)
            self._in_flight[budget] = held + 1
            lease = LEASE
        log.append(now)
        return Decision(True, limit, limit - len(log), log[0] + window - now, 0.0, lease)

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

    async def ping(self) -> None:
        return None  # in-process: always able to decide

    async def close(self) -> None:
        self._logs.clear()

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
