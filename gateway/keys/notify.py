"""Instant cache invalidation on Postgres: LISTEN ``gateway_keys``, the Postgres backend's
``ChangeFeed``.

Every key mutation on Postgres sends ``pg_notify('gateway_keys', key_hash)`` in its own
transaction (``gateway.store.postgres``), so the message reaches every listening node when (and
only when) the change commits. ``ChangeFeedListener`` holds one dedicated connection (outside
the store's pool) that listens and drops each named hash from the local cache.

If that connection is lost (or cannot be made), a missed message must not keep a revoked key
alive: until the listener is back, every cached entry's life is capped at ``fallback_ttl``
(5 s by default) — re-applied on every reconnect attempt, so entries loaded meanwhile are capped
too — and the node reconnects with a short backoff (``max_backoff``, 1 s). When it is back, the
whole cache is dropped once, since messages sent while it was away are gone. A keep-alive query
every ``keepalive`` seconds notices a connection that died silently.

The Postgres store also keeps the ``key_changes`` table, so ``ChangeFeedPoller`` works against it
too; the gateway uses this listener and keeps the poller for SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]  # no stubs

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.invalidation")

NOTIFY_CHANNEL = "gateway_keys"

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class ChangeFeedListener:
    def __init__(
        self,
        url: str,
        cache: KeyCache,
        *,
        connect_timeout: float,
        fallback_ttl: float = 5.0,
        keepalive: float = 2.0,
        min_backoff: float = 0.05,
        max_backoff: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._url = url
        self._cache = cache
        self._metrics = metrics
        self._fallback_ttl = fallback_ttl
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.notifications = 0
        self.reconnects = 0

    async def start(self) -> None:
        """Listen now if Postgres answers (so nothing committed after start is missed);
        otherwise keep trying in the background with the cache ttl capped."""
        try:
            await self._connect()
        except _ERRORS as exc:
            self._down(exc)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    # ------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(
            self._url,
            timeout=self._connect_timeout,
            command_timeout=self._connect_timeout,
            server_settings={"application_name": "gateway-listener"},
        )
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self.connected = True

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        key_hash, _, sent_at = payload.partition(" ")
        self._cache.invalidate(key_hash)
        if sent_at and self._metrics is not None:
            # against the database's clock: skew between hosts adds to (or hides) lag
            with contextlib.suppress(ValueError):
                self._metrics.observe_invalidation_lag(time.time() - float(sent_at))

    def _on_terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _down(self, exc: BaseException | None) -> None:
        if self.connected or exc is not None:
            log.warning(
                "key change listener down (%s); capping cache ttl at %.1fs",
                type(exc).__name__ if exc else "connection closed",
                self._fallback_ttl,
            )
        self.connected = False
        self._cache.cap_ttl(self._fallback_ttl)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=1.0)
        except (*_ERRORS, asyncio.CancelledError):
            conn.terminate()

    async def _watch(self) -> None:
        """Return when the connection is gone (closed, or the keep-alive fails)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self._keepalive)
                return
            try:
                await self._conn.execute("SELECT 1", timeout=self._connect_timeout)
            except _ERRORS:
                return

    async def _run(self) -> None:
        backoff = self._min_backoff
        while True:
            if self._conn is not None:
                await self._watch()
                await self._close()
                self._down(None)
            while self._conn is None:
                self._cache.cap_ttl(self._fallback_ttl)
                await asyncio.sleep(backoff)
                try:
                    await self._connect()
                except _ERRORS:
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                self.reconnects += 1
                backoff = self._min_backoff
                self._cache.invalidate_all()  # what was sent while away is lost
                log.warning("key change listener reconnected; cache dropped")
