"""The key store: one ``Store`` per database, its tables by noun, each written once.

    Store ── keys      KeyTable     api_keys          keys.py
          ├─ tenancy   Tenancy      workspaces, projects, namespaces   tenancy.py
          ├─ members   Members      members           members.py
          ├─ audit     AuditLog     audit_log         audit.py
          ├─ usage     UsageTable   key_usage, usage_*_buckets    usage.py
          ├─ subscriptions  Subscriptions  subscriptions  subscriptions.py
          ├─ console   ConsoleTable console_links, console_sessions, console_reveals  console.py
          └─ changes   ChangeLog    key_changes       feed.py
               all on one Db (db.py): PostgresDb (postgres.py) or SqliteDb (sqlite.py),
               whose Dialect (dialect.py) says what their SQL differs in.

A backend is a function ``(url, KeyStoreConfig) -> Store`` (``postgres_store``,
``sqlite_store``), chosen by URL scheme in ``gateway.services``; it also says how a node hears of
the other nodes' changes (``change_feed``). Migrations: ``sql/<dialect>/NNN_*.sql``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.store.audit import AuditLog
from gateway.store.console import ConsoleTable
from gateway.store.db import Db
from gateway.store.feed import ChangeLog, KeyChange
from gateway.store.keys import KeyTable
from gateway.store.members import Members
from gateway.store.migrations import migrate
from gateway.store.subscriptions import Subscriptions
from gateway.store.tenancy import Tenancy
from gateway.store.usage import MinuteCounts, Retention, UsageDelta, UsageTable

if TYPE_CHECKING:
    from gateway.keys.cache import KeyCache
    from gateway.keys.invalidation import ChangeFeed
    from gateway.metrics import Metrics

__all__ = [
    "FollowChanges", "KeyChange", "MinuteCounts", "Retention", "Store", "UsageDelta",
]


class FollowChanges(Protocol):
    """A backend's way for a node to hear of key changes made elsewhere."""

    def __call__(
        self, store: Store, cache: KeyCache, *, poll_interval: float, metrics: Metrics | None
    ) -> ChangeFeed: ...


class Store:
    def __init__(self, db: Db, follow: FollowChanges) -> None:
        self.db = db
        self.changes = ChangeLog(db)
        self.keys = KeyTable(db, self.changes)
        self.tenancy = Tenancy(db)
        self.members = Members(db, self.keys)
        self.audit = AuditLog(db)
        self.usage = UsageTable(db)
        self.subscriptions = Subscriptions(db, self.changes)
        self.console = ConsoleTable(db)
        self._follow = follow
        # The flat names the callers (KeyService, the caches, the usage recorder, the admin
        # API) used before the split, bound to the table that owns each.
        keys, tenancy = self.keys, self.tenancy
        self.get_key_by_hash = keys.get_by_hash
        self.get_key = keys.get
        self.create_key = keys.create
        self.update_key = keys.update
        self.rotate_key = keys.rotate
        self.list_keys = keys.page
        self.count_active_for_user = keys.count_active
        self.create_workspace = tenancy.create_workspace
        self.get_workspace = tenancy.get_workspace
        self.list_workspaces = tenancy.list_workspaces
        self.create_project = tenancy.create_project
        self.get_project = tenancy.get_project
        self.list_projects = tenancy.list_projects
        self.create_namespace = tenancy.create_namespace
        self.list_namespaces = tenancy.list_namespaces
        self.record_usage = self.usage.add
        self.get_usage = self.usage.get
        self.add_audit = self.audit.add
        self.list_audit = self.audit.latest
        self.changes_since = self.changes.since
        self.last_change_seq = self.changes.last_seq

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        await self.db.open()
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        return await migrate(self.db)

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> bool:
        """True when the store answers (``/readyz``); never raises."""
        return await self.db.ping()

    def change_feed(
        self, cache: KeyCache, *, poll_interval: float, metrics: Metrics | None
    ) -> ChangeFeed:
        """How this node hears of key changes made by other processes and nodes, and drops
        them from ``cache``: the backend's own way (polled, or pushed at commit)."""
        return self._follow(self, cache, poll_interval=poll_interval, metrics=metrics)

    def __repr__(self) -> str:
        return f"Store({self.db!r})"
