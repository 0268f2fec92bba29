"""What both SQL key stores share, whatever their dialect: the key columns and how records map to
and from rows, which key fields ``update_key`` may change (and whether to null), page limits and
cursors, what rotation does to the old key, and how audit changes become JSON. Each store keeps
only its SQL and how its driver stores a timestamp and a list of strings (``Encoders`` /
``Decoders``)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.errors import ValidationError
from gateway.keys.model import AuditEvent, KeyRecord, Namespace, Project, Scope, Workspace

KEY_COLUMNS = (
    "key_id",
    "key_hash",
    "key_prefix",
    "hint",
    "name",
    "description",
    "workspace_id",
    "project_id",
    "user_id",
    "key_type",
    "environment",
    "permissions",
    "scopes",
    "allowed_origins",
    "rate_limit_override",
    "concurrency_limit",
    "status",
    "expires_at",
    "last_used_at",
    "created_at",
    "created_by",
    "revoked_at",
    "revoked_by",
    "rotated_from",
)
CHANGE_RETENTION = timedelta(hours=1)  # how long the change feed keeps a row
MAX_PAGE = 1000

# update_key: KeyRecord field -> may it be set to null?
UPDATABLE: dict[str, bool] = {
    "name": False,
    "description": False,
    "permissions": False,
    "scopes": False,
    "allowed_origins": False,
    "rate_limit_override": True,
    "concurrency_limit": True,
    "expires_at": True,
    "status": False,
    "revoked_at": True,
    "revoked_by": True,
    "last_used_at": True,
}
DATETIME_FIELDS = frozenset({"expires_at", "revoked_at", "last_used_at"})
STRING_LIST_FIELDS = frozenset({"permissions", "allowed_origins"})


def utc(value: datetime) -> datetime:
    """A naive datetime is taken to be UTC; every value leaves in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def timestamp_text(value: datetime) -> str:
    """UTC ISO-8601 with microseconds: sorts as text in time order."""
    return utc(value).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True, slots=True)
class Encoders:
    """How one dialect stores a datetime, a scope list and a string list."""

    when: Callable[[datetime], Any]
    scopes: Callable[[Iterable[Scope]], Any]
    strings: Callable[[Iterable[str]], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Decoders:
    """How one dialect reads back a timestamp and a string list."""

    when: Callable[[Any], datetime]
    strings: Callable[[Any], tuple[str, ...]]

    def opt_when(self, value: Any) -> datetime | None:
        return None if value is None else self.when(value)


def scopes_json(scopes: Iterable[Scope]) -> str:
    """Scopes as JSON text (SQLite TEXT, Postgres jsonb)."""
    return json.dumps(
        [{"resource_id": s.resource_id, "operations": list(s.operations)} for s in scopes]
    )


def scopes_from_json(text: str) -> tuple[Scope, ...]:
    return tuple(
        Scope(resource_id=str(item["resource_id"]), operations=tuple(item["operations"]))
        for item in json.loads(text)
    )


def key_params(record: KeyRecord, encoders: Encoders) -> tuple[Any, ...]:
    """The record's values in ``KEY_COLUMNS`` order."""
    when = encoders.when

    def opt_when(value: datetime | None) -> Any:
        return None if value is None else when(value)

    return (
        record.key_id,
        record.key_hash,
        record.key_prefix,
        record.hint,
        record.name,
        record.description,
        record.workspace_id,
        record.project_id,
        record.user_id,
        record.key_type,
        record.environment,
        encoders.strings(record.permissions),
        encoders.scopes(record.scopes),
        encoders.strings(record.allowed_origins),
        record.rate_limit_override,
        record.concurrency_limit,
        record.status,
        opt_when(record.expires_at),
        opt_when(record.last_used_at),
        when(record.created_at),
        record.created_by,
        opt_when(record.revoked_at),
        record.revoked_by,
        record.rotated_from,
    )


def key_from_row(row: Any, decoders: Decoders) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        key_hash=row["key_hash"],
        key_prefix=row["key_prefix"],
        hint=row["hint"],
        name=row["name"],
        description=row["description"],
        workspace_id=row["workspace_id"],
        project_id=row["project_id"],
        user_id=row["user_id"],
        key_type=row["key_type"],
        environment=row["environment"],
        permissions=decoders.strings(row["permissions"]),
        scopes=scopes_from_json(row["scopes"]),
        allowed_origins=decoders.strings(row["allowed_origins"]),
        rate_limit_override=row["rate_limit_override"],
        concurrency_limit=row["concurrency_limit"],
        status=row["status"],
        expires_at=decoders.opt_when(row["expires_at"]),
        last_used_at=decoders.opt_when(row["last_used_at"]),
        created_at=decoders.when(row["created_at"]),
        created_by=row["created_by"],
        revoked_at=decoders.opt_when(row["revoked_at"]),
        revoked_by=row["revoked_by"],
        rotated_from=row["rotated_from"],
    )


def workspace_from_row(row: Any, decoders: Decoders) -> Workspace:
    return Workspace(
        id=row["id"],
        name=row["name"],
        default_project_id=row["default_project_id"],
        created_at=decoders.when(row["created_at"]),
    )


def project_from_row(row: Any, decoders: Decoders) -> Project:
    return Project(
        id=row["id"],
        name=row["name"],
        workspace_id=row["workspace_id"],
        created_at=decoders.when(row["created_at"]),
    )


def namespace_from_row(row: Any, decoders: Decoders) -> Namespace:
    return Namespace(
        id=row["id"],
        name=row["name"],
        workspace_id=row["workspace_id"],
        created_at=decoders.when(row["created_at"]),
    )


def audit_from_row(row: Any, decoders: Decoders) -> AuditEvent:
    return AuditEvent(
        id=int(row["id"]),
        at=decoders.when(row["at"]),
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        workspace_id=row["workspace_id"],
        changes=dict(json.loads(row["changes"])),
    )


def encode_changes(changes: Mapping[str, Any], encoders: Encoders) -> dict[str, Any]:
    """KeyRecord field changes -> column values; ``ValueError`` for an unknown field or a null
    where none is allowed. Column names therefore only ever come from ``UPDATABLE``."""
    return {field: _encode_change(field, value, encoders) for field, value in changes.items()}


def _encode_change(field: str, value: Any, encoders: Encoders) -> Any:
    if field not in UPDATABLE:
        raise ValueError(f"unknown or immutable key field {field!r}")
    if value is None:
        if not UPDATABLE[field]:
            raise ValueError(f"key field {field!r} cannot be null")
        return None
    if field in DATETIME_FIELDS:
        return encoders.when(value)
    if field == "scopes":
        return encoders.scopes(value)
    if field in STRING_LIST_FIELDS:
        return encoders.strings(value)
    return value


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError({"limit": f"must be between 1 and {MAX_PAGE}"})


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


def json_default(value: object) -> Any:
    """``json.dumps`` default for audit changes: datetimes, dataclasses (scopes), sets."""
    if isinstance(value, datetime):
        return timestamp_text(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
