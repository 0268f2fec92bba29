"""api_keys: the key records, for every database.

Every mutation is one write transaction that also appends the changed hashes to the change log
(``feed.py``), so other nodes hear of it exactly when it commits. ``create`` counts the owner's
active keys and inserts under the owner lock, so racing creates (any process, any node) cannot
pass ``max_active_per_user``; ``rotate`` inserts the new key and retires the old in one
transaction. ``get_by_hash`` (the request path's cache miss) is one query, the key's principal
included (``PRINCIPAL``). A ``usr_`` owner must be a member of the key's workspace: ``create``
checks under the owner lock that ``Members.remove`` also takes, so a key created while its owner
is removed is either refused or revoked with the others.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.errors import KeyLimitReached, MemberNotFound, NotFound, ValidationError
from gateway.keys.model import MEMBER_ID_PREFIX, Credits, KeyPage, KeyRecord, utcnow
from gateway.store.db import Conn, Db, Row
from gateway.store.feed import ChangeLog
from gateway.store.rows import (
    CREDITS,
    SCOPES,
    STRINGS,
    TIMESTAMP,
    Rows,
    check_limit,
    timestamp_text,
    utc,
)

KINDS = {
    "permissions": STRINGS,
    "scopes": SCOPES,
    "allowed_origins": STRINGS,
    "allowed_ips": STRINGS,
    "expires_at": TIMESTAMP,
    "last_used_at": TIMESTAMP,
    "created_at": TIMESTAMP,
    "revoked_at": TIMESTAMP,
    "disabled_at": TIMESTAMP,
    "credits": CREDITS,
}
# update: the fields that may change -> may it be set to null?
UPDATABLE: dict[str, bool] = {
    "name": False,
    "description": False,
    "permissions": False,
    "scopes": False,
    "allowed_origins": False,
    "allowed_ips": False,
    "enforcement": False,
    "rate_limit_override": True,
    "concurrency_limit": True,
    "expires_at": True,
    "status": False,
    "revoked_at": True,
    "revoked_by": True,
    "last_used_at": True,
    "disabled_at": True,
    "credits": True,
}
# the key's plan comes with it, in the same one query (a workspace has at most one row)
_OF_WORKSPACE = "FROM subscriptions s WHERE s.workspace_id = api_keys.workspace_id"
SUBSCRIPTION = {
    "subscription_id": f"(SELECT s.subscription_id {_OF_WORKSPACE})",
    "plan": f"(SELECT s.plan {_OF_WORKSPACE})",
}
ACTIVE = "status = 'active' AND (expires_at IS NULL OR expires_at > {now})"
COUNT_ACTIVE = "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 AND " + ACTIVE.format(now="$2")
ORDER = "ORDER BY created_at, key_id"  # the stable order of pages (and of the index)
NEWEST_FIRST = "ORDER BY created_at DESC, key_id DESC"  # the console's, on the same index
# the effective status (KeyRecord.effective_status) as SQL; {now} is a parameter
NOT_EXPIRED = "(expires_at IS NULL OR expires_at > {now})"
STATUS_WHERE = {
    "active": f"status = 'active' AND {NOT_EXPIRED} AND disabled_at IS NULL",
    "disabled": f"status = 'active' AND {NOT_EXPIRED} AND disabled_at IS NOT NULL",
    "revoked": "status = 'revoked'",
    "expired": "status <> 'revoked' AND expires_at IS NOT NULL AND expires_at <= {now}",
}
SEARCH = (
    "(LOWER(name) LIKE {pattern} ESCAPE '\\' OR key_id = {exact} OR key_prefix = {exact} "
    "OR hint = {exact})"
)
# Who a key acts for (seed 003 principal_id), read with the key: the owner when it is a member of
# the key's workspace, else the service principal svc_<first key id of its rotation chain>, the
# same across rotations and never another key's.
PRINCIPAL = (
    "COALESCE((SELECT m.user_id FROM members m WHERE m.user_id = api_keys.user_id"
    " AND m.workspace_id = api_keys.workspace_id),"
    " 'svc_' || substr(COALESCE(api_keys.rotated_from, api_keys.key_id), 5))"
)
IS_MEMBER = "SELECT COUNT(*) FROM members WHERE user_id = $1 AND workspace_id = $2"
OWNED = "SELECT key_id, key_hash FROM api_keys WHERE workspace_id = $1 AND user_id = $2 AND {}"
CHAIN = "WHERE key_id = $1 OR rotated_from = $1"  # a rotation chain, by its first key's id


class Params:
    """Parameters of a statement built from pieces: ``add(value)`` returns its ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


