"""Members of a workspace as service functions (README "Members and roles"): the admin API and
the CLI both call these, so every change is validated and audited alike. Removing a member
revokes its keys (one transaction in the store) and drops them from this process's cache;
the other processes hear of them through the change feed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import MemberNotFound, NotFound
from gateway.keys.model import MEMBER_ID_PREFIX, KeyRecord, Member, random_base62, utcnow
from gateway.keys.validation import validate_member, validate_role
from gateway.store import Store

Audit = Callable[[str | None, str, str, str | None, dict[str, Any]], Awaitable[None]]
ChangeHook = Callable[[str], None]


class MemberService:
    def __init__(self, store: Store, audit: Audit, on_change: ChangeHook) -> None:
        self._store = store
        self._audit = audit
        self._on_change = on_change

    async def add(self, workspace_id: str, body: Any, actor: str | None) -> Member:
        """201 ``{email, role}``; ``Conflict`` when the email (any case) is taken."""
        email, role = validate_member(body)
        member = Member(MEMBER_ID_PREFIX + random_base62(16), workspace_id, email, role, utcnow())
        await self._store.members.add(member)
        await self._audit(actor, "member.add", member.user_id, workspace_id,
                          {"email": email, "role": role})
        return member

    async def all(self, workspace_id: str) -> list[Member]:
        """Oldest first; ``NotFound`` for an unknown workspace."""
        if await self._store.get_workspace(workspace_id) is None:
            raise NotFound(f"workspace {workspace_id} not found")
        return await self._store.members.all(workspace_id)

    async def by_email(self, workspace_id: str, email: str) -> Member:
        member = await self._store.members.by_email(workspace_id, email)
        if member is None:
            raise MemberNotFound(f"no member {email!r} in workspace {workspace_id}")
        return member

    async def set_role(
        self, workspace_id: str, user_id: str, body: Any, actor: str | None
    ) -> Member:
        role = validate_role(body)
        member = await self._store.members.set_role(workspace_id, user_id, role)
        await self._audit(actor, "member.update", user_id, workspace_id, {"role": role})
        return member

    async def remove(
        self, workspace_id: str, user_id: str, actor: str | None
    ) -> tuple[Member, list[KeyRecord]]:
        """Remove the member and revoke every active key it owns (``revoked_by``: ``actor``)."""
        member, revoked = await self._store.members.remove(workspace_id, user_id, actor)
        for key in revoked:
            self._on_change(key.key_hash)
        await self._audit(actor, "member.remove", user_id, workspace_id,
                          {"email": member.email, "revoked_keys": [k.key_id for k in revoked]})
        for key in revoked:
            await self._audit(actor, "key.revoke", key.key_id, workspace_id,
                              {"status": "revoked", "reason": "member removed"})
        return member, revoked
