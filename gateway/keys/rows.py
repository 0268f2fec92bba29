"""What both SQL key stores share, whatever their dialect: which key fields ``update_key`` may
change (and whether to null), page limits and cursors, what rotation does to the old key, and how
audit changes become JSON. Each store keeps only its own value encoding and SQL."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.errors import ValidationError
from gateway.keys.model import KeyRecord, Scope

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
