"""Shadow limits (README "Shadow mode"): rules that refuse no one and count, exactly, the
requests they would have refused. Built on the limiter contract as it is (``base.py``): the
backends do not know about shadow rules.

* A route's ``rate_limit`` with ``shadow: true`` is decided by a second ``admit`` of the same
  budget, scoped by the route's name: the very window the enforced limit keeps, so flipping
  ``shadow`` off starts from the counts seen in shadow. It is asked in the same event-loop tick
  as the real decision (one Redis batch, one round trip) and counts what it admits: a request it
  refuses is counted nowhere, so of M requests against a shadow limit of N in one window,
  exactly M - N are would-be refusals.
* A plan's ``quota`` with ``shadow: true`` rides in the real decision with each limit raised by
  ``SHADOW_QUOTA``: it never refuses, it counts the requests really admitted (its counters are
  the workspace's own), and a request would have been refused when its count went past the
  real limit, i.e. when the quota's ``remaining`` fell below ``SHADOW_QUOTA``.
* A key with ``enforcement: shadow``: its own window and in-flight cap move to the second
  ``admit``; the real one keeps what stays enforced, the route's window and the quota (on a
  ``PASS`` window that admits everything when nothing else is enforced).

Each shadow rule counts on its own: the second ``admit`` runs beside the real one, so it also
counts a request that an enforced limit refused; such a request is answered with its real
refusal and is not a would-be refusal.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.errors import CONCURRENCY_LIMITED, QUOTA_EXCEEDED, RATE_LIMITED
from gateway.keys.model import Credits
from gateway.limiter.base import SLIDING_COUNTER, Decision, QuotaAsk, Window

# Far above any real quota (2**40 requests), far below where Lua's doubles lose integers (2**53)
SHADOW_QUOTA = 1 << 40
# A window that admits everything, for a real decision that only spends a quota (a shadow key
# on a route without an enforced window): a constant-memory counter, never a log
PASS = Window("~", (1 << 31) - 1, 1.0, SLIDING_COUNTER)


class Ask(NamedTuple):
    """The arguments of one ``RateLimiter.admit``."""

    budget: str
    scope: str
    limit: int
    window: float
    cap: int | None
    also: Window | None
    quota: QuotaAsk | None
    algorithm: str
    credits: Credits | None = None  # never in shadow: spent by the real ask (README "Credits")
    cost: int = 1


def shadow_quota(limit: int) -> int:
    """A quota limit as asked in shadow (0: no quota for that period stays 0)."""
    return limit and SHADOW_QUOTA + limit


def split(
    budget: str, limit: int, window: float, cap: int | None, also: Window | None,
    quota: QuotaAsk | None, algorithm: str, shadow_window: Window | None, key_shadow: bool,
    credits: Credits | None = None, cost: int = 1,
) -> tuple[Ask | None, Ask | None]:
    """(the real ask, the shadow ask) for one request: either may be None. Credits are always
    spent by the real ask: they are not a rule a key can shadow."""
    if not key_shadow:
        real = Ask(budget, "", limit, window, cap, also, quota, algorithm, credits, cost)
        if shadow_window is None:
            return real, None
        return real, Ask(budget, shadow_window.scope, shadow_window.limit, shadow_window.window,
                         None, None, None, shadow_window.algorithm)
    shadow = Ask(budget, "", limit, window, cap, shadow_window, None, algorithm)
    spends = quota is not None or credits is not None
    enforced = also if also is not None else (PASS if spends else None)
    if enforced is None:
        return None, shadow
    return Ask(budget, enforced.scope, enforced.limit, enforced.window, None, None, quota,
               enforced.algorithm, credits, cost), shadow


def is_shadow_quota(decision: Decision) -> bool:
    quota = decision.quota
    return quota is not None and quota.limit >= SHADOW_QUOTA


def visible(decision: Decision) -> Decision:
    """The decision as the client sees it: a shadow quota shows no ``X-Quota-*``."""
    return decision._replace(quota=None) if is_shadow_quota(decision) else decision


def would_refuse(real: Decision | None, shadow: Decision | None) -> str | None:
    """The code a shadow rule would have answered a request the real decision admitted."""
    if shadow is not None and not shadow.allowed:
        return CONCURRENCY_LIMITED.code if shadow.busy else RATE_LIMITED.code
    quota = real.quota if real is not None else None
    if quota is not None and quota.limit >= SHADOW_QUOTA > quota.remaining:
        return QUOTA_EXCEEDED.code
    return None
