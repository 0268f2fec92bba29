"""The rate-limiter contract. Implementations live beside it: ``memory.py`` (in-process, the
embedded default) and ``redis.py`` (shared by every gateway process and node). The pipeline
stage never knows which it has; backends raise ``LimiterUnavailable`` for their own failures.

One call decides a request: ``admit`` checks the key's sliding window and, when the route caps
requests in flight, takes a concurrency lease in the same step (one Redis round trip).

Quotas count a workspace's admitted requests per UTC calendar day and month, in the same call.
So do a key's credits (README "Credits"): the limiter holds each budget's live balance, made
from the key's stored ``Credits`` (the last set, the adds since, the refill) and what it spent.

Two algorithms (README "Algorithms"): ``sliding_log``, the exact log of admission times, and
``sliding_counter``, two fixed windows weighted by the elapsed fraction of the current one
(constant memory, approximate). ``counter_used`` and ``counter_wait`` are the counter's
arithmetic, written once here and once in Redis's script.

Names: a *budget* is what one key spends — the first key of its rotation chain, so a rotated key
and its successor share everything — and a *scope* splits its rate limit per route ("" for the
key-wide budget). Concurrency leases belong to the budget alone. A client address has budgets
too (``ADDRESS_BUDGET``, ``FAILED_AUTH_BUDGET``): the contract does not tell them apart.
"""

from __future__ import annotations

import calendar
import functools
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from gateway.keys.model import Credits

SLIDING_LOG, SLIDING_COUNTER = "sliding_log", "sliding_counter"
# Budgets that are not a key's (key ids are ``key_…``, so these never collide): a client
# address's budget on an ``auth: none`` route, and its failed authentications (README
# "Unauthenticated traffic").
ADDRESS_BUDGET = "ip:"
FAILED_AUTH_BUDGET = "fa:"


class Window(NamedTuple):
    """A second sliding window of the same budget, decided with the first (a route's own
    ``rate_limit``): ``scope`` names it."""

    scope: str
    limit: int
    window: float
    algorithm: str = SLIDING_LOG


class QuotaAsk(NamedTuple):
    """A workspace's quotas this request spends from: admitted requests per UTC calendar day
    and month (0: no quota for that period; both periods are counted either way)."""

    workspace: str
    day: int
    month: int


class QuotaState(NamedTuple):
    """The quota nearest to running out, after this decision (for ``X-Quota-*``)."""

    limit: int
    remaining: int
    reset: float  # seconds until its period ends


class QuotaUsage(NamedTuple):
    """A workspace's live counters (the admin API's ``used``) and seconds to each period's end."""

    day: int
    month: int
    day_reset: float
    month_reset: float


class Decision(NamedTuple):
    """One limiter answer (a NamedTuple: made on every request, it must be cheap to build).
    With two windows, ``limit``/``remaining``/``reset`` are those of the one nearer to running
    out (the one that refused, when refused)."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the window admits another request
    retry_after: float  # seconds a rejected client should wait (0 when allowed)
    lease: str | None = None  # the concurrency slot taken; give it back with ``release``
    busy: bool = False  # refused because every concurrency slot is held (nothing was counted)
    quota: QuotaState | None = None  # when a quota was asked for and the limiter answered it
    over_quota: bool = False  # refused by a quota (nothing was counted anywhere)
    credits: int | None = None  # the key's balance after this decision, when it has credits
    no_credits: bool = False  # refused: the balance is below the request's cost


class CreditState(NamedTuple):
    """A key's live balance (the admin API's ``credits.remaining``), without spending."""

    remaining: int
    refill_in: float  # seconds until the next refill; 0.0 without refill


class LimiterStats(NamedTuple):
    """Running counts of a limiter that talks to a backend (for ``/metrics``)."""

    batches: int  # round trips: every decision asked for in one event-loop tick goes in one
    commands: int  # commands sent in them


class RateLimiter(Protocol):
    async def open(self) -> None:
        """Connect. An unreachable backend is not an error here: decisions follow
        ``on_limiter_error`` until it answers."""

    def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> Awaitable[Decision]:
        """Count one request if the window, kept by ``algorithm`` (and ``also``, a second
        window of the budget), admits it, when ``max_in_flight`` is set a concurrency slot is
        free (then ``lease`` names the slot), the workspace's ``quota`` is not spent, and the
        budget's ``credits`` hold ``cost`` (then spent). A request refused for any reason is
        counted nowhere: not in a window, not as a slot, not in a quota, not in credits."""

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> Decision | None:
        """``admit``'s decision when this limiter can make it without waiting (in-process), else
        None: then call ``admit``. The request path asks this first, so an in-process decision
        costs no coroutine."""

    def peek(self, budget: str, scope: str, limit: int, window: float,
             algorithm: str = SLIDING_LOG) -> Awaitable[Decision]:
        """The state of the window without counting anything."""

    def quota_usage(self, workspace: str) -> Awaitable[QuotaUsage]:
        """The workspace's admitted requests this UTC day and month, without counting."""

    def credits_left(self, budget: str, credits: Credits) -> Awaitable[CreditState]:
        """The budget's live balance for the key's stored ``credits``, without spending."""

    def release(self, budget: str, lease: str) -> None:
        """Give back a slot taken by ``admit``. Never waits: a shared limiter sends it in the
        background (and a slot it cannot send expires with its lease)."""

    async def ping(self) -> None:
        """Raise ``LimiterUnavailable`` unless the limiter can decide now (for /readyz)."""

    async def close(self) -> None: ...

    def stats(self) -> LimiterStats | None:
        """Running counts for ``/metrics``; None for a limiter that makes no round trips."""


