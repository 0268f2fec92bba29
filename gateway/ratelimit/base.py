"""The rate-limiter contract. Implementations live beside it: ``memory.py`` (in-process, the
embedded default) and, for shared limits across nodes, a Redis one. The pipeline stage never
knows which it has; backends raise ``LimiterUnavailable`` for their own failures.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Decision(NamedTuple):
    """One limiter answer (a NamedTuple: made on every request, it must be cheap to build)."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the window admits another request
    retry_after: float  # seconds a rejected client should wait (0 when allowed)


class RateLimiter(Protocol):
    async def hit(self, bucket: str, limit: int, window: float) -> Decision:
        """Count one request in ``bucket`` if the sliding window admits it."""

    async def peek(self, bucket: str, limit: int, window: float) -> Decision:
        """The state of ``bucket`` without counting anything."""

    async def acquire(self, bucket: str, max_in_flight: int) -> bool:
        """Take one in-flight slot; False when ``max_in_flight`` are already held."""

    async def release(self, bucket: str) -> None:
        """Give back a slot taken by ``acquire``."""

    async def ping(self) -> None:
        """Raise ``LimiterUnavailable`` unless the limiter can decide now (for /readyz)."""

    async def close(self) -> None: ...
