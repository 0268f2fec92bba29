"""The embedded key store: SQLite through aiosqlite.

One connection per store, in WAL mode with a 5 s busy timeout and foreign keys on. Other
processes (the CLI, other workers) may write the same file at the same time, so every write is
one short transaction, ``BEGIN IMMEDIATE`` so that read-check-write sequences (the per-user key
limit, rotation) are atomic across processes. Inside the process an ``asyncio.Lock`` keeps
coroutines from interleaving statements on the shared connection.

Timestamps are ISO-8601 UTC text with microseconds (text order is time order); lists and scopes
are JSON text. Driver errors leave this module only as ``StoreUnavailable`` (store unusable),
``Conflict`` (a name or id already taken) or ``NotFound`` (a missing referenced row).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

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
    timestamp_text,
    workspace_from_row,
)
from gateway.keys.store import KeyChange, UsageDelta

if TYPE_CHECKING:
    from gateway.keys.store import KeyStore

URL_PREFIX = "sqlite:///"
MEMORY = ":memory:"
BUSY_TIMEOUT_MS = 5000

Row = sqlite3.Row

# --------------------------------------------------------------------------------------------
# SQL

_INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in KEY_COLUMNS)})"
)
_SELECT_KEY = f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys"
_ACTIVE = "status = 'active' AND (expires_at IS NULL OR expires_at > ?)"
_COUNT_ACTIVE = f"SELECT COUNT(*) FROM api_keys WHERE user_id = ? AND {_ACTIVE}"
_AFTER_CURSOR = "(created_at > ? OR (created_at = ? AND key_id > ?))"
_HAS_RESOURCE = (
    "(json_array_length(scopes) = 0 OR EXISTS (SELECT 1 FROM json_each(api_keys.scopes) AS s "
    "WHERE json_extract(s.value, '$.resource_id') = ?))"
)
_UPSERT_USAGE = (
    "INSERT INTO key_usage (key_id, requests, rate_limited) "
    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM api_keys WHERE key_id = ?) "
    "ON CONFLICT (key_id) DO UPDATE SET requests = requests + excluded.requests, "
    "rate_limited = rate_limited + excluded.rate_limited"
)
_ADVANCE_LAST_USED = (
    "UPDATE api_keys SET last_used_at = ? "
    "WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)"
)
_SELECT_USAGE = (
    "SELECT k.key_id, COALESCE(u.requests, 0), COALESCE(u.rate_limited, 0), k.last_used_at "
    "FROM api_keys AS k LEFT JOIN key_usage AS u ON u.key_id = k.key_id WHERE k.key_id = ?"
)
_AUDIT_COLUMNS = "id, at, actor, action, target, workspace_id, changes"

# --------------------------------------------------------------------------------------------
# value encoding


_to_text = timestamp_text  # stored as text that sorts in time order


def _to_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _opt_datetime(text: Any) -> datetime | None:
    return None if text is None else _to_datetime(str(text))


def _strings_json(values: Iterable[str]) -> str:
    return json.dumps(list(values))


def _strings_from_json(text: str) -> tuple[str, ...]:
    return tuple(str(item) for item in json.loads(text))


ENCODERS = Encoders(when=_to_text, scopes=scopes_json, strings=_strings_json)
DECODERS = Decoders(when=_to_datetime, strings=_strings_from_json)

_key_params = functools.partial(key_params, encoders=ENCODERS)
_row_to_key = functools.partial(key_from_row, decoders=DECODERS)
_row_to_workspace = functools.partial(workspace_from_row, decoders=DECODERS)
_row_to_project = functools.partial(project_from_row, decoders=DECODERS)
_row_to_namespace = functools.partial(namespace_from_row, decoders=DECODERS)
_row_to_audit = functools.partial(audit_from_row, decoders=DECODERS)


def _encode_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    return encode_changes(changes, ENCODERS)


def _decode_text_cursor(cursor: str) -> tuple[str, str]:
    created_at, key_id = decode_cursor(cursor)
    return _to_text(created_at), key_id


# --------------------------------------------------------------------------------------------
# cursors, limits, filters


@dataclasses.dataclass(frozen=True, slots=True)
class _KeyFilter:
    workspace_id: str | None
    include_revoked: bool
    user_id: str | None
    resource_id: str | None
    key_type: str | None

    def where(self, now: datetime) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("workspace_id", self.workspace_id),
            ("user_id", self.user_id),
            ("key_type", self.key_type),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if not self.include_revoked:
            clauses.append(_ACTIVE)
            params.append(_to_text(now))
        if self.resource_id is not None:
            clauses.append(_HAS_RESOURCE)
            params.append(self.resource_id)
        return " AND ".join(clauses) or "1 = 1", params


# --------------------------------------------------------------------------------------------
# connection plumbing


def database_path(url: str) -> str:
    """The file (or ``:memory:``) of a ``sqlite:///`` URL: ``sqlite:///./rel.db`` is relative to
    the working directory, ``sqlite:////abs/path.db`` absolute."""
    if not url.startswith(URL_PREFIX):
        raise ValueError("SQLite URL must start with sqlite:///")
    path = url[len(URL_PREFIX) :].split("?", 1)[0]
    if not path:
        raise ValueError("SQLite URL has no database path")
    return path


