"""Addresses this process knows have spent their failed-authentication budget, and until when
(README "Unauthenticated traffic").

The budget itself lives in the limiter (in Redis when configured) and is only spent on a
failure; this memo is what lets the next request from such an address be refused before its
key is looked up, without asking the limiter on every request. Empty, it costs a request one
truthiness test. A process learns of a block from its own counting (the failure that spent the
budget, or a later failure the limiter refused), so another node may still serve one good key
from that address until the address fails there too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SWEEP_AT = 10_000  # entries: past it, expired ones are dropped when another is added


class BlockedAddresses:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.until: dict[str, float] = {}  # budget address -> monotonic time the block ends

    def block(self, address: str, seconds: float) -> None:
        if len(self.until) >= SWEEP_AT:
            self.sweep()
        self.until[address] = self._clock() + seconds

    def seconds_left(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it is not blocked."""
        until = self.until.get(address)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self.until[address]
            return 0.0
        return left

    def sweep(self) -> None:
        now = self._clock()
        for address in [a for a, until in self.until.items() if until <= now]:
            del self.until[address]
