"""Schema migrations: plain SQL files shipped as package data, one directory per dialect,
``gateway/store/sql/<dialect>/NNN_name.sql``.

``migrate`` applies the pending ones, all in one write transaction (with the dialect's
``migration_lock`` where the transaction alone does not serialize nodes starting at once), and
records each applied version in ``schema_migrations``: the later nodes find nothing to do, and a
failing migration leaves nothing behind.
"""

from __future__ import annotations

import re
from importlib import resources

from gateway.keys.model import utcnow
from gateway.store.db import Db
from gateway.store.rows import timestamp_text

SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)

MIGRATION_TIMEOUT = 60.0  # seconds: migrations may wait for another node's, and DDL is slow
_FILE_NAME = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")

Migration = tuple[int, str, str]  # (version, name, sql)


def migration_files(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` as (version, name, sql), ordered by version.

    Raises ``ValueError`` for an unknown dialect, a misnamed file or a duplicated version.
    """
    folder = resources.files("gateway.store").joinpath("sql", dialect)
    if not folder.is_dir():
        raise ValueError(f"no migrations for dialect {dialect!r}")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file {entry.name!r} is not named NNN_name.sql")
        version, name = int(match.group(1)), match.group(2)
        if version in found:
            raise ValueError(f"duplicate migration version {version} for {dialect!r}")
        found[version] = (version, name, entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


def pending(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """The migrations whose version is not in ``applied``, in order."""
    return [migration for migration in migrations if migration[0] not in applied]


async def migrate(db: Db) -> list[int]:
    """Apply the pending migrations of ``db``'s dialect; return the versions applied."""
    dialect = db.dialect
    migrations = migration_files(dialect.name)
    async with db.transaction(deadline=MIGRATION_TIMEOUT) as tx:
        if dialect.migration_lock is not None:
            await tx.execute(dialect.migration_lock)
        await tx.execute(SCHEMA_MIGRATIONS_DDL)
        rows = await tx.fetch("SELECT version FROM schema_migrations")
        todo = pending(migrations, {int(row[0]) for row in rows})
        for version, name, sql in todo:
            for statement in dialect.statements(sql):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                version,
                name,
                timestamp_text(utcnow()),
            )
    return [version for version, _, _ in todo]