def local_share(limit: int, nodes: int) -> int:
    """This process's part of a limit shared by ``nodes`` processes (never below 1)."""
    return max(1, limit // nodes)


def counter_used(previous: int, current: int, left: float, window: float) -> float:
    """The sliding counter's estimate of the requests in the last ``window``: the previous fixed
    window's count weighted by the part of it still inside (``left`` of the current one to run),
    plus the current one's. A request is admitted while the estimate stays within the limit."""
    return previous * left / window + current


def counter_wait(previous: int, current: int, left: float, window: float, limit: int) -> float:
    """Seconds until the estimate lets one more request in (it does not now): while the current
    window's own count leaves room, as the previous window's weight falls; else after it ends,
    as this window's count, become the previous, falls."""
    if current + 1 <= limit:
        return left - (limit - 1 - current) * window / previous
    return left + max(0.0, window * (1 - (limit - 1) / current))


DAY = 86_400


def periods(now: float) -> tuple[int, int, float, float]:
    """For the UTC time ``now`` (epoch seconds): (day number, month number, seconds to the end
    of the day, seconds to the end of the month). Redis's script computes the same in Lua."""
    day = int(now // DAY)
    month, month_end = _month_of(day)
    return day, month, (day + 1) * DAY - now, month_end - now


@functools.lru_cache(maxsize=4)
def _month_of(day: int) -> tuple[int, int]:
    """(month number, epoch second the month ends) of a day number: once per day, not per call."""
    moment = datetime.fromtimestamp(day * DAY, UTC)
    days_in_month = calendar.monthrange(moment.year, moment.month)[1]
    return moment.year * 12 + moment.month - 1, (day + days_in_month - moment.day + 1) * DAY


def credit_period(interval: str | None, now: float) -> tuple[int, float]:
    """The refill period ``now`` falls in (its UTC day or month number; 0 without refill) and
    the seconds until it ends (0.0 without refill)."""
    if interval is None:
        return 0, 0.0
    day, month, day_left, month_left = periods(now)
    return (day, day_left) if interval == "day" else (month, month_left)


def nearest_quota(ask: QuotaAsk, day: int, month: int, day_reset: float,
                  month_reset: float) -> QuotaState | None:
    """The quota of ``ask`` nearer to running out, given the counts ``day`` and ``month``
    (on a tie, the one that resets sooner: the day). Straight-line: it runs per request."""
    if ask.day:
        day_left = ask.day - day if day < ask.day else 0
        if ask.month:
            month_left = ask.month - month if month < ask.month else 0
            if month_left < day_left:
                return QuotaState(ask.month, month_left, month_reset)
        return QuotaState(ask.day, day_left, day_reset)
    if ask.month:
        return QuotaState(ask.month, ask.month - month if month < ask.month else 0, month_reset)
    return None
