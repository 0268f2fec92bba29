"""Deadlines for slow clients (README "Security and reliability"), kept by one sweep per
listener every ``Deadlines.tick`` seconds rather than by a timer per request, so a request
that arrives whole in time costs nothing here:

- **head**: a request head must arrive whole within ``header_timeout`` seconds, counted from
  the connection's start for its first request and from the head's first byte for the next
  ones. Past it: 408 ``request_timeout`` and the connection closed; a connection that never
  sent a byte is closed without an answer.
- **body**: a body being read must not stall for ``body_timeout`` seconds and, once it has
  run that long, must average at least ``min_body_rate`` bytes a second. Time the gateway
  itself stops reading (flow control: the upstream takes the body slower) is not counted.
  A body announced with ``Expect: 100-continue`` is watched from the gateway's ``100 Continue``.
  Past either, the body's stream fails: the pipeline answers 408 ``request_timeout`` (or cuts a
  response already begun), which ends the upstream exchange and gives the concurrency slot
  back; the connection is closed at the next sweep if it is still open.

Between requests, a keep-alive connection is closed after ``idle_timeout`` (aiohttp's own
keep-alive timer).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from gateway.config import LimitsConfig

# Set on a request with ``Expect: 100-continue`` once the gateway has sent ``100 Continue``
# (``gateway.pipeline.forward``): until then the client rightly waits, and its body's deadline
# does not run.
CONTINUED = web.RequestKey("continued", bool)


class RequestTimeout(HttpProcessingError):
    """A request head or body that came too slowly (its stream fails with it)."""

    def __init__(self) -> None:
        super().__init__(code=408, message="Request Timeout")


@dataclass(frozen=True, slots=True)
class Deadlines:
    header: float
    body: float
    min_body_rate: int

    @classmethod
    def of(cls, limits: LimitsConfig) -> Deadlines:
        return cls(limits.header_timeout, limits.body_timeout, limits.min_body_rate)

    @property
    def tick(self) -> float:
        """Seconds between sweeps: a deadline is kept within one tick of its time."""
        return min(1.0, self.header / 4, self.body / 4)


class BodyWatch:
    """The progress of one request body, as the sweep saw it."""

    __slots__ = (
        "content",
        "failed_at",
        "last_tick",
        "moved_at",
        "paused_for",
        "seen_bytes",
        "start_bytes",
        "started",
    )

    def __init__(self, content: StreamReader, now: float) -> None:
        self.content = content
        self.started = self.moved_at = self.last_tick = now
        self.start_bytes = self.seen_bytes = content.total_bytes
        self.paused_for = 0.0
        self.failed_at: float | None = None

    def too_slow(self, now: float, paused: bool, deadlines: Deadlines) -> bool:
        """True once the body stalled past ``body_timeout`` or runs below ``min_body_rate``;
        a tick spent paused by the gateway counts as progress."""
        received = self.content.total_bytes
        if paused:
            self.paused_for += now - self.last_tick
            self.moved_at = now
        elif received != self.seen_bytes:
            self.seen_bytes, self.moved_at = received, now
        self.last_tick = now
        if now - self.moved_at >= deadlines.body:
            return True
        running = now - self.started - self.paused_for
        rate = deadlines.min_body_rate
        return running >= deadlines.body and received - self.start_bytes < rate * running
