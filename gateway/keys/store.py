"""The key-store contract. Implementations live beside it (``sqlite.py``, later ``postgres.py``)
and pass one contract test suite (``tests/keys/test_store_contract.py``).

Every method translates its driver's exceptions into ``StoreUnavailable`` (store unreachable,
locked, timed out); lookups of things that do not exist return ``None`` or raise ``NotFound``
as documented; invariants raise ``KeyLimitReached``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.keys.model import (
    AuditEvent,
    KeyPage,
    KeyRecord,
    KeyUsage,
    Namespace,
    Project,
    Workspace,
)


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Usage gathered in memory and written behind in one batch."""

    key_id: str
    requests: int
    rate_limited: int
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One row of the change feed: the hash whose cached entry must be dropped."""

    seq: int
    key_hash: str


class KeyStore(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers (``/readyz``); never raises."""

    # keys ------------------------------------------------------------------------------------
    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def create_key(self, record: KeyRecord, *, max_active_per_user: int) -> KeyRecord:
        """Insert; raise ``KeyLimitReached`` if ``record.user_id`` already holds
        ``max_active_per_user`` active (not revoked, not expired) keys — checked in the same
        transaction as the insert."""

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        """Apply field changes (names of ``KeyRecord``); raise ``NotFound``."""

    async def rotate_key(
        self, old_key_id: str, new: KeyRecord, old_expires_at: datetime, revoked_by: str | None
    ) -> tuple[KeyRecord, KeyRecord]:
        """Insert ``new`` and set the old key's expiry (or revoke it when ``old_expires_at`` is
        not in the future) in one transaction; return (old, new)."""

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
        """Stable order (created_at, key_id); ``include_revoked`` also returns revoked and
        expired keys; ``resource_id`` keeps keys whose scopes name it or have no scopes."""

    async def count_active_for_user(self, user_id: str) -> int: ...

    # tenancy ---------------------------------------------------------------------------------
    async def create_workspace(self, name: str) -> Workspace:
        """Create the workspace and its default project together."""

    async def get_workspace(self, workspace_id: str) -> Workspace | None: ...

    async def list_workspaces(self) -> list[Workspace]: ...

    async def create_project(self, workspace_id: str, name: str) -> Project: ...

    async def get_project(self, project_id: str) -> Project | None: ...

    async def list_projects(self, workspace_id: str) -> list[Project]: ...

    async def create_namespace(self, workspace_id: str, name: str) -> Namespace:
        """Raise ``Conflict`` when the name is taken, ``NotFound`` for an unknown workspace."""

    async def list_namespaces(self, workspace_id: str) -> list[Namespace]: ...

    # usage, audit, change feed ---------------------------------------------------------------
    async def record_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add the counts and advance ``last_used_at``, in one statement/transaction."""

    async def get_usage(self, key_id: str) -> KeyUsage | None: ...

    async def add_audit(
        self,
        *,
        actor: str | None,
        action: str,
        target: str,
        workspace_id: str | None,
        changes: dict[str, Any],
    ) -> None: ...

    async def list_audit(self, workspace_id: str | None, limit: int = 100) -> list[AuditEvent]: ...

    async def changes_since(self, seq: int) -> list[KeyChange]:
        """Key hashes changed after ``seq`` (every create/update/revoke/rotate appends one)."""

    async def last_change_seq(self) -> int: ...
