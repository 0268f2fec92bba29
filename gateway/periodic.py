"""A background task that runs one coroutine every ``interval`` seconds until stopped.

Used by the change-feed poller and the usage writer; ``tick`` handles its own expected
failures (a tick that raises anything else is logged and the task keeps going)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.periodic")


class Periodic:
    def __init__(self, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
        self._interval = interval
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._tick()
            except Exception:
                log.exception("periodic task failed; continuing")
