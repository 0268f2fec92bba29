"""The production key store: PostgreSQL through asyncpg.

One bounded pool per store (``min_size`` 1, ``max_size`` 10), with a connect timeout, a client
side ``command_timeout`` (asyncpg's default is none) and a server side ``lock_timeout``, so no
caller ever waits longer than the configured timeouts. asyncpg's statement cache is on, so every
statement is prepared once per connection.

Every key mutation runs in one transaction that also appends the changed hashes to
``key_changes`` and sends ``pg_notify('gateway_keys', key_hash)``; NOTIFY is transactional, so
other nodes hear about a change exactly when it commits (``gateway.keys.notify``). The change
feed table is kept too, so ``ChangeFeedPoller`` still works against Postgres as a fallback.

Invariants: ``create_key`` takes ``pg_advisory_xact_lock`` on the owner before counting, so racing
creates (any node) cannot exceed ``max_active_per_user``; rotation is one transaction. Migrations
(``gateway/keys/sql/postgres/NNN_*.sql``) run in one transaction under an advisory lock, so nodes
starting at once apply them exactly once.

Driver errors leave this module only as ``StoreUnavailable``, ``Conflict`` (unique violation),
``NotFound`` (foreign-key violation) or ``ValueError`` (check violation).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg  # type: ignore[import-untyped]  # no stubs; see report

from gateway.errors import Conflict, KeyLimitReached, NotFound, StoreUnavailable
from gateway.keys.migrations import SCHEMA_MIGRATIONS_DDL, migration_files, pending
from gateway.keys.model import (
    AuditEvent,
    KeyPage,
    KeyRecord,
    KeyUsage,
    Namespace,
    Project,
    Workspace,
    new_id,
    utcnow,
)
from gateway.keys.rows import (
    CHANGE_RETENTION,
    KEY_COLUMNS,
    Decoders,
    Encoders,
    audit_from_row,
    check_limit,
    decode_cursor,
    encode_changes,
    encode_cursor,
    json_default,
    key_from_row,
    key_params,
    namespace_from_row,
    project_from_row,
    retire_changes,
    scopes_json,
    utc,
    workspace_from_row,
)
from gateway.keys.store import KeyChange, UsageDelta

if TYPE_CHECKING:
    from gateway.keys.store import KeyStore

URL_SCHEMES = ("postgresql", "postgres")
NOTIFY_CHANNEL = "gateway_keys"
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
LOCK_TIMEOUT_MS = 5000
POOL_MIN = 1
POOL_MAX = 10
MIGRATION_TIMEOUT = 60.0
# pg_advisory_xact_lock keys: (class, id) pairs so the two uses never collide.
_LOCK_CLASS_MIGRATIONS = 0x6777  # "gw"
_LOCK_CLASS_USER = 0x6778

Row: TypeAlias = asyncpg.Record

# --------------------------------------------------------------------------------------------
# SQL

_CASTS = {"permissions": "::text[]", "scopes": "::jsonb", "allowed_origins": "::text[]"}
_INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) VALUES ("
    + ", ".join(f"${i}{_CASTS.get(c, '')}" for i, c in enumerate(KEY_COLUMNS, 1))
    + ")"
)
_SELECT_KEY = f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys"
_ACTIVE = "status = 'active' AND (expires_at IS NULL OR expires_at > {now})"
_COUNT_ACTIVE = (
    "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 AND "
    "status = 'active' AND (expires_at IS NULL OR expires_at > $2)"
)
_USER_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS_USER}, hashtext($1))"
_FEED = (
    "WITH fed AS (INSERT INTO key_changes (key_hash, changed_at) "
    "SELECT h, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(h, n) ORDER BY n "
    "RETURNING key_hash) "
    # payload "<key_hash> <seconds since epoch, the database's clock>": listeners export the lag
    f"SELECT count(pg_notify('{NOTIFY_CHANNEL}', "
    "key_hash || ' ' || extract(epoch FROM clock_timestamp())::text)) FROM fed"
)
_PRUNE_FEED = "DELETE FROM key_changes WHERE changed_at < $1"
# One statement per flush: duplicates in a batch are summed first (ON CONFLICT may touch a
# row once), unknown keys drop out in the join, last_used_at only moves forward.
_RECORD_USAGE = """
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
_SELECT_USAGE = (
    "SELECT k.key_id, COALESCE(u.requests, 0), COALESCE(u.rate_limited, 0), k.last_used_at "
    "FROM api_keys AS k LEFT JOIN key_usage AS u ON u.key_id = k.key_id WHERE k.key_id = $1"
)
_HAS_RESOURCE = (
    "(jsonb_array_length(scopes) = 0 OR "
    "scopes @> jsonb_build_array(jsonb_build_object('resource_id', {value}::text)))"
)
_LAST_SEQ = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM key_changes_seq_seq"

