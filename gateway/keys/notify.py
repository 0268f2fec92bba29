"""Instant cache invalidation on Postgres: LISTEN ``gateway_keys``, the Postgres backend's
``ChangeFeed``.

Every key mutation on Postgres sends ``pg_notify('gateway_keys', key_hash)`` in its own
transaction (``gateway.store.postgres``), so the message reaches every listening node when (and
only when) the change commits. ``ChangeFeedListener`` holds one dedicated connection (outside
the store's pool) that listens and drops each named hash from the local cache.

If that connection is lost (or cannot be made), a missed message must not keep a revoked key
alive: until the listener is back, every cached entry's life is capped at ``fallback_ttl``
(5 s by default) — re-applied on every reconnect attempt, so entries loaded meanwhile are capped
too — and the node reconnects with a short backoff (``max_backoff``, 1 s). A keep-alive query
every ``keepalive`` seconds notices a connection that died silently; it also reads the change
log's last ``seq``, the listener's mark.

When it is back (listening again first), the messages sent while it was away are gone, so the
listener catches up from the change log (``key_changes``) instead of dropping the whole cache,
which would send every request of a busy node to a database that just came back: it evicts each
hash logged after its mark (``seq`` above it) or less than ``CATCH_UP_SLACK`` (10 s) before
the mark was taken (``changed_at``: a sequence number may commit out of order, and a change's
time is its writer's clock). The whole cache is dropped only when catching up is not possible:
no mark yet, a gap longer than the change log keeps rows (``retention``, the store's
``CHANGE_RETENTION``, less the slack), or the catch-up query failing.

The Postgres store also keeps the ``key_changes`` table, so ``ChangeFeedPoller`` works against it
too; the gateway uses this listener and keeps the poller for SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]  # no stubs

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.invalidation")

NOTIFY_CHANNEL = "gateway_keys"
# seconds before the mark that a catch-up also evicts: a change's seq may commit after a higher
# one (its transaction, bounded by key_store.timeout, still ran), and its changed_at is its
# writer's clock (skew against the database's, which times the mark)
CATCH_UP_SLACK = 10.0
# The change log's last seq (gateway.store.feed; pruning never moves it back) and the time.
_MARK = (
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END, "
    "extract(epoch FROM clock_timestamp())::float8 FROM key_changes_seq_seq"
)
_CATCH_UP = "SELECT DISTINCT key_hash FROM key_changes WHERE seq > $1 OR changed_at >= $2"

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
        retention: float = 3600.0,
        catch_up_slack: float = CATCH_UP_SLACK,
    ) -> None:
        self._slack = catch_up_slack
        self._url = url
        self._retention = retention  # seconds the change log keeps a row
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
        self.caught_up = 0  # hashes evicted by catching up after a reconnect
        # (last seq, the database's clock, time.time()) read while listening
        self._mark: tuple[int, float, float] | None = None

    async def start(self) -> None:
        """Listen now if Postgres answers (so nothing committed after start is missed);
        otherwise keep trying in the background with the cache ttl capped."""
        try:
            await self._connect()
        except _ERRORS as exc:
            self._down(exc)
        else:
            self._mark = await self._read_mark()
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

    async def _read_mark(self) -> tuple[int, float, float] | None:
        """The change log's last seq now, read on the listening connection (None: no answer)."""
        try:
            row = await self._conn.fetchrow(_MARK, timeout=self._connect_timeout)
        except _ERRORS:
            return None
        return int(row[0]), float(row[1]), time.time()

    async def _catch_up(self, mark: tuple[int, float, float] | None) -> None:
        """Evict what changed while the listener was away (see the module docstring)."""
        seq, at, taken = mark if mark is not None else (0, 0.0, 0.0)
        if mark is None or time.time() - taken > self._retention - self._slack:
            self._cache.invalidate_all()
            log.warning("key change listener reconnected; cache dropped (no catch-up mark)")
            return
        since = datetime.fromtimestamp(at - self._slack, UTC)
        try:
            rows = await self._conn.fetch(_CATCH_UP, seq, since, timeout=self._connect_timeout)
        except _ERRORS as exc:
            self._cache.invalidate_all()
            log.warning("key change listener reconnected; cache dropped (catch-up failed: %s)",
                        type(exc).__name__)
            return
        for row in rows:
            self._cache.invalidate(row[0])
        self.caught_up += len(rows)
        log.warning("key change listener reconnected; caught up on %d changed keys", len(rows))

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
            mark = await self._read_mark()
            if mark is None:
                return
            self._mark = mark

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
                backoff = self._min_backoff
                mark = await self._read_mark()  # listening already: nothing after it is missed
                await self._catch_up(self._mark)  # what was sent while away is lost
                self._mark = mark if mark is not None else self._mark
                self.reconnects += 1  # counted once caught up: then the cache is trustworthy
