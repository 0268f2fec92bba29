"""The production key store's backend: PostgreSQL through asyncpg. Only what differs from SQLite
lives here: the connection pool and its timeouts, asyncpg's errors, and the tuned SQL.

One bounded pool per store (``min_size`` 1, ``max_size`` = ``key_store.pool_size``), with a
connect timeout, a client side ``command_timeout`` (asyncpg's default is none) and a server side
``lock_timeout``, so no caller ever waits longer than ``key_store.timeout``. asyncpg's statement
cache is on, so every statement is prepared once per connection.

Key mutations also ``pg_notify('gateway_keys', …)`` in their transaction: NOTIFY is delivered
at commit, so other nodes hear of a change exactly when it commits (``ChangeFeedListener``).
``create_key`` takes ``pg_advisory_xact_lock`` on the owner before counting; migrations run under
another advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]  # no stubs

from gateway.config import KeyStoreConfig
from gateway.config.parsers import url_target
from gateway.errors import Conflict, NotFound, StoreUnavailable
from gateway.keys.notify import NOTIFY_CHANNEL, ChangeFeedListener
from gateway.store import Store
from gateway.store.db import Conn, Row, Statements
from gateway.store.dialect import Batch
from gateway.store.feed import CHANGE_RETENTION
from gateway.store.rows import utc

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.keys.invalidation import ChangeFeed
    from gateway.metrics import Metrics
    from gateway.store.dialect import Dialect
    from gateway.store.usage import UsageDelta

URL_SCHEMES = ("postgresql", "postgres")
POOL_MIN = 1  # connections opened up front
# pg_advisory_xact_lock keys: (class, id) pairs so the two uses never collide.
_LOCK_CLASS_MIGRATIONS = 0x6777  # "gw"
_LOCK_CLASS_USER = 0x6778

# The change log, and NOTIFY to every listening node (both commit with the mutation). Payload
# "<key_hash> <seconds since epoch, the database's clock>": listeners export the lag.
_APPEND_CHANGES = (
    "WITH fed AS (INSERT INTO key_changes (key_hash, changed_at) "
    "SELECT h, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(h, n) ORDER BY n "
    "RETURNING key_hash) "
    f"SELECT count(pg_notify('{NOTIFY_CHANNEL}', "
    "key_hash || ' ' || extract(epoch FROM clock_timestamp())::text)) FROM fed"
)
# One statement per flush: duplicates in a batch are summed first (ON CONFLICT may touch a
# row once), unknown keys drop out in the join, last_used_at only moves forward.
_ADD_USAGE = """
WITH batch AS (
    SELECT d.key_id, sum(d.requests)::bigint AS requests,
           sum(d.rate_limited)::bigint AS rate_limited, max(d.last_used_at) AS last_used_at
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[])
         AS d(key_id, requests, rate_limited, last_used_at)
    JOIN api_keys AS k ON k.key_id = d.key_id
    GROUP BY d.key_id
), seen AS (
    UPDATE api_keys AS k SET last_used_at = batch.last_used_at
    FROM batch
    WHERE k.key_id = batch.key_id AND batch.last_used_at IS NOT NULL
      AND (k.last_used_at IS NULL OR k.last_used_at < batch.last_used_at)
    RETURNING 1
)
INSERT INTO key_usage (key_id, requests, rate_limited)
SELECT key_id, requests, rate_limited FROM batch ORDER BY key_id
ON CONFLICT (key_id) DO UPDATE SET requests = key_usage.requests + excluded.requests,
    rate_limited = key_usage.rate_limited + excluded.rate_limited
"""


class PostgresDialect:
    """Timestamps are timestamptz (asyncpg: aware datetimes, the session is in UTC), string
    lists text[], scopes jsonb (sent and read as JSON text)."""

    name = "postgres"
    owner_lock: str | None = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS_USER}, hashtext($1))"
    row_lock = " FOR UPDATE"
    share_lock = " FOR SHARE"
    migration_lock: str | None = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS_MIGRATIONS}, 0)"
    last_change_seq = (
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM key_changes_seq_seq"
    )

    def timestamp(self, value: datetime) -> datetime:
        return utc(value)

    def read_timestamp(self, value: datetime) -> datetime:
        return utc(value)

    def strings(self, values: Iterable[str]) -> list[str]:
        return [str(value) for value in values]

    def read_strings(self, value: list[str]) -> tuple[str, ...]:
        return tuple(value)

    def has_resource(self, param: str) -> str:
        return (
            "(jsonb_array_length(scopes) = 0 OR scopes @> "
            f"jsonb_build_array(jsonb_build_object('resource_id', {param}::text)))"
        )

    def statements(self, script: str) -> list[str]:
        return [script]  # without parameters asyncpg sends a script as one simple query

    def append_changes(self, key_hashes: Sequence[str], at: Any) -> Batch:
        return _APPEND_CHANGES, [(list(key_hashes), at)]

    def add_usage(self, deltas: Sequence[UsageDelta]) -> list[Batch]:
        columns = (
            [d.key_id for d in deltas],
            [d.requests for d in deltas],
            [d.rate_limited for d in deltas],
            [None if d.last_used_at is None else utc(d.last_used_at) for d in deltas],
        )
        return [(_ADD_USAGE, [columns])]


# --------------------------------------------------------------------------------------------
# the connection pool

POSTGRES_PORT = 5432
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@contextmanager
def _translated(target: str) -> Iterator[None]:
    """Driver errors as the store's own; an outage names the server (``host:port``)."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"already exists ({exc.constraint_name})") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound("a referenced workspace, project or key does not exist") from exc
    except asyncpg.CheckViolationError as exc:
        raise ValueError(f"invalid key-store value ({exc.constraint_name})") from exc
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(
            f"postgres key store at {target} unavailable: {type(exc).__name__}: {exc}"
        ) from exc


