"""In-process limiter: a sliding window per bucket, for one node (the embedded default, and
the ``local`` fallback while Redis is unreachable).

Quotas are two counters per workspace (this UTC day's and month's), checked with everything
else before anything is counted, so a refused request spends nothing. Credits are a live balance
per budget, synced from the key's stored ``Credits`` (``_balance``) and spent last.

A bucket is kept by its route's algorithm (README "Algorithms"): ``Log``, the admission times of
the last ``window`` seconds in an array, so the count in any window never exceeds the limit and a
client under its limit is never refused (memory O(limit) floats, 8 bytes each); or ``Counter``,
two fixed windows' counts (constant memory, approximate). Idle buckets are dropped by ``sweep``.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable

from gateway.keys.model import Credits
from gateway.limiter.base import (
    SLIDING_LOG,
    CreditState,
    Decision,
    LimiterStats,
    QuotaAsk,
    QuotaState,
    QuotaUsage,
    Window,
    counter_used,
    counter_wait,
    nearest_quota,
    periods,
)

Clock = Callable[[], float]
LEASE = "local"  # in-process slots are counted, not named


class Log:
    """The exact sliding log: the admission times of the last ``window`` seconds, oldest first,
    in an ``array`` of doubles from ``start`` on. Not a deque of floats: a generous limit keeps
    hundreds of thousands of times (60 s at 10k requests/s), and an array holds them in 8 bytes
    each, outside the garbage collector's reach (a deque is a container every full collection
    walks, item by item), found by bisection rather than one pop per expired time."""

    __slots__ = ("entries", "start", "window")

    def __init__(self, window: float) -> None:
        self.entries = array("d")
        self.start = 0  # entries before it have left the window
        self.window = window

    def used(self, now: float) -> int:
        entries = self.entries
        start = bisect_right(entries, now - self.window, self.start)
        end = len(entries)
        if start > 4096 and start * 2 > end:  # drop what left the window: amortised O(1)
            del entries[:start]
            end -= start
            start = 0
        self.start = start
        return end - start

    def wait(self, limit: int, now: float) -> float:
        """Seconds until one more fits (it does not now): the ``limit``-th newest leaves."""
        entries = self.entries
        return entries[len(entries) - limit] + self.window - now

    def reset(self, now: float) -> float:
        entries = self.entries
        return entries[self.start] + self.window - now if len(entries) > self.start \
            else self.window

    def add(self, now: float) -> None:
        self.entries.append(now)

    def is_idle(self, now: float) -> bool:
        entries = self.entries
        return len(entries) <= self.start or entries[-1] <= now - self.window


class Counter:
    """The sliding counter: the counts of the current fixed window (``number``: now // window)
    and the one before it."""

    __slots__ = ("current", "number", "previous", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.number = 0
        self.current = 0
        self.previous = 0

    def used(self, now: float) -> float:
        number = int(now // self.window)
        if number != self.number:
            self.previous = self.current if number == self.number + 1 else 0
            self.current = 0
            self.number = number
        return counter_used(self.previous, self.current, self._left(now), self.window)

    def wait(self, limit: int, now: float) -> float:
        return counter_wait(self.previous, self.current, self._left(now), self.window, limit)

    def reset(self, now: float) -> float:
        """Until the current fixed window ends (then its count starts to lose weight)."""
        return self._left(now)

    def add(self, now: float) -> None:
        self.current += 1

    def is_idle(self, now: float) -> bool:
        return int(now // self.window) > self.number + 1

    def _left(self, now: float) -> float:
        return (self.number + 1) * self.window - now


KINDS: dict[str, type[Log] | type[Counter]] = {"sliding_log": Log, "sliding_counter": Counter}


class MemoryRateLimiter:
    def __init__(
        self, clock: Clock = time.monotonic, sweep_every: int = 10_000, wall: Clock = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall  # quotas follow the UTC calendar
        self._buckets: dict[str, Log | Counter] = {}
        self._in_flight: dict[str, int] = {}  # budget -> slots held
        self._quotas: dict[str, list[int]] = {}  # workspace -> [day, count, month, count]
        # budget -> [set_version, added, balance, period]: README "Credits"
        self._credits: dict[str, list[int]] = {}
        # the current UTC day and month, and the epoch seconds they end: recomputed once a day
        self._period: tuple[int, int, float, float] = (-1, -1, 0.0, 0.0)
        self._sweep_every = sweep_every
        self._hits = 0

    async def open(self) -> None:
        return None  # in-process: nothing to connect to

    async def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> Decision:
        return self.admit_nowait(budget, scope, limit, window, max_in_flight, also, quota,
                                 algorithm, credits, cost)

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> Decision:
        """Every check first, then every count: one step, as nothing else runs meanwhile."""
        if credits is not None:
            return self._admit_spending(budget, scope, limit, window, max_in_flight, also, quota,
                                        algorithm, credits, cost)
        now = self._clock()
        bucket = self._bucket(f"{budget}:{scope}", window, algorithm)
        self._hits += 1
        if self._hits % self._sweep_every == 0:
            self.sweep()
        used = bucket.used(now)
        if used + 1 > limit:
            return _refused(bucket, limit, now)
        shown, shown_limit, shown_used = bucket, limit, used
        second = None
        if also is not None:
            second = self._bucket(f"{budget}:{also.scope}", also.window, also.algorithm)
            second_used = second.used(now)
            if second_used + 1 > also.limit:
                return _refused(second, also.limit, now)
            if also.limit - second_used < limit - used:
                shown, shown_limit, shown_used = second, also.limit, second_used
        held = 0
        if max_in_flight is not None:
            held = self._in_flight.get(budget, 0)
            if held >= max_in_flight:
                remaining = shown_limit - math.ceil(shown_used)
                return Decision(False, shown_limit, remaining, shown.reset(now), 1.0, None, True)
        state = None
        if quota is not None:
            state, over = self._spend(quota)
            if over:
                remaining = shown_limit - math.ceil(shown_used)
                return Decision(False, shown_limit, remaining, shown.reset(now), over, None,
                                False, state, True)
        lease = None
        if max_in_flight is not None:
            self._in_flight[budget] = held + 1
            lease = LEASE
        bucket.add(now)
        if second is not None:
            second.add(now)
        remaining = shown_limit - math.ceil(shown_used + 1)
        return Decision(True, shown_limit, remaining, shown.reset(now), 0.0, lease, False, state)

    def _admit_spending(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None, quota: QuotaAsk | None, algorithm: str, credits: Credits,
        cost: int,
    ) -> Decision:
        """``admit`` for a key with credits: checked first (a short balance is refused with
        nothing counted, whatever else would have refused), spent when everything else
        admits."""
        balance, refill_in = self._balance(budget, credits)
        if balance[2] < cost:
            shown = self._peek(budget, scope, limit, window, algorithm)
            return shown._replace(allowed=False, retry_after=refill_in, credits=balance[2],
                                  no_credits=True)
        decision = self.admit_nowait(budget, scope, limit, window, max_in_flight, also, quota,
                                     algorithm)
        if decision.allowed:
            balance[2] -= cost
        return Decision(*decision[:9], balance[2])  # not _replace: this runs per request

    async def quota_usage(self, workspace: str) -> QuotaUsage:
        counts, (day_reset, month_reset) = self._quota(workspace)
        return QuotaUsage(counts[1], counts[3], day_reset, month_reset)

    def _quota(self, workspace: str) -> tuple[list[int], tuple[float, float]]:
        """The workspace's counters of the current UTC day and month, and their resets."""
        now = self._wall()
        day, month, day_end, month_end = self._calendar(now)
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

    def _balance(self, budget: str, credits: Credits) -> tuple[list[int], float]:
        """The budget's [set_version, added, balance, period] brought up to ``credits``: a
        newer set starts again from its value, adds not yet applied are, and a new refill
        period sets the balance to the refill amount; and the seconds to the next refill."""
        state = self._credits.get(budget)
        if state is None or state[0] < credits.set_version:
            state = self._credits[budget] = [credits.set_version, credits.added,
                                             credits.configured, credits.set_period]
        elif state[0] == credits.set_version and state[1] < credits.added:
            state[2] += credits.added - state[1]
            state[1] = credits.added
        interval = credits.refill_interval
        if interval is None:
            return state, 0.0
        now = self._wall()
        day, month, day_end, month_end = self._calendar(now)
        period, ends = (day, day_end) if interval == "day" else (month, month_end)
        if state[3] < period:
            state[2], state[3] = credits.refill_amount or 0, period
        return state, ends - now

    def _calendar(self, now: float) -> tuple[int, int, float, float]:
        """The current UTC day and month, and the epoch seconds they end (recomputed once a
        day)."""
        if now >= self._period[2]:
            day, month, day_left, month_left = periods(now)
            self._period = (day, month, now + day_left, now + month_left)
        return self._period

    async def credits_left(self, budget: str, credits: Credits) -> CreditState:
        state, refill_in = self._balance(budget, credits)
        return CreditState(state[2], refill_in)

    async def peek(self, budget: str, scope: str, limit: int, window: float,
                   algorithm: str = SLIDING_LOG) -> Decision:
        return self._peek(budget, scope, limit, window, algorithm)

    def _peek(self, budget: str, scope: str, limit: int, window: float,
              algorithm: str) -> Decision:
        now = self._clock()
        bucket = self._bucket(f"{budget}:{scope}", window, algorithm)
        remaining = max(0, limit - math.ceil(bucket.used(now)))
        reset = bucket.reset(now)
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
        for name, bucket in list(self._buckets.items()):
            if bucket.is_idle(now):
                del self._buckets[name]
        month = periods(self._wall())[1]
        for workspace, counts in list(self._quotas.items()):
            if counts[2] != month:
                del self._quotas[workspace]

    async def ping(self) -> None:
        return None  # in-process: always able to decide

    async def close(self) -> None:
        self._buckets.clear()
        self._quotas.clear()
        self._credits.clear()

    def stats(self) -> LimiterStats | None:
        return None  # decides in-process: no round trips to count

    def _bucket(self, name: str, window: float, algorithm: str) -> Log | Counter:
        bucket = self._buckets.get(name)
        if bucket is None or type(bucket) is not KINDS[algorithm]:  # new, or a reload's switch
            bucket = self._buckets[name] = KINDS[algorithm](window)
        elif bucket.window != window:  # a reload changed the window: the admissions still count
            bucket.window = window
        return bucket


def _refused(bucket: Log | Counter, limit: int, now: float) -> Decision:
    wait = bucket.wait(limit, now)
    return Decision(False, limit, 0, wait, wait)