class KeyTable:
    def __init__(self, db: Db, changes: ChangeLog) -> None:
        self._db = db
        self._dialect = db.dialect
        self._changes = changes
        derived = {"principal_id": PRINCIPAL, **SUBSCRIPTION}
        self._rows = Rows("api_keys", KeyRecord, KINDS, db.dialect, derived)
        self._by_hash = f"{self._rows.select} WHERE key_hash = $1"  # built once: the hot path

    # reads ----------------------------------------------------------------------------------
    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._db.fetchrow(self._by_hash, key_hash)
        return self._rows.read(row) if row is not None else None

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._get(self._db, key_id)

    async def chain(self, root_key_id: str) -> list[KeyRecord]:
        """A rotation chain, oldest first: its first key and every key rotated from it."""
        rows = await self._db.fetch(
            f"{self._rows.select} WHERE key_id = $1 OR rotated_from = $1 {ORDER}", root_key_id
        )
        return [self._rows.read(row) for row in rows]

    async def count_active(self, user_id: str) -> int:
        return int(await self._db.fetchval(COUNT_ACTIVE, user_id, self._stamp(utcnow())))

    async def page(
        self,
        workspace_id: str | None,
        *,
        include_revoked: bool = False,
        user_id: str | None = None,
        resource_id: str | None = None,
        key_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        search: str | None = None,
        environment: str | None = None,
        status: str | None = None,
        newest_first: bool = False,
    ) -> KeyPage:
        """Stable order (created_at, key_id), or its reverse; ``include_revoked`` also returns
        revoked and expired keys; ``resource_id`` keeps keys whose scopes name it or have no
        scopes. The console's filters: ``search`` (a name containing it, any case, or a key id,
        key prefix or hint equal to it), ``environment``, ``status`` (the effective status:
        ``include_revoked`` is then moot)."""
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        params = Params()
        where = self._filter(params, workspace_id, include_revoked or status is not None,
                             user_id, resource_id, key_type)
        where += self._console_filter(params, search, environment, status)
        count_values = list(params.values)
        page_where = where
        if after is not None:
            created_at, key_id = params.add(self._stamp(after[0])), params.add(after[1])
            beyond = "<" if newest_first else ">"
            page_where = f"{where} AND (created_at, key_id) {beyond} ({created_at}, {key_id})"
        page_limit = params.add(limit + 1)
        order = NEWEST_FIRST if newest_first else ORDER
        async with self._db.transaction(snapshot=True) as tx:
            total = await tx.fetchval(f"SELECT COUNT(*) FROM api_keys WHERE {where}", *count_values)
            rows = await tx.fetch(
                f"{self._rows.select} WHERE {page_where} {order} LIMIT {page_limit}",
                *params.values,
            )
        return self._key_page(rows, int(total), limit)

    # writes ---------------------------------------------------------------------------------
    async def create(self, record: KeyRecord, *, max_active_per_user: int) -> KeyRecord:
        """Insert; ``KeyLimitReached`` if ``record.user_id`` already holds
        ``max_active_per_user`` active (not revoked, not expired) keys."""
        now = utcnow()
        async with self._db.transaction() as tx:
            if record.user_id is not None:
                await self.lock_owner(tx, record.user_id)
                await self._check_member(tx, record)
                await self._check_owner_limit(tx, record.user_id, max_active_per_user, now)
            await tx.execute(self._rows.insert, *self._rows.params(record))
            await self._changes.append(tx, [record.key_hash], now)
            return await self._must_get(tx, record.key_id)

    async def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord:
        """Apply field changes (names of ``KeyRecord``); ``NotFound`` for an unknown key,
        ``ValueError`` for a field that cannot change (or cannot be null)."""
        columns = self._columns(changes)
        now = utcnow()
        async with self._db.transaction() as tx:
            key_hash = (await self._locked(tx, "key_hash", key_id))["key_hash"]
            if columns:
                await self._set(tx, key_id, columns)
                await self._changes.append(tx, [key_hash], now)
            return await self._must_get(tx, key_id)

    async def change_credits(
        self, key_id: str, change: Callable[[Credits | None], Credits | None]
    ) -> tuple[KeyRecord, list[str]]:
        """Under the key's row lock, its credits become ``change(current)`` on every key of its
        rotation chain (they spend one balance, README "Credits"); their hashes go to the change
        log. Returns the key and those hashes; ``change`` may raise to change nothing."""
        now = utcnow()
        async with self._db.transaction() as tx:
            record = self._rows.read(await self._locked(tx, "*", key_id))
            credits = self._rows.value("credits", change(record.credits))
            root = record.rotated_from or record.key_id
            rows = await tx.fetch(f"SELECT key_hash FROM api_keys {CHAIN}", root)
            await tx.execute(f"UPDATE api_keys SET credits = $2 {CHAIN}", root, credits)
            hashes = [row["key_hash"] for row in rows]
            await self._changes.append(tx, hashes, now)
            return await self._must_get(tx, key_id), hashes

    async def rotate(
        self, old_key_id: str, new: KeyRecord, old_expires_at: datetime, revoked_by: str | None
    ) -> tuple[KeyRecord, KeyRecord]:
        """Insert ``new`` and set the old key's expiry (or revoke it when ``old_expires_at`` is
        not in the future) in one transaction; return (old, new)."""
        now = utcnow()
        async with self._db.transaction() as tx:
            await self._locked(tx, "key_id", old_key_id)
            old = await self._must_get(tx, old_key_id)
            retire = retire_changes(old, old_expires_at, revoked_by, now)
            if retire:
                await self._set(tx, old_key_id, self._columns(retire))
            await tx.execute(self._rows.insert, *self._rows.params(new))
            await self._changes.append(tx, [old.key_hash, new.key_hash], now)
            return await self._must_get(tx, old_key_id), await self._must_get(tx, new.key_id)

    async def revoke_owned(
        self, tx: Conn, workspace_id: str, user_id: str, revoked_by: str | None, now: datetime
    ) -> list[KeyRecord]:
        """In ``tx`` (which holds the owner lock): revoke every active key ``user_id`` owns in
        the workspace, disabled ones included; log their hashes; return them as revoked."""
        active = ACTIVE.format(now="$3") + self._dialect.row_lock
        rows = await tx.fetch(OWNED.format(active), workspace_id, user_id, self._stamp(now))
        revoke = self._columns({"status": "revoked", "revoked_at": now, "revoked_by": revoked_by})
        for row in rows:
            await self._set(tx, row["key_id"], revoke)
        if rows:
            await self._changes.append(tx, [row["key_hash"] for row in rows], now)
        return [await self._must_get(tx, row["key_id"]) for row in rows]

    async def lock_owner(self, tx: Conn, user_id: str) -> None:
        """Serialize this owner's creates (and a member's removal) across processes."""
        if self._dialect.owner_lock is not None:
            await tx.execute(self._dialect.owner_lock, user_id)

    # helpers --------------------------------------------------------------------------------
    async def _check_member(self, tx: Conn, record: KeyRecord) -> None:
        user_id = record.user_id
        if user_id is None or not user_id.startswith(MEMBER_ID_PREFIX):
            return
        if not await tx.fetchval(IS_MEMBER, user_id, record.workspace_id):
            raise MemberNotFound(f"member {user_id} not found")

    def _stamp(self, value: datetime) -> Any:
        return self._dialect.timestamp(value)

    async def _get(self, conn: Conn, key_id: str) -> KeyRecord | None:
        row = await conn.fetchrow(f"{self._rows.select} WHERE key_id = $1", key_id)
        return self._rows.read(row) if row is not None else None

    async def _must_get(self, tx: Conn, key_id: str) -> KeyRecord:
        record = await self._get(tx, key_id)
        assert record is not None  # written in this very transaction
        return record

    async def _locked(self, tx: Conn, columns: str, key_id: str) -> Row:
        """The key's row (``*``: as a record reads it), locked until ``tx`` ends; ``NotFound``
        for an unknown key."""
        select = self._rows.select if columns == "*" else f"SELECT {columns} FROM api_keys"
        row = await tx.fetchrow(f"{select} WHERE key_id = $1{self._dialect.row_lock}", key_id)
        if row is None:
            raise NotFound(f"key {key_id} not found")
        return row

    async def _check_owner_limit(
        self, tx: Conn, user_id: str, max_active: int, now: datetime
    ) -> None:
        active = int(await tx.fetchval(COUNT_ACTIVE, user_id, self._stamp(now)))
        if active >= max_active:
            raise KeyLimitReached(f"user already holds {active} active keys (max {max_active})")

    def _columns(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Field changes -> column values; ``ValueError`` for a field not in ``UPDATABLE`` or
        a null where none is allowed (so column names only ever come from ``UPDATABLE``)."""
        for field, value in changes.items():
            if field not in UPDATABLE:
                raise ValueError(f"unknown or immutable key field {field!r}")
            if value is None and not UPDATABLE[field]:
                raise ValueError(f"key field {field!r} cannot be null")
        return {field: self._rows.value(field, value) for field, value in changes.items()}

    async def _set(self, tx: Conn, key_id: str, columns: dict[str, Any]) -> None:
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, 2))
        await tx.execute(
            f"UPDATE api_keys SET {assignments} WHERE key_id = $1", key_id, *columns.values()
        )

    def _filter(
        self,
        params: Params,
        workspace_id: str | None,
        include_revoked: bool,
        user_id: str | None,
        resource_id: str | None,
        key_type: str | None,
    ) -> str:
        clauses = [
            f"{column} = {params.add(value)}"
            for column, value in (
                ("workspace_id", workspace_id), ("user_id", user_id), ("key_type", key_type)
            )
            if value is not None
        ]  # fmt: skip
        if not include_revoked:
            clauses.append(ACTIVE.format(now=params.add(self._stamp(utcnow()))))
        if resource_id is not None:
            clauses.append(self._dialect.has_resource(params.add(resource_id)))
        return " AND ".join(clauses) or "TRUE"

    def _console_filter(
        self, params: Params, search: str | None, environment: str | None, status: str | None
    ) -> str:
        clauses = []
        if environment is not None:
            clauses.append(f"environment = {params.add(environment)}")
        if status is not None:
            if status not in STATUS_WHERE:
                raise ValidationError({"status": f"must be one of {', '.join(STATUS_WHERE)}"})
            clause = STATUS_WHERE[status]
            if "{now}" in clause:  # every parameter sent must be used (Postgres)
                clause = clause.format(now=params.add(self._stamp(utcnow())))
            clauses.append(clause)
        if search:
            pattern = "%" + like_escape(search.lower()) + "%"
            clauses.append(SEARCH.format(pattern=params.add(pattern), exact=params.add(search)))
        return "".join(f" AND {clause}" for clause in clauses)

    def _key_page(self, rows: list[Row], total: int, limit: int) -> KeyPage:
        page = [self._rows.read(row) for row in rows[:limit]]
        last = page[-1] if len(rows) > limit else None
        next_cursor = encode_cursor(last.created_at, last.key_id) if last else None
        return KeyPage(results=page, total=total, next_cursor=next_cursor)


def retire_changes(
    old: KeyRecord, old_expires_at: datetime, revoked_by: str | None, now: datetime
) -> dict[str, Any]:
    """What rotation does to the old key: expire it later, or revoke it now. Rotation never
    extends a key's life, and an already revoked key stays as it was."""
    if old.status == "revoked":
        return {}
    old_expires_at = utc(old_expires_at)
    if old_expires_at <= now:
        return {"status": "revoked", "revoked_at": now, "revoked_by": revoked_by}
    if old.expires_at is not None and old.expires_at <= old_expires_at:
        return {}
    return {"expires_at": old_expires_at}


def like_escape(text: str) -> str:
    """``text`` matched literally by LIKE … ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def encode_cursor(created_at: datetime, key_id: str) -> str:
    raw = json.dumps([timestamp_text(created_at), key_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, key_id) of the last row of the previous page."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError("not a pair")
        created_at, key_id = value
        if not (isinstance(created_at, str) and isinstance(key_id, str)):
            raise ValueError("not strings")
        return utc(datetime.fromisoformat(created_at)), key_id
    except ValueError:
        raise ValidationError({"cursor": "malformed cursor"}) from None

