"""The Dialect contract: everything the tables' SQL differs in between databases, and nothing
else. Pure: it builds SQL text and values, it never runs them (that is the ``Db``'s job).
Implementations: ``postgres.PostgresDialect`` and ``sqlite.SqliteDialect``.

The tables (``keys.py``, ``tenancy.py`` …) write every other statement once, in the SQL both
databases speak, with ``$n`` parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.store.usage import UsageDelta

Batch = tuple[str, list[tuple[Any, ...]]]  # one statement and its rows, for Conn.executemany


class Dialect(Protocol):
    name: str  # the migrations' folder: gateway/store/sql/<name>/NNN_*.sql
    owner_lock: str | None  # held before counting an owner's keys ($1: the owner); None: the
    # write transaction already excludes every other writer
    row_lock: str  # appended to a SELECT that is about to update the row it reads
    share_lock: str  # appended to a SELECT whose row must not change until the commit
    migration_lock: str | None  # held while migrating; None: the write transaction is enough
    last_change_seq: str  # SELECT: the highest change-log seq ever given out (0 or no row: none)

    def timestamp(self, value: datetime) -> Any:
        """A datetime as stored."""

    def read_timestamp(self, value: Any) -> datetime:
        """A stored timestamp as an aware UTC datetime."""

    def strings(self, values: Iterable[str]) -> Any:
        """A list of strings as stored (permissions, allowed origins)."""

    def read_strings(self, value: Any) -> tuple[str, ...]: ...

    def has_resource(self, param: str) -> str:
        """WHERE clause: the key's scopes name resource ``param`` (a ``$n``), or it has none."""

    def statements(self, script: str) -> list[str]:
        """A migration script as the statements to execute, in order."""

    def append_changes(self, key_hashes: Sequence[str], at: Any) -> Batch:
        """Add the changed hashes to the change log at ``at`` (a stored timestamp), and tell
        the listening nodes where the database can (delivered at commit)."""

    def add_usage(self, deltas: Sequence[UsageDelta]) -> list[Batch]:
        """Add the deltas' counts (summed per key; unknown keys skipped) and move
        ``last_used_at`` forward, as few statements as the database allows."""
