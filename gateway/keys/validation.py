"""Validation of key fields given to the admin API and the CLI. Every failing field is reported
at once (``ValidationError.errors``), unknown fields included."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.client_address import ALLOWED_IPS_MAX, allowed_ip
from gateway.errors import ValidationError
from gateway.keys.model import (
    ENFORCEMENTS,
    ENVIRONMENTS,
    KEY_TYPES,
    PERMISSION_PATTERN,
    REFILL_INTERVALS,
    ROLES,
    Credits,
    Scope,
    utcnow,
)
from gateway.origins import parse_pattern

# Limits shared with the OpenAPI document (gateway.admin.openapi), so the two never disagree.
PERMISSION = re.compile(PERMISSION_PATTERN)
NAME_MAX = 100
DESCRIPTION_MAX = 500
USER_ID_MAX = 254
EMAIL_MAX = 254
# local@domain.tld without spaces or control characters (ranges, not \s, which JSON Schema
# reads otherwise); compared and stored lower-cased
EMAIL_PATTERN = r"^[^@\x00-\x20\x7f-\xa0]+@[^@\x00-\x20\x7f-\xa0]+\.[^@\x00-\x20\x7f-\xa0]+$"
EMAIL = re.compile(EMAIL_PATTERN)
RESOURCE_ID_MAX = 200
# Counts are stored in 64-bit integer columns; a cap far above any real limit keeps them there.
COUNT_MAX = 1_000_000_000
GRACE_MAX = 31_536_000  # one year
PLAN_MAX = 64  # as the config's plan names (gateway.config.plans)
# The shape of an allowed origin, checked before gateway.origins parses it (which also forgives
# surrounding spaces and an empty query or fragment that the documented schema does not).
ORIGIN_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://(\*\.)?[^/?#\s@*]+$"
ORIGIN = re.compile(ORIGIN_PATTERN)
# RFC 3339 §5.6 date-time, checked before parsing: fromisoformat alone also takes other ISO forms.
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)
CREATE_FIELDS = frozenset(
    {
        "name",
        "description",
        "user_id",
        "user_email",
        "permissions",
        "scopes",
        "allowed_origins",
        "allowed_ips",
        "enforcement",
        "rate_limit_override",
        "concurrency_limit",
        "expires_at",
        "environment",
        "project_id",
        "key_type",
        "credits",
    }
)
UPDATE_FIELDS = frozenset(
    {
        "name",
        "description",
        "permissions",
        "scopes",
        "allowed_origins",
        "allowed_ips",
        "enforcement",
        "rate_limit_override",
        "concurrency_limit",
        "expires_at",
        "credits",
    }
)


# Control characters are refused in every free-text field: NUL cannot be stored in Postgres text
# at all, and the rest only ever arrive by mistake or to confuse logs and terminals. The
# description may hold tabs and line breaks. These patterns are published in the OpenAPI document.
PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
FREE_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
_PLAIN_TEXT = re.compile(PLAIN_TEXT_PATTERN)
_FREE_TEXT = re.compile(FREE_TEXT_PATTERN)


def _no_control(value: str, pattern: re.Pattern[str] = _PLAIN_TEXT) -> str:
    if not pattern.fullmatch(value):
        raise ValueError("must not contain control characters")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= NAME_MAX or not value.strip():
        raise ValueError(f"must be a string of 1 to {NAME_MAX} characters, not only spaces")
    return _no_control(value).strip()


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > DESCRIPTION_MAX:
        raise ValueError(f"must be a string of at most {DESCRIPTION_MAX} characters")
    return _no_control(value, _FREE_TEXT)


def _user_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= USER_ID_MAX:
        raise ValueError(f"must be a string of 1 to {USER_ID_MAX} characters")
    return _no_control(value)


def email(value: Any) -> str:
    """An email address, lower-cased: unique per workspace without regard to case."""
    if not isinstance(value, str) or len(value) > EMAIL_MAX or not EMAIL.fullmatch(value):
        raise ValueError(f"must be an email address of at most {EMAIL_MAX} characters")
    return value.lower()


def _permissions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, str) and PERMISSION.fullmatch(p) for p in value
    ):
        raise ValueError("must be a list of permission strings ([A-Za-z0-9_.:*-], 1-100 chars)")
    return tuple(dict.fromkeys(value))


def _scope(item: Any) -> Scope:
    if not isinstance(item, dict) or set(item) - {"resource_id", "operations"}:
        raise ValueError("each scope is {resource_id, operations}")
    resource_id, operations = item.get("resource_id"), item.get("operations")
    if not isinstance(resource_id, str) or not 1 <= len(resource_id) <= RESOURCE_ID_MAX:
        raise ValueError(f"scope resource_id must be a string of 1 to {RESOURCE_ID_MAX} characters")
    _no_control(resource_id)
    if not isinstance(operations, list) or not operations or not all(
        isinstance(o, str) and PERMISSION.fullmatch(o) for o in operations
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
        well_shaped = isinstance(origin, str) and ORIGIN.fullmatch(origin)
        pattern = parse_pattern(origin) if well_shaped else None
        if pattern is None or pattern.any_origin:
            raise ValueError(
                f"{origin!r} is not scheme://host[:port] or scheme://*.domain[:port]"
            )
    return tuple(dict.fromkeys(value))


def _allowed_ips(value: Any) -> tuple[str, ...]:
    """Addresses and CIDRs in canonical form, duplicates dropped; the first bad entry named."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > ALLOWED_IPS_MAX:
        raise ValueError(f"must be a list of at most {ALLOWED_IPS_MAX} IP addresses or CIDRs")
    return tuple(dict.fromkeys(allowed_ip(entry) for entry in value))