# --------------------------------------------------------------------------------------------
# value encoding


_utc = utc


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


ENCODERS = Encoders(
    when=_utc, scopes=scopes_json, strings=lambda values: [str(v) for v in values]
)
DECODERS = Decoders(when=_utc, strings=tuple)

_key_params = functools.partial(key_params, encoders=ENCODERS)
_row_to_key = functools.partial(key_from_row, decoders=DECODERS)
_row_to_workspace = functools.partial(workspace_from_row, decoders=DECODERS)
_row_to_project = functools.partial(project_from_row, decoders=DECODERS)
_row_to_namespace = functools.partial(namespace_from_row, decoders=DECODERS)
_row_to_audit = functools.partial(audit_from_row, decoders=DECODERS)


def _encode_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    return encode_changes(changes, ENCODERS)


# --------------------------------------------------------------------------------------------
# filters


class _Params:
    """Positional parameters for a statement built from pieces: ``add(v)`` -> ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _key_filter(
    params: _Params,
    *,
    workspace_id: str | None,
    include_revoked: bool,
    user_id: str | None,
    resource_id: str | None,
    key_type: str | None,
    now: datetime,
) -> str:
    clauses: list[str] = []
    for column, value in (
        ("workspace_id", workspace_id),
        ("user_id", user_id),
        ("key_type", key_type),
    ):
        if value is not None:
            clauses.append(f"{column} = {params.add(value)}")
    if not include_revoked:
        clauses.append(_ACTIVE.format(now=params.add(now)))
    if resource_id is not None:
        clauses.append(_HAS_RESOURCE.format(value=params.add(resource_id)))
    return " AND ".join(clauses) or "TRUE"


# --------------------------------------------------------------------------------------------
# connection plumbing


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


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"postgres key store unavailable: {type(exc).__name__}: {exc}")


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"already exists ({exc.constraint_name})") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound("a referenced workspace, project or key does not exist") from exc
    except asyncpg.CheckViolationError as exc:
        raise ValueError(f"invalid key-store value ({exc.constraint_name})") from exc
    except _DRIVER_ERRORS as exc:
        raise _unavailable(exc) from exc


async def _fetch_key(conn: asyncpg.Connection, column: str, value: str) -> KeyRecord | None:
    row = await conn.fetchrow(f"{_SELECT_KEY} WHERE {column} = $1", value)
    return _row_to_key(row) if row is not None else None


async def _apply_update(conn: asyncpg.Connection, key_id: str, columns: dict[str, Any]) -> None:
    # Column names come from UPDATABLE (checked by _encode_changes), never from the caller.
    assignments = ", ".join(
        f"{column} = ${i}{_CASTS.get(column, '')}" for i, column in enumerate(columns, 2)
    )
    await conn.execute(
        f"UPDATE api_keys SET {assignments} WHERE key_id = $1", key_id, *columns.values()
    )


async def _feed(conn: asyncpg.Connection, hashes: Sequence[str], now: datetime) -> None:
    """Append to the change log and NOTIFY every node (both commit with the mutation)."""
    await conn.fetchval(_FEED, list(hashes), now)
    await conn.execute(_PRUNE_FEED, now - CHANGE_RETENTION)


# --------------------------------------------------------------------------------------------
# the store


class PostgresKeyStore:
    """``KeyStore`` on PostgreSQL (``postgresql://user:pass@host:5432/db``)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
        min_size: int = POOL_MIN,
        max_size: int = POOL_MAX,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError("Postgres URL must start with postgresql:// or postgres://")
        self.url = url
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._min = min_size
        self._max = max_size
        self._pool: asyncpg.Pool | None = None

    # lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the pool (one connection up front) and apply pending migrations."""
        if self._pool is not None:
            return
        with _translated():
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    self.url,
                    min_size=self._min,
                    max_size=self._max,
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
        self._pool = pool
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock (nodes starting
        together serialize; the later ones find nothing to do); return the versions applied."""
        migrations = migration_files("postgres")
        async with self._transaction(MIGRATION_TIMEOUT) as conn:
            await conn.execute(
                f"SELECT pg_advisory_xact_lock({_LOCK_CLASS_MIGRATIONS}, 0)",
                timeout=MIGRATION_TIMEOUT,
            )
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
            rows = await conn.fetch("SELECT version FROM schema_migrations")
            todo = pending(migrations, {int(row[0]) for row in rows})
            for version, name, sql in todo:
                await conn.execute(sql, timeout=MIGRATION_TIMEOUT)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    version,
                    name,
                    utcnow().isoformat(timespec="microseconds"),
                )
        return [version for version, _, _ in todo]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.command_timeout)
        except (*_DRIVER_ERRORS, asyncio.CancelledError):
            pool.terminate()

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with self._conn() as conn:
                await conn.fetchval("SELECT COUNT(*) FROM schema_migrations")
        except Exception:
            return False
        return True

    @asynccontextmanager
    async def _conn(self, deadline: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; the whole use (waiting for the pool, connecting, every
        statement) is bounded by ``deadline`` (default ``command_timeout``) in total."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres key store is not open")
        limit = self.command_timeout if deadline is None else deadline
        with _translated():
            async with asyncio.timeout(limit), pool.acquire(timeout=limit) as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(
        self, deadline: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        async with self._conn(deadline) as conn, conn.transaction():
            yield conn

    # keys ------------------------------------------------------------------------------------
    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self._conn() as conn:
            return await _fetch_key(conn, "key_hash", key_hash)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._conn() as conn:
            return await _fetch_key(conn, "key_id", key_id)

    async def create_key(self, record: KeyRecord, *, max_active_per_user: int) -> KeyRecord:
        now = utcnow()
        async with self._transaction() as conn:
            if record.user_id is not None:
                await conn.execute(_USER_LOCK, record.user_id)
                active = int(await conn.fetchval(_COUNT_ACTIVE, record.user_id, now))
                if active >= max_active_per_user:
                    raise KeyLimitReached(
                        f"user already holds {active} active keys (max {max_active_per_user})"
                    )
            await conn.execute(_INSERT_KEY, *_key_params(record))
            await _feed(conn, [record.key_hash], now)
            created = await _fetch_key(conn, "key_id", record.key_id)
        assert created is not None
        return created

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        columns = _encode_changes(changes)
        now = utcnow()
        async with self._transaction() as conn:
            current = await conn.fetchrow(
                "SELECT key_hash FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id
            )
            if current is None:
                raise NotFound(f"key {key_id} not found")
            if columns:
                await _apply_update(conn, key_id, columns)
                await _feed(conn, [current["key_hash"]], now)
            updated = await _fetch_key(conn, "key_id", key_id)
        assert updated is not None
        return updated

    async def rotate_key(
        self, old_key_id: str, new: KeyRecord, old_expires_at: datetime, revoked_by: str | None
    ) -> tuple[KeyRecord, KeyRecord]:
        now = utcnow()
        async with self._transaction() as conn:
            row = await conn.fetchrow(f"{_SELECT_KEY} WHERE key_id = $1 FOR UPDATE", old_key_id)
            if row is None:
                raise NotFound(f"key {old_key_id} not found")
            old = _row_to_key(row)
            retire = _encode_changes(retire_changes(old, old_expires_at, revoked_by, now))
            if retire:
                await _apply_update(conn, old_key_id, retire)
            await conn.execute(_INSERT_KEY, *_key_params(new))
            await _feed(conn, [old.key_hash, new.key_hash], now)
            old_after = await _fetch_key(conn, "key_id", old_key_id)
            created = await _fetch_key(conn, "key_id", new.key_id)
        assert old_after is not None and created is not None
        return old_after, created

    async def list_keys(
        self,
        workspace_id: str | None,
        *,
        include_revoked: bool = False,
        user_id: str | None = None,
        resource_id: str | None = None,
        key_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> KeyPage:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        params = _Params()
        where = _key_filter(
            params,
            workspace_id=workspace_id,
            include_revoked=include_revoked,
            user_id=user_id,
            resource_id=resource_id,
            key_type=key_type,
            now=utcnow(),
        )
        count_values = list(params.values)
        page_where = where
        if after is not None:
            stamp = after[0]
            created, key_id = params.add(stamp), params.add(after[1])
            page_where = f"{where} AND (created_at, key_id) > ({created}, {key_id})"
        page_limit = params.add(limit + 1)
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            total = int(
                await conn.fetchval(f"SELECT COUNT(*) FROM api_keys WHERE {where}", *count_values)
            )
            rows = await conn.fetch(
                f"{_SELECT_KEY} WHERE {page_where} ORDER BY created_at, key_id LIMIT {page_limit}",
                *params.values,
            )
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor(last["created_at"], last["key_id"])
        return KeyPage(
            results=[_row_to_key(row) for row in page], total=total, next_cursor=next_cursor
        )

    async def count_active_for_user(self, user_id: str) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(_COUNT_ACTIVE, user_id, utcnow()))

    # tenancy ---------------------------------------------------------------------------------
    async def create_workspace(self, name: str) -> Workspace:
        workspace = Workspace(new_id("ws"), name, new_id("proj"), _utc(utcnow()))
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO workspaces (id, name, default_project_id, created_at) "
                "VALUES ($1, $2, $3, $4)",
                workspace.id,
                name,
                workspace.default_project_id,
                workspace.created_at,
            )
            await conn.execute(
                "INSERT INTO projects (id, workspace_id, name, created_at) VALUES ($1, $2, $3, $4)",
                workspace.default_project_id,
                workspace.id,
                "default",
                workspace.created_at,
            )
        return workspace

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        async with self._conn() as conn:
            row = await conn.fetchrow("SELECT * FROM workspaces WHERE id = $1", workspace_id)
        return _row_to_workspace(row) if row is not None else None

    async def list_workspaces(self) -> list[Workspace]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT * FROM workspaces ORDER BY created_at, id")
        return [_row_to_workspace(row) for row in rows]

    async def create_project(self, workspace_id: str, name: str) -> Project:
        project = Project(new_id("proj"), name, workspace_id, _utc(utcnow()))
        await self._insert_child("projects", project.id, workspace_id, name, project.created_at)
        return project

    async def get_project(self, project_id: str) -> Project | None:
        async with self._conn() as conn:
            row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", project_id)
        return _row_to_project(row) if row is not None else None

    async def list_projects(self, workspace_id: str) -> list[Project]:
        rows = await self._children("projects", workspace_id)
        return [_row_to_project(row) for row in rows]

    async def create_namespace(self, workspace_id: str, name: str) -> Namespace:
        namespace = Namespace(new_id("ns"), name, workspace_id, _utc(utcnow()))
        await self._insert_child(
            "namespaces", namespace.id, workspace_id, name, namespace.created_at
        )
        return namespace

    async def list_namespaces(self, workspace_id: str) -> list[Namespace]:
        rows = await self._children("namespaces", workspace_id)
        return [_row_to_namespace(row) for row in rows]

    async def _insert_child(
        self, table: str, child_id: str, workspace_id: str, name: str, created_at: datetime
    ) -> None:
        """``NotFound`` for an unknown workspace, ``Conflict`` for a name already taken in it.
        ``table`` is one of two constants, never user input."""
        kind = table.rstrip("s")
        try:
            async with self._conn() as conn:
                await conn.execute(
                    f"INSERT INTO {table} (id, workspace_id, name, created_at) "
                    "VALUES ($1, $2, $3, $4)",
                    child_id,
                    workspace_id,
                    name,
                    created_at,
                )
        except NotFound:
            raise NotFound(f"workspace {workspace_id} not found") from None
        except Conflict:
            raise Conflict(f"{kind} {name!r} already exists in {workspace_id}") from None

    async def _children(self, table: str, workspace_id: str) -> list[Row]:
        async with self._conn() as conn:
            return list(
                await conn.fetch(
                    f"SELECT * FROM {table} WHERE workspace_id = $1 ORDER BY created_at, id",
                    workspace_id,
                )
            )

    # usage, audit, change feed ---------------------------------------------------------------
    async def record_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """One statement: counts added per key (unknown keys skipped), ``last_used_at`` only
        ever moves forward."""
        if not deltas:
            return
        async with self._conn() as conn:
            await conn.execute(
                _RECORD_USAGE,
                [d.key_id for d in deltas],
                [d.requests for d in deltas],
                [d.rate_limited for d in deltas],
                [_opt_utc(d.last_used_at) for d in deltas],
            )

    async def get_usage(self, key_id: str) -> KeyUsage | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(_SELECT_USAGE, key_id)
        if row is None:
            return None
        return KeyUsage(str(row[0]), int(row[1]), int(row[2]), _opt_utc(row[3]))

    async def add_audit(
        self,
        *,
        actor: str | None,
        action: str,
        target: str,
        workspace_id: str | None,
        changes: dict[str, Any],
    ) -> None:
        payload = json.dumps(changes, default=json_default)
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO audit_log (at, actor, action, target, workspace_id, changes) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                utcnow(),
                actor,
                action,
                target,
                workspace_id,
                payload,
            )

    async def list_audit(self, workspace_id: str | None, limit: int = 100) -> list[AuditEvent]:
        check_limit(limit)
        columns = "id, at, actor, action, target, workspace_id, changes"
        async with self._conn() as conn:
            if workspace_id is None:
                rows = await conn.fetch(
                    f"SELECT {columns} FROM audit_log ORDER BY id DESC LIMIT $1", limit
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {columns} FROM audit_log WHERE workspace_id = $1 "
                    "ORDER BY id DESC LIMIT $2",
                    workspace_id,
                    limit,
                )
        return [_row_to_audit(row) for row in rows]

    async def changes_since(self, seq: int) -> list[KeyChange]:
        """Committed changes after ``seq``. (A sequence may commit out of order under
        concurrency; the poller is only a fallback — LISTEN/NOTIFY is the primary path.)"""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT seq, key_hash FROM key_changes WHERE seq > $1 ORDER BY seq", seq
            )
        return [KeyChange(int(row[0]), str(row[1])) for row in rows]

    async def last_change_seq(self) -> int:
        """The highest seq ever handed out (pruning never moves it back)."""
        async with self._conn() as conn:
            return int(await conn.fetchval(_LAST_SEQ))

    def __repr__(self) -> str:
        return f"PostgresKeyStore({_redacted(self.url)!r})"


if TYPE_CHECKING:

    def _conforms(store: PostgresKeyStore) -> KeyStore:
        return store
