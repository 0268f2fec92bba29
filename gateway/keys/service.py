"""The key lifecycle as service functions: the admin API and the CLI both call these, so a key
created, rotated or revoked either way goes through the same validation, audit and invalidation.

``actor`` is the admin key id (or ``"cli"``); ``on_change`` is called with every changed key
hash so this process's cache drops it at once (other processes follow the change feed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from gateway.config import Config
from gateway.errors import Conflict, NotFound, ValidationError
from gateway.keys.console import ConsoleAccess
from gateway.keys.members import MemberService
from gateway.keys.model import (
    ENFORCE,
    AuditEvent,
    Credits,
    KeyHasher,
    KeyPage,
    KeyRecord,
    KeyUsage,
    Namespace,
    Project,
    Subscription,
    Workspace,
    display_parts,
    generate_key,
    new_id,
    rfc3339,
    utcnow,
)
from gateway.keys.usage_report import Window, report
from gateway.keys.validation import (
    CREATE_FIELDS,
    UPDATE_FIELDS,
    grace_period,
    validate_fields,
    validate_name,
    validate_plan,
    validate_top_up,
)
from gateway.limiter.base import credit_period
from gateway.store import Store

ChangeHook = Callable[[str], None]


def _audit_value(value: Any) -> Any:
    if isinstance(value, Credits):
        return _credits_audit(value)
    if isinstance(value, tuple):
        return [_audit_value(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "resource_id"):
        return {"resource_id": value.resource_id, "operations": list(value.operations)}
    return value


class KeyService:
    def __init__(
        self,
        store: Store,
        config: Config,
        on_change: ChangeHook | None = None,
        on_tenancy_change: ChangeHook | None = None,
        live_config: Callable[[], Config] | None = None,
    ) -> None:
        """``live_config``: the config in force (plans change on reload); default ``config``."""
        self._store = store
        self._live_config = live_config or (lambda: config)
        self._config = config
        self._hasher = KeyHasher(config.keys.hash_pepper)
        self._on_change = on_change or (lambda _hash: None)
        self._on_tenancy_change = on_tenancy_change or (lambda _ws: None)
        self.members = MemberService(store, self._audit, self._on_change)
        self.console = ConsoleAccess(store, self._hasher, lambda: self._live_config().console,
                                     self._audit, self.members.by_email)

    # workspaces, projects, namespaces ---------------------------------------------------------
    async def create_workspace(self, name: Any, actor: str | None) -> Workspace:
        workspace = await self._store.create_workspace(validate_name(name))
        await self._audit(actor, "workspace.create", workspace.id, workspace.id, {"name": name})
        return workspace

    async def list_workspaces(self) -> list[Workspace]:
        return await self._store.list_workspaces()

    async def get_workspace(self, workspace_id: str) -> Workspace:
        workspace = await self._store.get_workspace(workspace_id)
        if workspace is None:
            raise NotFound(f"workspace {workspace_id} not found")
        return workspace

    async def create_project(self, workspace_id: str, name: Any, actor: str | None) -> Project:
        project = await self._store.create_project(workspace_id, validate_name(name))
        self._on_tenancy_change(workspace_id)
        await self._audit(actor, "project.create", project.id, workspace_id, {"name": name})
        return project

    async def list_projects(self, workspace_id: str) -> list[Project]:
        await self.get_workspace(workspace_id)
        return await self._store.list_projects(workspace_id)

    async def create_namespace(self, workspace_id: str, name: Any, actor: str | None) -> Namespace:
        namespace = await self._store.create_namespace(workspace_id, validate_name(name))
        self._on_tenancy_change(workspace_id)
        await self._audit(actor, "namespace.create", namespace.id, workspace_id, {"name": name})
        return namespace

    async def list_namespaces(self, workspace_id: str) -> list[Namespace]:
        await self.get_workspace(workspace_id)
        return await self._store.list_namespaces(workspace_id)

    # subscriptions ----------------------------------------------------------------------------
    async def put_subscription(
        self, workspace_id: str, body: Any, actor: str | None
    ) -> Subscription:
        """Subscribe the workspace to a plan of the config; in force on every node as fast as
        a revocation (each of its keys goes through the change feed)."""
        plan = validate_plan(body, self._live_config().plans)
        await self.get_workspace(workspace_id)
        subscription, key_hashes = await self._store.subscriptions.put(workspace_id, plan)
        for key_hash in key_hashes:
            self._on_change(key_hash)
        await self._audit(actor, "subscription.update", subscription.subscription_id,
                          workspace_id, {"plan": plan})
        return subscription

    async def get_subscription(self, workspace_id: str) -> Subscription | None:
        """The workspace's subscription; None: it is on ``default_plan`` (if any)."""
        await self.get_workspace(workspace_id)
        return await self._store.subscriptions.get(workspace_id)

    async def _max_active_per_user(self, workspace_id: str | None) -> int:
        """The plan's ``max_active_keys_per_user``, else ``keys.max_active_per_user``."""
        config = self._live_config()
        subscription = None
        if workspace_id is not None and config.plans:
            subscription = await self._store.subscriptions.get(workspace_id)
        name = subscription.plan if subscription is not None else config.default_plan
        plan = config.plans.get(name) if name is not None else None
        if plan is not None and plan.max_active_keys_per_user is not None:
            return plan.max_active_keys_per_user
        return config.keys.max_active_per_user

    # keys -------------------------------------------------------------------------------------
    async def create_key(
        self, workspace_id: str | None, body: Any, actor: str | None
    ) -> tuple[KeyRecord, str]:
        """Validate, create, audit; returns the record and the plaintext key (shown once)."""
        fields = validate_fields(body, CREATE_FIELDS, required=("name",))
        if workspace_id is None and fields.get("key_type", "admin") != "admin":
            raise ValidationError({"key_type": "keys without a workspace are operator admin keys"})
        project_id = await self._project_for(workspace_id, fields.get("project_id"))
        await self._owner_by_email(workspace_id, fields)
        environment = fields.get("environment", "live")
        if fields.get("credits") is not None:
            fields["credits"] = as_set(fields["credits"], None, utcnow())
        plaintext = generate_key(self._config.keys.prefixes[environment])
        record = self._new_record(plaintext, workspace_id, project_id, fields, actor)
        created = await self._store.create_key(
            record, max_active_per_user=await self._max_active_per_user(workspace_id)
        )
        self._on_change(created.key_hash)
        await self._audit(actor, "key.create", created.key_id, workspace_id,
                          {k: _audit_value(v) for k, v in fields.items()})
        return created, plaintext

    async def get_key(self, key_id: str, workspace_id: str | None = None) -> KeyRecord:
        """The key, or NotFound — also when it belongs to another workspace than the caller's."""
        record = await self._store.get_key(key_id)
        if record is None or (workspace_id is not None and record.workspace_id != workspace_id):
            raise NotFound(f"key {key_id} not found")
        return record

    async def rotation_chain(self, record: KeyRecord) -> list[KeyRecord]:
        """Every key of ``record``'s rotation chain, oldest first (``rotated_from`` names the
        chain's first key, README "Decisions where the spec was silent")."""
        return await self._store.keys.chain(record.rotated_from or record.key_id)

    async def list_keys(self, workspace_id: str | None, **filters: Any) -> KeyPage:
        if workspace_id is not None:
            await self.get_workspace(workspace_id)
        return await self._store.list_keys(workspace_id, **filters)

    async def update_key(
        self, key_id: str, body: Any, actor: str | None, workspace_id: str | None = None
    ) -> KeyRecord:
        current = await self.get_key(key_id, workspace_id)
        changes = validate_fields(body, UPDATE_FIELDS, required=())
        _require_active(current, "changed", also="disabled")
        if not changes:
            return current
        audited = {k: _audit_value(v) for k, v in changes.items()}
        if "credits" in changes:  # a set: on the whole rotation chain, like a top-up
            given = changes.pop("credits")
            current = await self._set_credits(
                current, lambda held: None if given is None else as_set(given, held, utcnow()))
            if not changes:
                await self._audit(actor, "key.update", current.key_id, current.workspace_id,
                                  audited)
                return current
        return await self._change(current, changes, actor, "key.update", audited)

    async def top_up_credits(
        self, key_id: str, body: Any, actor: str | None, workspace_id: str | None = None
    ) -> KeyRecord:
        """``{add: N}`` or ``{set: N}`` (README "Credits"): in force on every node through the
        change feed; an add is applied exactly once by the limiter, however many nodes spend
        meanwhile. A key without credits may be ``set`` (then it has some, without refill)."""
        op, amount = validate_top_up(body)
        current = await self.get_key(key_id, workspace_id)
        _require_active(current, "topped up", also="disabled")
        updated = await self._set_credits(
            current, lambda credits: topped_up(credits, op, amount, key_id, utcnow()))
        await self._audit(actor, "key.credits", key_id, current.workspace_id, {op: amount})
        return updated

    async def _set_credits(
        self, current: KeyRecord, change: Callable[[Credits | None], Credits | None]
    ) -> KeyRecord:
        updated, hashes = await self._store.keys.change_credits(current.key_id, change)
        for key_hash in hashes:
            self._on_change(key_hash)
        return updated

    async def revoke_key(
        self, key_id: str, actor: str | None, workspace_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> KeyRecord:
        """``details``: why, for the audit event (a leak's URL, README "Leaked keys")."""
        current = await self.get_key(key_id, workspace_id)
        if current.status == "revoked":
            return current
        changes = {"status": "revoked", "revoked_at": utcnow(), "revoked_by": actor}
        return await self._change(current, changes, actor, "key.revoke",
                                  {"status": "revoked", **(details or {})})

    async def disable_key(
        self, key_id: str, actor: str | None, workspace_id: str | None = None
    ) -> KeyRecord:
        """Refused with 401 ``disabled_api_key`` on every node until enabled; a disabled key
        stays disabled (200). Revoked and expired keys cannot be disabled (409)."""
        current = await self.get_key(key_id, workspace_id)
        if current.effective_status(utcnow()) == "disabled":
            return current
        _require_active(current, "disabled")
        return await self._change(current, {"disabled_at": utcnow()}, actor, "key.disable",
                                  {"status": "disabled"})

    async def enable_key(
        self, key_id: str, actor: str | None, workspace_id: str | None = None
    ) -> KeyRecord:
        """A disabled key works again; an active key stays so (200); revoked or expired: 409."""
        current = await self.get_key(key_id, workspace_id)
        _require_active(current, "enabled", also="disabled")
        if current.disabled_at is None:
            return current
        return await self._change(current, {"disabled_at": None}, actor, "key.enable",
                                  {"status": "active"})

    async def rotate_key(
        self, key_id: str, grace_period_seconds: Any, actor: str | None,
        workspace_id: str | None = None,
    ) -> tuple[KeyRecord, KeyRecord, str]:
        """A new key with the old one's settings; the old one expires after the grace period
        (0: revoked now). Returns (old, new, new plaintext)."""
        grace = _grace(grace_period_seconds)
        old = await self.get_key(key_id, workspace_id)
        _require_active(old, "rotated")
        plaintext = generate_key(self._config.keys.prefixes[old.environment])
        key_prefix, hint = display_parts(plaintext)
        now = utcnow()
        new = old.with_changes(
            key_id=new_id("key"), key_hash=self._hasher(plaintext), key_prefix=key_prefix,
            hint=hint, created_at=now, created_by=actor, last_used_at=None,
            rotated_from=old.rotated_from or old.key_id, internal_id=new_id("int"),
        )
        old_after, new = await self._store.rotate_key(
            key_id, new, now + timedelta(seconds=grace), actor
        )
        self._on_change(old.key_hash)
        self._on_change(new.key_hash)
        await self._audit(actor, "key.rotate", key_id, old.workspace_id,
                          {"new_key_id": new.key_id, "grace_period_seconds": grace})
        return old_after, new, plaintext

    async def usage(self, key_id: str, workspace_id: str | None = None) -> KeyUsage:
        await self.get_key(key_id, workspace_id)
        usage = await self._store.get_usage(key_id)
        if usage is None:
            raise NotFound(f"key {key_id} not found")
        return usage

    async def key_usage(
        self, key_id: str, window: Window, workspace_id: str | None = None
    ) -> dict[str, Any]:
        """The key's series over ``window`` with its lifetime counts (README "Usage over
        time")."""
        lifetime = await self.usage(key_id, workspace_id)
        points = await self._store.usage.key_series(
            key_id, window.seconds, window.start, window.end
        )
        return {
            "key_id": key_id,
            **report(window, points),
            "last_used_at": rfc3339(lifetime.last_used_at),
            "requests": lifetime.requests,
            "rate_limited": lifetime.rate_limited,
        }

    async def workspace_usage(self, workspace_id: str, window: Window) -> dict[str, Any]:
        """The series of all the workspace's keys summed, and its ten busiest keys."""
        await self.get_workspace(workspace_id)
        usage = self._store.usage
        points = await usage.workspace_series(
            workspace_id, window.seconds, window.start, window.end
        )
        top = await usage.top_keys(workspace_id, window.start, window.end)
        return {
            "workspace_id": workspace_id,
            **report(window, points),
            "top_keys": [{"key_id": t.key_id, "name": t.name, "total": t.total} for t in top],
        }

    async def daily_usage(
        self, key_ids: list[str], start: int, end: int
    ) -> dict[str, dict[int, int]]:
        """Requests per key and UTC day in [start, end) for a page of keys (the console's
        sparklines), in one query."""
        return await self._store.usage.daily_totals(key_ids, start, end)

    async def audit_page(self, workspace_id: str, **filters: Any) -> list[AuditEvent]:
        """The console's audit log (``AuditLog.page``: filters, ``before`` for the next page)."""
        return await self._store.audit.page(workspace_id, **filters)

    async def audit(self, workspace_id: str | None, limit: int = 100) -> list[AuditEvent]:
        """Newest first; ``workspace_id`` None means every event (operators only)."""
        if workspace_id is not None:
            await self.get_workspace(workspace_id)
        return await self._store.list_audit(workspace_id, limit)

    # helpers ----------------------------------------------------------------------------------
    async def _change(
        self, current: KeyRecord, changes: dict[str, Any], actor: str | None, action: str,
        audited: dict[str, Any] | None = None,
    ) -> KeyRecord:
        """Store the changes (their hash goes to the change feed), drop the key from this
        process's cache, audit."""
        updated = await self._store.update_key(current.key_id, changes)
        self._on_change(updated.key_hash)
        if audited is None:
            audited = {k: _audit_value(v) for k, v in changes.items()}
        await self._audit(actor, action, current.key_id, current.workspace_id, audited)
        return updated

    async def _owner_by_email(self, workspace_id: str | None, fields: dict[str, Any]) -> None:
        """``user_email`` names a member of the workspace: the key's ``user_id`` becomes the
        member's (``MemberNotFound`` for anyone else)."""
        email = fields.pop("user_email", None)
        if email is None:
            return
        if "user_id" in fields:
            raise ValidationError({"user_email": "give user_id or user_email, not both"})
        if workspace_id is None:
            raise ValidationError({"user_email": "operator keys have no member owner"})
        fields["user_id"] = (await self.members.by_email(workspace_id, email)).user_id

    async def _project_for(self, workspace_id: str | None, project_id: str | None) -> str | None:
        if workspace_id is None:
            if project_id is not None:
                raise ValidationError({"project_id": "operator keys have no project"})
            return None
        workspace = await self.get_workspace(workspace_id)
        if project_id is None:
            return workspace.default_project_id
        project = await self._store.get_project(project_id)
        if project is None or project.workspace_id != workspace_id:
            raise ValidationError({"project_id": "not a project of this workspace"})
        return project_id

    def _new_record(
        self, plaintext: str, workspace_id: str | None, project_id: str | None,
        fields: dict[str, Any], actor: str | None,
    ) -> KeyRecord:
        key_prefix, hint = display_parts(plaintext)
        return KeyRecord(
            key_id=new_id("key"), key_hash=self._hasher(plaintext), key_prefix=key_prefix,
            hint=hint, name=fields["name"], workspace_id=workspace_id, project_id=project_id,
            user_id=fields.get("user_id"), created_at=utcnow(), created_by=actor,
            description=fields.get("description", ""),
            key_type=fields.get("key_type", "standard" if workspace_id else "admin"),
            environment=fields.get("environment", "live"),
            permissions=fields.get("permissions", ()), scopes=fields.get("scopes", ()),
            allowed_origins=fields.get("allowed_origins", ()),
            allowed_ips=fields.get("allowed_ips", ()),
            enforcement=fields.get("enforcement", ENFORCE),
            rate_limit_override=fields.get("rate_limit_override"),
            concurrency_limit=fields.get("concurrency_limit"),
            expires_at=fields.get("expires_at"),
            credits=fields.get("credits"),
        )

    async def _audit(
        self, actor: str | None, action: str, target: str, workspace_id: str | None,
        changes: dict[str, Any],
    ) -> None:
        await self._store.add_audit(
            actor=actor, action=action, target=target, workspace_id=workspace_id, changes=changes
        )


def as_set(given: Credits, previous: Credits | None, now: datetime) -> Credits:
    """``given`` (validated: a balance and a refill) as a set made ``now``: a version above
    any before it (milliseconds, so a set after the key's credits were removed is newer too)
    and the refill period it falls in."""
    version = int(now.timestamp() * 1000)
    if previous is not None:
        version = max(version, previous.set_version + 1)
    period = credit_period(given.refill_interval, now.timestamp())[0]
    return given._replace(set_version=version, set_period=period, added=0)


def topped_up(
    credits: Credits | None, op: str, amount: int, key_id: str, now: datetime
) -> Credits:
    """The stored credits after ``{add: amount}`` or ``{set: amount}``; the refill stays."""
    if op == "set":
        base = credits or Credits(0, 0, 0)
        return as_set(base._replace(set_value=amount), credits, now)
    if credits is None:
        raise Conflict(f"key {key_id} has no credits: set them first")
    return credits._replace(added=credits.added + amount)


def _credits_audit(credits: Credits | None) -> Any:
    return credits.to_public(credits.set_value) if credits is not None else None


def _grace(value: Any) -> int:
    try:
        return grace_period(value)
    except ValueError as exc:
        raise ValidationError({"grace_period_seconds": str(exc)}) from None


def _require_active(record: KeyRecord, verb: str, also: str = "active") -> None:
    """Revoked and expired keys are history: changing, rotating or enabling one is a 409, and
    a PATCH can never bring one back (which would also slip past ``max_active_per_user``).
    ``also``: a status allowed besides active (disabled keys can be changed and enabled)."""
    status = record.effective_status(utcnow())
    if status not in ("active", also):
        allowed = "active" if also == "active" else f"active and {also}"
        raise Conflict(f"key {record.key_id} is {status}; only {allowed} keys can be {verb}")
