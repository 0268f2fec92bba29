"""The embedded key store's backend: SQLite through aiosqlite. Only what differs from Postgres
lives here: the one connection and how it is opened, sqlite3's errors, and the SQL SQLite
needs its own way.

One connection per store, in WAL mode with a busy timeout (``key_store.timeout``) and foreign
keys on. Other processes (the CLI, other workers) may write the same file at the same time, so
every write transaction is ``BEGIN IMMEDIATE``: it takes the file's write lock up front, which
makes read-check-write sequences (the per-user key limit, rotation) atomic across processes —
what Postgres needs row and advisory locks for. Inside the process an ``asyncio.Lock`` keeps
coroutines from interleaving statements on the shared connection.

Timestamps are ISO-8601 UTC text with microseconds (text order is time order); lists and scopes
are JSON text.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from gateway.config import KeyStoreConfig
from gateway.errors import Conflict, NotFound, StoreUnavailable
from gateway.keys.invalidation import ChangeFeedPoller
from gateway.store import Store
from gateway.store.db import Conn, Row, Statements
from gateway.store.dialect import Batch
from gateway.store.rows import timestamp_text, utc

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.keys.invalidation import ChangeFeed
    from gateway.metrics import Metrics
    from gateway.store.dialect import Dialect
    from gateway.store.usage import UsageDelta

URL_PREFIX = "sqlite:///"
MEMORY = ":memory:"

# INSERT … SELECT … WHERE: unknown keys are skipped (the WHERE also lets SQLite parse the
# ON CONFLICT after a SELECT).
_ADD_COUNTS = (
    "INSERT INTO key_usage (key_id, requests, rate_limited) "
    "SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM api_keys WHERE key_id = $1) "
    "ON CONFLICT (key_id) DO UPDATE SET requests = requests + excluded.requests, "
    "rate_limited = rate_limited + excluded.rate_limited"
)
_ADVANCE_LAST_USED = (
    "UPDATE api_keys SET last_used_at = $1 "
    "WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at < $1)"
)


class SqliteDialect:
    name = "sqlite"
    owner_lock: str | None = None  # BEGIN IMMEDIATE already shuts out every other writer
    row_lock = ""  # ditto
    share_lock = ""  # ditto
    migration_lock: str | None = None  # ditto
    last_change_seq = "SELECT seq FROM sqlite_sequence WHERE name = 'key_changes'"

    def timestamp(self, value: datetime) -> str:
        return timestamp_text(value)  # text that sorts in time order

    def read_timestamp(self, value: str) -> datetime:
        return utc(datetime.fromisoformat(str(value)))

    def strings(self, values: Iterable[str]) -> str:
        return json.dumps(list(values))

    def read_strings(self, value: str) -> tuple[str, ...]:
        return tuple(str(item) for item in json.loads(value))

    def has_resource(self, param: str) -> str:
        return (
            "(json_array_length(scopes) = 0 OR EXISTS (SELECT 1 FROM json_each(api_keys.scopes) "
            f"AS s WHERE json_extract(s.value, '$.resource_id') = {param}))"
        )

    def statements(self, script: str) -> list[str]:
        """Complete statements one by one: ``execute`` runs one at a time, and
        ``executescript`` would commit the surrounding transaction."""
        statements: list[str] = []
        buffer = ""
        for piece in script.split(";"):
            buffer += piece + ";"
            if sqlite3.complete_statement(buffer):
                if _has_sql(buffer):
                    statements.append(buffer.strip())
                buffer = ""
        return statements

    def append_changes(self, key_hashes: Sequence[str], at: Any) -> Batch:
        # AUTOINCREMENT: sqlite_sequence keeps seq growing even when every row is pruned
        sql = "INSERT INTO key_changes (key_hash, changed_at) VALUES ($1, $2)"
        return sql, [(key_hash, at) for key_hash in key_hashes]

    def add_usage(self, deltas: Sequence[UsageDelta]) -> list[Batch]:
        counts = [(d.key_id, d.requests, d.rate_limited) for d in deltas]
        seen = [
            (self.timestamp(d.last_used_at), d.key_id)
            for d in deltas
            if d.last_used_at is not None
        ]
        return [(_ADD_COUNTS, counts), (_ADVANCE_LAST_USED, seen)]


def _has_sql(statement: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in statement.splitlines())
    return any(line and line != ";" for line in lines)


# --------------------------------------------------------------------------------------------
# the connection


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """``$1`` parameters as sqlite3's ``?1``."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