def _ip(value: Any) -> str:
    """The client address a key check is about (README "Key check API")."""
    if not isinstance(value, str) or "/" in value:
        raise ValueError(f"{value!r} is not an IP address")
    try:
        return allowed_ip(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def as_integer(value: Any) -> int | None:
    """An int, or a float with no fraction (JSON Schema counts 5.0 as an integer); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _positive_or_null(value: Any) -> int | None:
    if value is None:
        return None
    number = as_integer(value)
    if number is None or not 1 <= number <= COUNT_MAX:
        raise ValueError(f"must be an integer from 1 to {COUNT_MAX} or null")
    return number


def _count(value: Any, least: int) -> int:
    number = as_integer(value)
    if number is None or not least <= number <= COUNT_MAX:
        raise ValueError(f"must be an integer from {least} to {COUNT_MAX}")
    return number


def _credits(value: Any) -> Credits | None:
    """``{remaining, refill?: {amount, interval}}`` (README "Credits"), or null: none. The
    store's version and period are the service's to set (a create or a PATCH is a set)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"remaining", "refill"} or (
        "remaining" not in value
    ):
        raise ValueError("must be {remaining, refill?: {amount, interval}} or null")
    try:
        remaining = _count(value["remaining"], 0)
    except ValueError as exc:
        raise ValueError(f"remaining {exc}") from None
    refill = value.get("refill")
    if refill is None:
        return Credits(remaining, 0, 0)
    if not isinstance(refill, dict) or set(refill) != {"amount", "interval"}:
        raise ValueError("refill must be {amount, interval} or null")
    try:
        amount = _count(refill["amount"], 1)
    except ValueError as exc:
        raise ValueError(f"refill amount {exc}") from None
    if refill["interval"] not in REFILL_INTERVALS:
        raise ValueError(f"refill interval must be one of {', '.join(REFILL_INTERVALS)}")
    return Credits(remaining, 0, 0, 0, amount, str(refill["interval"]))


def parse_timestamp(value: str) -> datetime:
    if not RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a time zone")
    parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise ValueError("is out of range") from None


def _expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp or null")
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time with a time zone") from None
    if parsed <= utcnow():
        raise ValueError("must be in the future")
    return parsed


def grace_period(value: Any) -> int:
    """Missing or null means 0: a rotation without a stated grace period revokes at once."""
    if value is None:
        return 0
    number = as_integer(value)
    if number is None or not 0 <= number <= GRACE_MAX:
        raise ValueError(f"must be an integer from 0 to {GRACE_MAX}")
    return number


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


KEY_MAX = 512  # far above any key this gateway makes; never echoed in an error