def _split_statements(script: str) -> list[str]:
    """Split a migration script into complete statements (``execute`` runs one at a time, and
    ``executescript`` would commit the surrounding transaction)."""
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if _has_sql(buffer):
                statements.append(buffer.strip())
            buffer = ""
    return statements


def _has_sql(statement: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in statement.splitlines())
    return any(line and line != ";" for line in lines)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"sqlite key store unavailable: {type(exc).__name__}: {exc}")


def _integrity(exc: sqlite3.IntegrityError) -> Exception:
    message = str(exc)
    if "FOREIGN KEY" in message:
        return NotFound("a referenced workspace, project or key does not exist")
    if "UNIQUE" in message or "PRIMARY KEY" in message:
        return Conflict(f"already exists ({message})")
    return ValueError(f"invalid key-store value ({message})")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise _integrity(exc) from exc
    except sqlite3.Error as exc:
        raise _unavailable(exc) from exc


async def _rollback_quietly(db: aiosqlite.Connection) -> None:
    # No transaction open (BEGIN failed) or the connection is gone: nothing to undo.
    with suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")


async def _fetch_key(db: aiosqlite.Connection, column: str, value: str) -> KeyRecord | None:
    rows = list(await db.execute_fetchall(f"{_SELECT_KEY} WHERE {column} = ?", (value,)))
    return _row_to_key(rows[0]) if rows else None


async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = list(await db.execute_fetchall(sql, params))
    return rows[0][0] if rows else None


async def _count_active(db: aiosqlite.Connection, user_id: str, now: datetime) -> int:
    return int(await _scalar(db, _COUNT_ACTIVE, (user_id, _to_text(now))))


async def _apply_update(db: aiosqlite.Connection, key_id: str, columns: dict[str, Any]) -> None:
    # Column names come from _UPDATABLE (checked by _encode_changes), never from the caller.
    assignments = ", ".join(f"{column} = ?" for column in columns)
    await db.execute(
        f"UPDATE api_keys SET {assignments} WHERE key_id = ?", (*columns.values(), key_id)
    )


async def _append_changes(db: aiosqlite.Connection, hashes: Sequence[str], now: datetime) -> None:
    """Feed the change log (same transaction as the mutation) and prune what is over an hour
    old; ``sqlite_sequence`` keeps ``seq`` growing even when every row is pruned."""
    stamp = _to_text(now)
    await db.executemany(
        "INSERT INTO key_changes (key_hash, changed_at) VALUES (?, ?)",
        [(key_hash, stamp) for key_hash in hashes],
    )
    await db.execute(
        "DELETE FROM key_changes WHERE changed_at < ?", (_to_text(now - CHANGE_RETENTION),)
    )


# --------------------------------------------------------------------------------------------
# the store