def _integrity(exc: sqlite3.IntegrityError) -> Exception:
    message = str(exc)
    if "FOREIGN KEY" in message:
        return NotFound("a referenced workspace, project or key does not exist")
    if "UNIQUE" in message or "PRIMARY KEY" in message:
        return Conflict(f"already exists ({message})")
    return ValueError(f"invalid key-store value ({message})")


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"sqlite key store unavailable: {type(exc).__name__}: {exc}")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise _integrity(exc) from exc
    except sqlite3.Error as exc:
        raise _unavailable(exc) from exc


class _Connection:
    """The shared aiosqlite connection behind ``Conn`` (the caller holds the lock)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._db.execute_fetchall(_numbered(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self._db.execute_fetchall(_numbered(sql), args)
        return next(iter(rows), None)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> object:
        return await self._db.execute(_numbered(sql), args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._db.executemany(_numbered(sql), rows)


async def _rollback_quietly(db: aiosqlite.Connection) -> None:
    # No transaction open (BEGIN failed) or the connection is gone: nothing to undo.
    with suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")


class SqliteDb(Statements):
    """``Db`` on one SQLite file (``sqlite:///./gateway.db``, ``sqlite:////abs.db``) or
    ``sqlite:///:memory:``."""

    dialect: Dialect = SqliteDialect()

    def __init__(self, url: str, *, busy_timeout_ms: int) -> None:
        self.url = url
        self._path = database_path(url)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect and configure the connection."""
        if self._db is not None:
            return
        self._make_parent_dir()
        with _translated():
            db = await aiosqlite.connect(self._path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        self._db = db
        try:
            await self._configure(db)
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

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        with suppress(sqlite3.Error, ValueError):
            await db.close()

    def _open_db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("sqlite key store is not open")
        return self._db

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """The connection for one statement (autocommit; the lock keeps it out of another
        coroutine's open transaction)."""
        async with self._lock:
            with _translated():
                yield _Connection(self._open_db())

    @asynccontextmanager
    async def transaction(
        self, *, snapshot: bool = False, deadline: float | None = None
    ) -> AsyncIterator[Conn]:
        """``BEGIN IMMEDIATE`` (the write lock now, waiting at most the busy timeout), or
        ``BEGIN DEFERRED`` for a snapshot; ``deadline`` changes nothing here."""
        async with self._lock:
            db = self._open_db()
            with _translated():
                try:
                    await db.execute("BEGIN DEFERRED" if snapshot else "BEGIN IMMEDIATE")
                    yield _Connection(db)
                    await db.execute("COMMIT")
                except BaseException:
                    await _rollback_quietly(db)
                    raise

    def __repr__(self) -> str:
        return f"SqliteDb({self.url!r})"


def database_path(url: str) -> str:
    """The file (or ``:memory:``) of a ``sqlite:///`` URL: ``sqlite:////abs/path.db`` absolute,
    ``sqlite:///./rel.db`` relative to the working directory (the config loader has already made
    a configured one absolute, relative to the config file: README "Config-relative paths")."""
    if not url.startswith(URL_PREFIX):
        raise ValueError("SQLite URL must start with sqlite:///")
    path = url[len(URL_PREFIX) :].split("?", 1)[0]
    if not path:
        raise ValueError("SQLite URL has no database path")
    return path


# --------------------------------------------------------------------------------------------
# the backend


def sqlite_store(url: str, options: KeyStoreConfig) -> Store:
    """The key store on one SQLite file; other processes may write it too, so each node polls
    its change log."""
    db = SqliteDb(url, busy_timeout_ms=int(options.timeout * 1000))

    def poll(
        store: Store, cache: KeyCache, *, poll_interval: float, metrics: Metrics | None
    ) -> ChangeFeed:
        return ChangeFeedPoller(store.changes, cache, interval=poll_interval)

    return Store(db, follow=poll)