class _Transaction:
    """A connection in a transaction whose statements may each take ``timeout`` seconds."""

    def __init__(self, conn: asyncpg.Connection, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args, timeout=self._timeout))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(sql, *args, timeout=self._timeout)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args, timeout=self._timeout)

    async def execute(self, sql: str, *args: Any) -> object:
        return await self._conn.execute(sql, *args, timeout=self._timeout)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows, timeout=self._timeout)


class PostgresDb(Statements):
    """``Db`` on PostgreSQL (``postgresql://user:pass@host:5432/db``)."""

    dialect: Dialect = PostgresDialect()

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        command_timeout: float,
        lock_timeout_ms: int,
        pool_size: int,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError("Postgres URL must start with postgresql:// or postgres://")
        self.url = url
        self.target = url_target(url, POSTGRES_PORT)
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool (one connection up front)."""
        if self._pool is not None:
            return
        with _translated(self.target):
            self._pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    self.url,
                    min_size=POOL_MIN,
                    max_size=self._pool_size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    max_inactive_connection_lifetime=60.0,
                    server_settings={
                        "application_name": "gateway",
                        "lock_timeout": str(self._lock_timeout_ms),
                        "timezone": "UTC",
                    },
                ),
                timeout=self.connect_timeout + self.command_timeout,
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.command_timeout)
        except (*_DRIVER_ERRORS, asyncio.CancelledError):
            pool.terminate()

    @asynccontextmanager
    async def connection(self, deadline: float | None = None) -> AsyncIterator[Any]:
        """A pooled asyncpg connection; the whole use (waiting for the pool, connecting, every
        statement) is bounded by ``deadline`` (default ``command_timeout``) in total."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"postgres key store at {self.target} is not open")
        limit = self.command_timeout if deadline is None else deadline
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        with _translated(self.target):
            async with asyncio.timeout_at(end):
                conn = await pool.acquire(timeout=limit)
            try:
                async with asyncio.timeout_at(end):
                    yield conn
            finally:
                await _release(pool, conn, end - loop.time())

    @asynccontextmanager
    async def transaction(
        self, *, snapshot: bool = False, deadline: float | None = None
    ) -> AsyncIterator[Conn]:
        isolation = "repeatable_read" if snapshot else None
        async with self.connection(deadline) as conn, conn.transaction(isolation=isolation):
            yield _Transaction(conn, deadline)

    def __repr__(self) -> str:
        return f"PostgresDb({_redacted(self.url)!r})"


async def _release(pool: asyncpg.Pool, conn: Any, budget: float) -> None:
    """Give ``conn`` back within what is left of the deadline. asyncpg's own release waits
    for a cancelled statement, then resets, each for up to the acquire timeout: against a
    server that stopped answering (packets dropped, a process stopped) that doubled a call's
    time. Past the budget asyncpg terminates the connection; the pool opens a new one."""
    with contextlib.suppress(TimeoutError, *_DRIVER_ERRORS):
        await pool.release(conn, timeout=max(budget, 0.001))


def is_postgres_url(url: str) -> bool:
    return url.partition(":")[0] in URL_SCHEMES


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user}@{host}"


# --------------------------------------------------------------------------------------------
# the backend


def postgres_store(url: str, options: KeyStoreConfig) -> Store:
    """The key store on PostgreSQL; each node hears of changes by LISTEN, at commit."""
    db = PostgresDb(
        url,
        connect_timeout=options.connect_timeout,
        command_timeout=options.timeout,
        lock_timeout_ms=int(options.timeout * 1000),
        pool_size=options.pool_size,
    )

    def listen(
        store: Store, cache: KeyCache, *, poll_interval: float, metrics: Metrics | None
    ) -> ChangeFeed:
        return ChangeFeedListener(url, cache, connect_timeout=db.connect_timeout, metrics=metrics,
                                  retention=CHANGE_RETENTION.total_seconds())

    return Store(db, follow=listen)