class SqliteKeyStore:
    """``KeyStore`` on one SQLite file (``sqlite:///./gateway.db``, ``sqlite:////abs.db``) or
    ``sqlite:///:memory:``."""

    def __init__(self, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.url = url
        self._path = database_path(url)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, configure the connection and apply pending migrations."""
        if self._db is not None:
            return
        self._make_parent_dir()
        with _translated():
            db = await aiosqlite.connect(self._path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        self._db = db
        try:
            await self._configure(db)
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    def _make_parent_dir(self) -> None:
        if self._path == MEMORY:
            return
        parent = os.path.dirname(os.path.abspath(self._path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _unavailable(exc) from exc

    async def _configure(self, db: aiosqlite.Connection) -> None:
        with _translated():
            await db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._use_wal(db)

    async def _use_wal(self, db: aiosqlite.Connection) -> None:
        """Switch to WAL. The switch needs the file to itself and SQLite does not wait for it
        (no busy handler), so processes opening a new file together retry until the busy
        timeout instead of failing with "database is locked"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout_ms / 1000
        while True:
            try:
                await db.execute_fetchall("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.01)

    async def migrate(self) -> list[int]:
        """Apply pending migrations in one ``BEGIN IMMEDIATE`` transaction (so concurrent
        processes serialize and the loser finds nothing to do); return the versions applied."""
        migrations = migration_files("sqlite")
        async with self._transaction() as db:
            await db.execute(SCHEMA_MIGRATIONS_DDL)
            rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
            todo = pending(migrations, {int(row[0]) for row in rows})
            for version, name, sql in todo:
                for statement in _split_statements(sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, _to_text(utcnow())),
                )
        return [version for version, _, _ in todo]

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        with suppress(sqlite3.Error, ValueError):
            await db.close()

    async def ping(self) -> bool:
        db = self._db
        if db is None:
            return False
        try:
            await db.execute_fetchall("SELECT COUNT(*) FROM schema_migrations")
        except Exception:
            return False
        return True

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("sqlite key store is not open")
        return self._db

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for plain reads (autocommit; the lock keeps them out of another
        coroutine's open transaction)."""
        async with self._lock:
            with _translated():
                yield self._conn()

    @asynccontextmanager
    async def _transaction(self, mode: str = "IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self._conn()
            with _translated():
                try:
                    await db.execute(f"BEGIN {mode}")
                    yield db
                    await db.execute("COMMIT")
                except BaseException:
                    await _rollback_quietly(db)
                    raise

    # keys ------------------------------------------------------------------------------------
    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self._reading() as db:
            return await _fetch_key(db, "key_hash", key_hash)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._reading() as db:
            return await _fetch_key(db, "key_id", key_id)

    async def create_key(self, record: KeyRecord, *, max_active_per_user: int) -> KeyRecord:
        now = utcnow()
        async with self._transaction() as db:
            if record.user_id is not None:
                active = await _count_active(db, record.user_id, now)
                if active >= max_active_per_user:
                    raise KeyLimitReached(
                        f"user already holds {active} active keys (max {max_active_per_user})"
                    )
            await db.execute(_INSERT_KEY, _key_params(record))
            await _append_changes(db, [record.key_hash], now)
            created = await _fetch_key(db, "key_id", record.key_id)
        assert created is not None
        return created

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        columns = _encode_changes(changes)
        now = utcnow()
        async with self._transaction() as db:
            current = await _fetch_key(db, "key_id", key_id)
            if current is None:
                raise NotFound(f"key {key_id} not found")
            if columns:
                await _apply_update(db, key_id, columns)
                await _append_changes(db, [current.key_hash], now)
            updated = await _fetch_key(db, "key_id", key_id)
        assert updated is not None
        return updated

    async def rotate_key(
        self, old_key_id: str, new: KeyRecord, old_expires_at: datetime, revoked_by: str | None
    ) -> tuple[KeyRecord, KeyRecord]:
        now = utcnow()
        async with self._transaction() as db:
            old = await _fetch_key(db, "key_id", old_key_id)
            if old is None:
                raise NotFound(f"key {old_key_id} not found")
            retire = _encode_changes(retire_changes(old, old_expires_at, revoked_by, now))
            if retire:
                await _apply_update(db, old_key_id, retire)
            await db.execute(_INSERT_KEY, _key_params(new))
            await _append_changes(db, [old.key_hash, new.key_hash], now)
            old_after = await _fetch_key(db, "key_id", old_key_id)
            created = await _fetch_key(db, "key_id", new.key_id)
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
        after = _decode_text_cursor(cursor) if cursor is not None else None
        key_filter = _KeyFilter(workspace_id, include_revoked, user_id, resource_id, key_type)
        where, params = key_filter.where(utcnow())
        page_where, page_params = where, list(params)
        if after is not None:
            page_where = f"{where} AND {_AFTER_CURSOR}"
            page_params += [after[0], after[0], after[1]]
        async with self._transaction("DEFERRED") as db:
            total = int(await _scalar(db, f"SELECT COUNT(*) FROM api_keys WHERE {where}", params))
            rows = list(
                await db.execute_fetchall(
                    f"{_SELECT_KEY} WHERE {page_where} ORDER BY created_at, key_id LIMIT ?",
                    (*page_params, limit + 1),
                )
            )
        return _key_page(rows, total, limit)

    async def count_active_for_user(self, user_id: str) -> int:
        async with self._reading() as db:
            return await _count_active(db, user_id, utcnow())

    # tenancy ---------------------------------------------------------------------------------
    async def create_workspace(self, name: str) -> Workspace:
        workspace = Workspace(new_id("ws"), name, new_id("proj"), utcnow())
        stamp = _to_text(workspace.created_at)
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO workspaces (id, name, default_project_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                (workspace.id, name, workspace.default_project_id, stamp),
            )
            await db.execute(
                "INSERT INTO projects (id, workspace_id, name, created_at) VALUES (?, ?, ?, ?)",
                (workspace.default_project_id, workspace.id, "default", stamp),
            )
        return dataclasses.replace(workspace, created_at=_to_datetime(stamp))

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        async with self._reading() as db:
            rows = list(
                await db.execute_fetchall("SELECT * FROM workspaces WHERE id = ?", (workspace_id,))
            )
        return _row_to_workspace(rows[0]) if rows else None

    async def list_workspaces(self) -> list[Workspace]:
        async with self._reading() as db:
            rows = await db.execute_fetchall("SELECT * FROM workspaces ORDER BY created_at, id")
        return [_row_to_workspace(row) for row in rows]

    async def create_project(self, workspace_id: str, name: str) -> Project:
        project = Project(new_id("proj"), name, workspace_id, utcnow())
        await self._insert_child("projects", project.id, workspace_id, name, project.created_at)
        return dataclasses.replace(project, created_at=_to_datetime(_to_text(project.created_at)))

    async def get_project(self, project_id: str) -> Project | None:
        async with self._reading() as db:
            rows = list(
                await db.execute_fetchall("SELECT * FROM projects WHERE id = ?", (project_id,))
            )
        return _row_to_project(rows[0]) if rows else None

    async def list_projects(self, workspace_id: str) -> list[Project]:
        rows = await self._children("projects", workspace_id)
        return [_row_to_project(row) for row in rows]

    async def create_namespace(self, workspace_id: str, name: str) -> Namespace:
        namespace = Namespace(new_id("ns"), name, workspace_id, utcnow())
        await self._insert_child(
            "namespaces", namespace.id, workspace_id, name, namespace.created_at
        )
        return dataclasses.replace(
            namespace, created_at=_to_datetime(_to_text(namespace.created_at))
        )

    async def list_namespaces(self, workspace_id: str) -> list[Namespace]:
        rows = await self._children("namespaces", workspace_id)
        return [_row_to_namespace(row) for row in rows]

    async def _insert_child(
        self, table: str, child_id: str, workspace_id: str, name: str, created_at: datetime
    ) -> None:
        """Insert a project or namespace: ``NotFound`` for an unknown workspace, ``Conflict``
        for a name already taken in it. ``table`` is one of two constants, never user input."""
        kind = table.rstrip("s")
        async with self._transaction() as db:
            found = await _scalar(db, "SELECT 1 FROM workspaces WHERE id = ?", (workspace_id,))
            if found is None:
                raise NotFound(f"workspace {workspace_id} not found")
            try:
                await db.execute(
                    f"INSERT INTO {table} (id, workspace_id, name, created_at) VALUES (?, ?, ?, ?)",
                    (child_id, workspace_id, name, _to_text(created_at)),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"{kind} {name!r} already exists in {workspace_id}") from exc

    async def _children(self, table: str, workspace_id: str) -> list[Row]:
        async with self._reading() as db:
            return list(
                await db.execute_fetchall(
                    f"SELECT * FROM {table} WHERE workspace_id = ? ORDER BY created_at, id",
                    (workspace_id,),
                )
            )

    # usage, audit, change feed ---------------------------------------------------------------
    async def record_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """One transaction: counts added per key (unknown keys skipped), ``last_used_at`` only
        ever moves forward."""
        if not deltas:
            return
        counts = [(d.key_id, d.requests, d.rate_limited, d.key_id) for d in deltas]
        seen = [
            (stamp, d.key_id, stamp)
            for d in deltas
            if d.last_used_at is not None
            for stamp in (_to_text(d.last_used_at),)
        ]
        async with self._transaction() as db:
            await db.executemany(_UPSERT_USAGE, counts)
            if seen:
                await db.executemany(_ADVANCE_LAST_USED, seen)

    async def get_usage(self, key_id: str) -> KeyUsage | None:
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(_SELECT_USAGE, (key_id,)))
        if not rows:
            return None
        row = rows[0]
        return KeyUsage(str(row[0]), int(row[1]), int(row[2]), _opt_datetime(row[3]))

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
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO audit_log (at, actor, action, target, workspace_id, changes) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_to_text(utcnow()), actor, action, target, workspace_id, payload),
            )

    async def list_audit(self, workspace_id: str | None, limit: int = 100) -> list[AuditEvent]:
        check_limit(limit)
        where, params = "", []
        if workspace_id is not None:
            where, params = "WHERE workspace_id = ?", [workspace_id]
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log {where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            )
        return [_row_to_audit(row) for row in rows]

    async def changes_since(self, seq: int) -> list[KeyChange]:
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT seq, key_hash FROM key_changes WHERE seq > ? ORDER BY seq", (seq,)
            )
        return [KeyChange(int(row[0]), str(row[1])) for row in rows]

    async def last_change_seq(self) -> int:
        """The highest seq ever handed out (pruning never moves it back)."""
        async with self._reading() as db:
            value = await _scalar(db, "SELECT seq FROM sqlite_sequence WHERE name = 'key_changes'")
        return int(value or 0)


def _key_page(rows: list[Row], total: int, limit: int) -> KeyPage:
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(_to_datetime(str(last["created_at"])), str(last["key_id"]))
    return KeyPage(results=[_row_to_key(row) for row in page], total=total, next_cursor=next_cursor)


if TYPE_CHECKING:

    def _conforms(store: SqliteKeyStore) -> KeyStore:
        return store
