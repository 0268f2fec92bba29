"""One store read per missing entry, however many requests miss on it at once.

Both read-through caches (keys, workspace views) load through a ``SingleFlight``: the first
caller starts the load as a task, later callers of the same name wait on that task. Waiters
share it through ``asyncio.shield``, so a cancelled waiter (a client that left) neither cancels
the load nor leaves the other waiters hanging.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def load(self, name: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """``fetch()``'s result, sharing a load already running for ``name``."""
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._inflight[name] = task
            task.add_done_callback(functools.partial(self._finished, name))
        return await asyncio.shield(task)

    def _finished(self, name: K, task: asyncio.Future[V]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged as lost
