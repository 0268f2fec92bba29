"""The Db contract: the little the tables need from a database connection.

Every statement is written with ``$1, $2, …`` parameters (a backend whose driver wants another
style rewrites them); rows are read by column name or position. A ``Db`` runs one statement at a
time on a connection of its own (autocommit), or several in ``transaction()``. Implementations:
``postgres.PostgresDb`` (an asyncpg pool) and ``sqlite.SqliteDb`` (one aiosqlite connection).

Driver errors never leave a ``Db``: they become ``StoreUnavailable`` (unreachable, locked, timed
out, closed), ``Conflict`` (a unique key taken), ``NotFound`` (a referenced row missing) or
``ValueError`` (a check constraint), so the tables above are driver-blind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.store.dialect import Dialect


class Row(Protocol):
    """A result row: ``row["column"]`` or ``row[0]``."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Conn(Protocol):
    """Statements on one connection (inside a transaction when given by ``transaction()``)."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row (None without rows)."""

    async def execute(self, sql: str, *args: Any) -> object: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Db(Conn, Protocol):
    dialect: Dialect
    url: str

    async def open(self) -> None:
        """Connect (migrations are the store's business, not the Db's)."""

    async def close(self) -> None:
        """Disconnect; harmless when not open."""

    async def ping(self) -> bool:
        """True when the database answers (``/readyz``); never raises."""

    def transaction(
        self, *, snapshot: bool = False, deadline: float | None = None
    ) -> AbstractAsyncContextManager[Conn]:
        """One connection in one transaction, committed when the block ends, rolled back when
        it raises. ``snapshot``: only reads, all seeing the same moment; otherwise a write
        transaction, serialized against other writers as each backend needs. ``deadline``
        (seconds) replaces the usual per-call timeout, for migrations."""


class Statements:
    """``Db``'s one-statement calls and ``ping``, for a backend that provides ``connection()``:
    each call borrows a connection for itself (autocommit)."""

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.connection() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> object:
        async with self.connection() as conn:
            return await conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.connection() as conn:
            await conn.executemany(sql, rows)

    async def ping(self) -> bool:
        try:
            await self.fetchval("SELECT COUNT(*) FROM schema_migrations")
        except Exception:
            return False
        return True
