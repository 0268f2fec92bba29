"""What a key may do, decided the same way on the request path (gateway.pipeline's
authenticate and authorize) and by the key check API (gateway.admin.key_check): its status,
its permissions expanded through ``permissions.implies``, its scopes."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import (
    DISABLED_API_KEY,
    EXPIRED_API_KEY,
    INSUFFICIENT_PERMISSIONS,
    REVOKED_API_KEY,
    GatewayError,
)
from gateway.keys.model import KeyRecord, utcnow


def check_status(record: KeyRecord) -> None:
    derived = record.expires_at is not None or record.disabled_at is not None
    status = record.effective_status(utcnow()) if derived else record.status
    if status == "revoked":
        raise GatewayError(REVOKED_API_KEY, "this API key has been revoked")
    if status == "expired":
        raise GatewayError(EXPIRED_API_KEY, "this API key has expired")
    if status == "disabled":
        raise GatewayError(DISABLED_API_KEY, "this API key is disabled")
    if record.workspace_id is None:
        raise GatewayError(
            INSUFFICIENT_PERMISSIONS, "operator admin keys are valid on the admin API only"
        )


def expand(granted: tuple[str, ...], implies: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    """The transitive closure of ``granted`` under ``implies`` (cycles are harmless)."""
    seen: set[str] = set()
    todo = list(granted)
    while todo:
        permission = todo.pop()
        if permission not in seen:
            seen.add(permission)
            todo.extend(implies.get(permission, ()))
    return frozenset(seen)


def missing_permission(
    required: tuple[str, ...], granted: frozenset[str]
) -> str | None:
    for permission in required:
        if permission not in granted:
            return permission
    return None


def scope_allows(key: KeyRecord, resource_id: str, operation: str | None) -> bool:
    if not key.scopes:  # no scopes: every resource
        return True
    for scope in key.scopes:
        if scope.resource_id in (resource_id, "*"):
            ops = scope.operations
            if operation is not None and (operation in ops or "*" in ops):
                return True
    return False