def _key(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= KEY_MAX:
        raise ValueError(f"must be a string of 1 to {KEY_MAX} characters")
    return value


def _resource_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= RESOURCE_ID_MAX:
        raise ValueError(f"must be a string of 1 to {RESOURCE_ID_MAX} characters")
    return _no_control(value)


def _operation(value: Any) -> str:
    if not isinstance(value, str) or not PERMISSION.fullmatch(value):
        raise ValueError("must be an operation name ([A-Za-z0-9_.:*-], 1-100 chars)")
    return value


FIELD_CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "name": _name,
    "description": _description,
    "user_id": _user_id,
    "user_email": email,
    "email": email,
    "role": _one_of(ROLES),
    "permissions": _permissions,
    "scopes": _scopes,
    "allowed_origins": _origins,
    "allowed_ips": _allowed_ips,
    "enforcement": _one_of(ENFORCEMENTS),
    "ip": _ip,
    "rate_limit_override": _positive_or_null,
    "concurrency_limit": _positive_or_null,
    "expires_at": _expires_at,
    "environment": _one_of(ENVIRONMENTS),
    "project_id": _project_id,
    "key_type": _one_of(KEY_TYPES),
    "grace_period_seconds": grace_period,
    "plan": lambda value: _plan(value),
    "key": _key,
    "resource_id": _resource_id,
    "operation": _operation,
    "credits": _credits,
    "add": lambda value: _count(value, 1),
    "set": lambda value: _count(value, 0),
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


NAMED_FIELDS = frozenset({"name"})
MEMBER_FIELDS = frozenset({"email", "role"})
ROLE_FIELDS = frozenset({"role"})
ROTATE_FIELDS = frozenset({"grace_period_seconds"})
PLAN_FIELDS = frozenset({"plan"})
KEY_CHECK_FIELDS = frozenset({"key", "permissions", "resource_id", "operation", "ip"})
TOP_UP_FIELDS = frozenset({"add", "set"})


def validate_named(body: Any) -> str:
    """The ``{name}`` body of a workspace, project or namespace create: unknown fields rejected."""
    return str(validate_fields(body, NAMED_FIELDS, required=("name",))["name"])


def validate_plan(body: Any, plans: Collection[str]) -> str:
    """The ``{plan}`` body of a subscription: the name of a plan the config declares."""
    plan = validate_fields(body, PLAN_FIELDS, required=("plan",))["plan"]
    if plan not in plans:
        known = ", ".join(sorted(plans)) or "none are declared"
        raise ValidationError({"plan": f"unknown plan (plans: {known})"})
    return str(plan)


def _plan(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= PLAN_MAX:
        raise ValueError(f"must be the name of a plan (a string of 1 to {PLAN_MAX} characters)")
    return value


def validate_rotate(body: Any) -> int:
    """The ``{grace_period_seconds}`` body of a rotate: the grace period in seconds."""
    fields = validate_fields(body, ROTATE_FIELDS, required=())
    return grace_period(fields.get("grace_period_seconds"))


def validate_member(body: Any) -> tuple[str, str]:
    """The ``{email, role}`` body of a member add: (lower-cased email, role)."""
    fields = validate_fields(body, MEMBER_FIELDS, required=("email", "role"))
    return fields["email"], fields["role"]


def validate_role(body: Any) -> str:
    """The ``{role}`` body of a member's role change."""
    return str(validate_fields(body, ROLE_FIELDS, required=("role",))["role"])


def validate_top_up(body: Any) -> tuple[str, int]:
    """The ``{add: N}`` or ``{set: N}`` body of a credits top-up: (``add`` | ``set``, N)."""
    fields = validate_fields(body, TOP_UP_FIELDS, required=())
    if len(fields) != 1:
        raise ValidationError({"body": "give exactly one of add (N >= 1) or set (N >= 0)"})
    ((op, amount),) = fields.items()
    return op, amount


def validate_key_check(body: Any) -> dict[str, Any]:
    """The body of a key check: ``key`` required; ``resource_id`` and ``operation`` together
    or not at all (a scope grants operations on a resource)."""
    fields = validate_fields(body, KEY_CHECK_FIELDS, required=("key",))
    alone = {"resource_id": "operation", "operation": "resource_id"}
    errors = {name: f"needs {other} too" for name, other in alone.items()
              if name in fields and other not in fields}
    if errors:
        raise ValidationError(errors)
    return fields
