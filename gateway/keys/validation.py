"""Validation of key fields given to the admin API and the CLI. Every failing field is reported
at once (``ValidationError.errors``), unknown fields included."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.errors import ValidationError
from gateway.keys.model import ENVIRONMENTS, KEY_TYPES, Scope, utcnow
from gateway.origins import parse_pattern

PERMISSION = re.compile(r"^[A-Za-z0-9_.:*-]{1,100}$")
CREATE_FIELDS = frozenset(
    {
        "name",
        "description",
        "user_id",
        "permissions",
        "scopes",
        "allowed_origins",
        "rate_limit_override",
        "concurrency_limit",
        "expires_at",
        "environment",
        "project_id",
        "key_type",
    }
)
UPDATE_FIELDS = frozenset(
    {
        "name",
        "description",
        "permissions",
        "scopes",
        "allowed_origins",
        "rate_limit_override",
        "concurrency_limit",
        "expires_at",
    }
)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 100:
        raise ValueError("must be a string of 1 to 100 characters")
    return value.strip()


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 500:
        raise ValueError("must be a string of at most 500 characters")
    return value


def _user_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 254:
        raise ValueError("must be a string of 1 to 254 characters")
    return value


def _permissions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, str) and PERMISSION.match(p) for p in value
    ):
        raise ValueError("must be a list of permission strings ([A-Za-z0-9_.:*-], 1-100 chars)")
    return tuple(dict.fromkeys(value))


def _scope(item: Any) -> Scope:
    if not isinstance(item, dict) or set(item) - {"resource_id", "operations"}:
        raise ValueError("each scope is {resource_id, operations}")
    resource_id, operations = item.get("resource_id"), item.get("operations")
    if not isinstance(resource_id, str) or not 1 <= len(resource_id) <= 200:
        raise ValueError("scope resource_id must be a string of 1 to 200 characters")
    if not isinstance(operations, list) or not operations or not all(
        isinstance(o, str) and PERMISSION.match(o) for o in operations
    ):
        raise ValueError("scope operations must be a non-empty list of strings")
    return Scope(resource_id, tuple(dict.fromkeys(operations)))


def _scopes(value: Any) -> tuple[Scope, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of {resource_id, operations}")
    return tuple(_scope(item) for item in value)


def _origins(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of origins")
    for origin in value:
        pattern = parse_pattern(origin) if isinstance(origin, str) else None
        if pattern is None or pattern.any_origin:
            raise ValueError(
                f"{origin!r} is not scheme://host[:port] or scheme://*.domain[:port]"
            )
    return tuple(dict.fromkeys(value))


def _positive_or_null(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be an integer >= 1 or null")
    return value


def parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone (RFC 3339)")
    return parsed.astimezone(UTC)


def _expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp or null")
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp with a time zone") from None
    if parsed <= utcnow():
        raise ValueError("must be in the future")
    return parsed


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return check


def _project_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("must be a project id")
    return value


FIELD_CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "name": _name,
    "description": _description,
    "user_id": _user_id,
    "permissions": _permissions,
    "scopes": _scopes,
    "allowed_origins": _origins,
    "rate_limit_override": _positive_or_null,
    "concurrency_limit": _positive_or_null,
    "expires_at": _expires_at,
    "environment": _one_of(ENVIRONMENTS),
    "project_id": _project_id,
    "key_type": _one_of(KEY_TYPES),
}


def validate_fields(
    body: Any, allowed: frozenset[str], required: tuple[str, ...]
) -> dict[str, Any]:
    """Clean values for the fields present in ``body``; every problem in one ValidationError."""
    if not isinstance(body, dict):
        raise ValidationError({"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name in sorted(set(body) - allowed):
        errors[name] = "unknown field"
    for name in required:
        if name not in body:
            errors[name] = "is required"
    for name in sorted(set(body) & allowed):
        try:
            clean[name] = FIELD_CHECKS[name](body[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ValidationError(errors)
    return clean


def validate_name(value: Any, field: str = "name") -> str:
    try:
        return _name(value)
    except ValueError as exc:
        raise ValidationError({field: str(exc)}) from None
