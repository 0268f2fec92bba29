"""Schema migrations shared by the SQL key stores.

Migrations are plain SQL files shipped as package data, one directory per dialect:
``gateway/keys/sql/<dialect>/NNN_name.sql``. ``migration_files`` reads and orders them; each store
applies the pending ones in its own way (SQLite: one ``BEGIN IMMEDIATE`` transaction; Postgres:
under an advisory lock) and records each applied version in ``schema_migrations``.
"""

from __future__ import annotations

import re
from importlib import resources

SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)

_FILE_NAME = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")

Migration = tuple[int, str, str]  # (version, name, sql)


def migration_files(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` as (version, name, sql), ordered by version.

    Raises ``ValueError`` for an unknown dialect, a misnamed file or a duplicated version.
    """
    folder = resources.files("gateway.keys").joinpath("sql", dialect)
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
