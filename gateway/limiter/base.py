"""The rate-limiter contract. Implementations live beside it: ``memory.py`` (in-process, the
embedded default) and ``redis.py`` (shared by every gateway process and node). The pipeline
stage never knows which it has; backends raise ``LimiterUnavailable`` for their own failures.

One call decides a request: ``admit`` checks the key's sliding window and, when the route caps
requests in flight, takes a concurrency lease in the same step (one Redis round trip).

Names: a *budget* is what one key spends — the first key of its rotation chain, so a rotated key
and its successor share everything — and a *scope* splits its rate limit per route ("" for the
key-wide budget). Concurrency leases belong to the budget alone.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import NamedTuple, Protocol


class Decision(NamedTuple):
    """One limiter answer (a NamedTuple: made on every request, it must be cheap to build)."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the window admits another request
    retry_after: float  # seconds a rejected client should wait (0 when allowed)
    lease: str | None = None  # the concurrency slot taken; give it back with ``release``
    busy: bool = False  # refused because every concurrency slot is held (nothing was counted)


class LimiterStats(NamedTuple):
    """Running counts of a limiter that talks to a backend (for ``/metrics``)."""

    batches: int  # round trips: every decision asked for in one event-loop tick goes in one
    commands: int  # commands sent in them


class RateLimiter(Protocol):
    async def open(self) -> None:
        """Connect. An unreachable backend is not an error here: decisions follow
        ``on_limiter_error`` until it answers."""

    def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None
    ) -> Awaitable[Decision]:
        """Count one request if the window admits it and, when ``max_in_flight`` is set, a
        concurrency slot is free (then ``lease`` names the slot). A request refused for either
        reason is not counted."""

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None
    ) -> Decision | None:
        """``admit``'s decision when this limiter can make it without waiting (in-process), else
        None: then call ``admit``. The request path asks this first, so an in-process decision
        costs no coroutine."""

    def peek(self, budget: str, scope: str, limit: int, window: float) -> Awaitable[Decision]:
        """The state of the window without counting anything."""

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
