"""The key-store contract: every backend (``conftest.BACKENDS``) must pass all of it."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.config import KeyStoreConfig
from gateway.errors import Conflict, KeyLimitReached, NotFound, StoreUnavailable, ValidationError
from gateway.keys.model import KeyRecord, KeyUsage, Scope, UsagePoint, Workspace, utcnow
from gateway.store import KeyChange, MinuteCounts, Retention
from gateway.store.migrations import migration_files
from gateway.store.sqlite import database_path, sqlite_store
from tests.keys.conftest import MakeKey, OpenStore, Store, build_store, unusable_urls, write_locked

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
M0 = int(T0.timestamp()) // 60 * 60  # T0's minute, in epoch seconds


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


def ids(records: list[KeyRecord]) -> list[str]:
    return [record.key_id for record in records]


async def all_pages(store: Store, workspace_id: str | None, **filters: Any) -> list[KeyRecord]:
    found: list[KeyRecord] = []
    cursor = None
    while True:
        page = await store.list_keys(workspace_id, cursor=cursor, **filters)
        found.extend(page.results)
        cursor = page.next_cursor
        if cursor is None:
            return found


# --- keys: create / get -------------------------------------------------------------------------


async def test_round_trip_of_every_field(store: Store, make_key: MakeKey) -> None:
    plus_two = timezone(timedelta(hours=2))
    record = make_key(
        name="ci key",
        description="for the CI runner",
        user_id="dev@example.com",
        key_type="admin",
        environment="test",
        permissions=("read", "eval:create"),
        scopes=(Scope("ret_1", ("read", "write")), Scope("ret_2", ("delete",))),
        allowed_origins=("https://app.example.com", "https://*.example.com"),
        rate_limit_override=120,
        concurrency_limit=4,
        expires_at=utcnow() + timedelta(days=30),
        last_used_at=T0,
        created_at=datetime(2024, 5, 1, 14, 0, 0, 654321, tzinfo=plus_two),
        created_by="key_admin",
        revoked_at=None,
        revoked_by=None,
        rotated_from="key_previous",
    )
    created = await store.create_key(record, max_active_per_user=10)
    assert created == record
    by_id = await store.get_key(record.key_id)
    by_hash = await store.get_key_by_hash(record.key_hash)
    assert by_id == record
    assert by_hash == record
    assert by_id is not None
    assert by_id.created_at == datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
    for value in (by_id.created_at, by_id.expires_at, by_id.last_used_at):
        assert is_utc(value)
    assert isinstance(by_id.scopes, tuple)
    assert by_id.scopes[0] == Scope("ret_1", ("read", "write"))
    assert isinstance(by_id.permissions, tuple)
    assert isinstance(by_id.allowed_origins, tuple)


async def test_round_trip_of_defaults(store: Store, make_key: MakeKey) -> None:
    record = make_key(workspace_id=None, project_id=None)
    await store.create_key(record, max_active_per_user=10)
    got = await store.get_key(record.key_id)
    assert got == record
    assert got is not None
    assert (got.permissions, got.scopes, got.allowed_origins) == ((), (), ())
    assert got.expires_at is None and got.last_used_at is None and got.revoked_at is None
    assert got.status == "active" and got.key_type == "standard" and got.environment == "live"


async def test_unknown_keys_are_none(store: Store) -> None:
    assert await store.get_key("key_missing") is None
    assert await store.get_key_by_hash("0" * 64) is None


async def test_duplicate_key_hash_or_id_conflicts(store: Store, make_key: MakeKey) -> None:
    first = await store.create_key(make_key(), max_active_per_user=10)
    with pytest.raises(Conflict):
        await store.create_key(make_key(key_hash=first.key_hash), max_active_per_user=10)
    with pytest.raises(Conflict):
        await store.create_key(make_key(key_id=first.key_id), max_active_per_user=10)


async def test_key_in_unknown_workspace_is_not_found(store: Store, make_key: MakeKey) -> None:
    with pytest.raises(NotFound):
        await store.create_key(make_key(workspace_id="ws_nope"), max_active_per_user=10)


# --- keys: per-user limit -------------------------------------------------------------------------


async def test_max_active_per_user(store: Store, make_key: MakeKey) -> None:
    for _ in range(2):
        await store.create_key(make_key(user_id="a@example.com"), max_active_per_user=2)
    with pytest.raises(KeyLimitReached):
        await store.create_key(make_key(user_id="a@example.com"), max_active_per_user=2)
    await store.create_key(make_key(user_id="b@example.com"), max_active_per_user=2)
    for _ in range(3):  # keys without an owner are not limited
        await store.create_key(make_key(user_id=None), max_active_per_user=2)
    assert await store.count_active_for_user("a@example.com") == 2
    assert await store.count_active_for_user("b@example.com") == 1
    assert await store.count_active_for_user("nobody@example.com") == 0


async def test_revoked_and_expired_keys_do_not_count(store: Store, make_key: MakeKey) -> None:
    user = "a@example.com"
    past = utcnow() - timedelta(minutes=1)
    await store.create_key(make_key(user_id=user, expires_at=past), max_active_per_user=2)
    revoked = await store.create_key(make_key(user_id=user), max_active_per_user=2)
    await store.update_key(revoked.key_id, {"status": "revoked", "revoked_at": utcnow()})
    await store.create_key(
        make_key(user_id=user, expires_at=utcnow() + timedelta(hours=1)), max_active_per_user=2
    )
    assert await store.count_active_for_user(user) == 1
    await store.create_key(make_key(user_id=user), max_active_per_user=2)
    with pytest.raises(KeyLimitReached):
        await store.create_key(make_key(user_id=user), max_active_per_user=2)


async def test_concurrent_creates_respect_the_limit_across_stores(
    open_store: OpenStore, store: Store, make_key: MakeKey
) -> None:
    other = await open_store()
    user = "racer@example.com"
    records = [make_key(user_id=user) for _ in range(5)]
    results = await asyncio.gather(
        *(
            (store if i % 2 else other).create_key(record, max_active_per_user=3)
            for i, record in enumerate(records)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, KeyRecord)]
    refused = [r for r in results if isinstance(r, KeyLimitReached)]
    assert (len(created), len(refused)) == (3, 2), results
    assert await store.count_active_for_user(user) == 3
    assert await other.count_active_for_user(user) == 3


async def test_writes_are_visible_to_other_store_instances(
    open_store: OpenStore, store: Store, make_key: MakeKey
) -> None:
    other = await open_store()
    record = await store.create_key(make_key(), max_active_per_user=10)
    assert await other.get_key_by_hash(record.key_hash) == record
    await other.update_key(record.key_id, {"name": "renamed"})
    got = await store.get_key(record.key_id)
    assert got is not None and got.name == "renamed"


# --- keys: update / revoke ----------------------------------------------------------------------


async def test_update_key(store: Store, make_key: MakeKey) -> None:
    record = await store.create_key(make_key(), max_active_per_user=10)
    expires = T0 + timedelta(days=365 * 10)
    changes: dict[str, Any] = {
        "name": "new name",
        "description": "new description",
        "permissions": ["write"],
        "scopes": (Scope("ret_9", ("read",)),),
        "allowed_origins": ["https://x.example.com"],
        "rate_limit_override": 5,
        "concurrency_limit": 2,
        "expires_at": expires,
        "last_used_at": T0,
    }
    updated = await store.update_key(record.key_id, changes)
    expected = record.with_changes(
        name="new name",
        description="new description",
        permissions=("write",),
        scopes=(Scope("ret_9", ("read",)),),
        allowed_origins=("https://x.example.com",),
        rate_limit_override=5,
        concurrency_limit=2,
        expires_at=expires,
        last_used_at=T0,
    )
    assert updated == expected
    assert await store.get_key(record.key_id) == expected
    cleared = await store.update_key(
        record.key_id, {"rate_limit_override": None, "expires_at": None}
    )
    assert cleared.rate_limit_override is None and cleared.expires_at is None


async def test_update_key_errors(store: Store, make_key: MakeKey) -> None:
    record = await store.create_key(make_key(), max_active_per_user=10)
    with pytest.raises(NotFound):
        await store.update_key("key_missing", {"name": "x"})
    with pytest.raises(ValueError):
        await store.update_key(record.key_id, {"key_hash": "f" * 64})
    with pytest.raises(ValueError):
        await store.update_key(record.key_id, {"no_such_field": 1})
    with pytest.raises(ValueError):
        await store.update_key(record.key_id, {"name": None})
    assert await store.get_key(record.key_id) == record


async def test_revoke_via_update(store: Store, make_key: MakeKey, workspace: Workspace) -> None:
    record = await store.create_key(make_key(), max_active_per_user=10)
    revoked = await store.update_key(
        record.key_id, {"status": "revoked", "revoked_at": T0, "revoked_by": "key_admin"}
    )
    assert (revoked.status, revoked.revoked_at, revoked.revoked_by) == ("revoked", T0, "key_admin")
    assert is_utc(revoked.revoked_at)
    assert await store.get_key_by_hash(record.key_hash) == revoked
    assert ids((await store.list_keys(workspace.id)).results) == []
    assert ids((await store.list_keys(workspace.id, include_revoked=True)).results) == [
        record.key_id
    ]


# --- keys: rotation ------------------------------------------------------------------------------


async def test_rotate_with_grace_period(store: Store, make_key: MakeKey) -> None:
    old = await store.create_key(make_key(user_id="u@example.com"), max_active_per_user=10)
    new = make_key(user_id="u@example.com", rotated_from=old.key_id)
    grace_end = utcnow() + timedelta(hours=1)
    old_after, created = await store.rotate_key(old.key_id, new, grace_end, "key_admin")
    assert created == new
    assert old_after == old.with_changes(expires_at=grace_end)
    assert await store.get_key(old.key_id) == old_after
    assert await store.get_key_by_hash(new.key_hash) == new
    assert old_after.effective_status(utcnow()) == "active"


async def test_rotate_without_grace_revokes_now(store: Store, make_key: MakeKey) -> None:
    old = await store.create_key(make_key(), max_active_per_user=10)
    before = utcnow()
    old_after, _ = await store.rotate_key(old.key_id, make_key(), utcnow(), "key_admin")
    assert old_after.status == "revoked"
    assert old_after.revoked_by == "key_admin"
    assert old_after.revoked_at is not None and old_after.revoked_at >= before
    assert is_utc(old_after.revoked_at)


async def test_rotate_never_extends_the_old_key(store: Store, make_key: MakeKey) -> None:
    soon = utcnow() + timedelta(minutes=5)
    old = await store.create_key(make_key(expires_at=soon), max_active_per_user=10)
    old_after, _ = await store.rotate_key(
        old.key_id, make_key(), utcnow() + timedelta(days=1), None
    )
    assert old_after.expires_at == soon


async def test_rotate_is_not_limited_per_user(store: Store, make_key: MakeKey) -> None:
    user = "full@example.com"
    old = await store.create_key(make_key(user_id=user), max_active_per_user=1)
    _, new = await store.rotate_key(
        old.key_id, make_key(user_id=user), utcnow() + timedelta(hours=1), None
    )
    assert await store.get_key(new.key_id) == new


async def test_rotate_unknown_key_inserts_nothing(store: Store, make_key: MakeKey) -> None:
    new = make_key()
    with pytest.raises(NotFound):
        await store.rotate_key("key_missing", new, utcnow(), None)
    assert await store.get_key(new.key_id) is None
    assert await store.get_key_by_hash(new.key_hash) is None


async def test_rotate_is_atomic(store: Store, make_key: MakeKey) -> None:
    old = await store.create_key(make_key(), max_active_per_user=10)
    other = await store.create_key(make_key(), max_active_per_user=10)
    seq = await store.last_change_seq()
    clashing = make_key(key_hash=other.key_hash)  # the insert fails: nothing may stick
    with pytest.raises(Conflict):
        await store.rotate_key(old.key_id, clashing, utcnow(), "key_admin")
    assert await store.get_key(old.key_id) == old
    assert await store.get_key(clashing.key_id) is None
    assert await store.changes_since(seq) == []


# --- keys: listing -------------------------------------------------------------------------------


async def test_list_filters(store: Store, make_key: MakeKey, workspace: Workspace) -> None:
    other_ws = await store.create_workspace("other")
    now = utcnow()
    keys = {
        "plain": make_key(user_id="a@x.com", created_at=now),
        "scoped": make_key(user_id="b@x.com", scopes=(Scope("ret_1", ("read",)),), created_at=now),
        "scoped2": make_key(scopes=(Scope("ret_2", ("read",)),), created_at=now),
        "admin": make_key(key_type="admin", created_at=now),
        "expired": make_key(expires_at=now - timedelta(seconds=1), created_at=now),
        "revoked": make_key(status="revoked", revoked_at=now, created_at=now),
        "elsewhere": make_key(
            workspace_id=other_ws.id, project_id=other_ws.default_project_id, created_at=now
        ),
    }
    for record in keys.values():
        await store.create_key(record, max_active_per_user=10)

    async def listed(workspace_id: str | None, **filters: Any) -> set[str]:
        page = await store.list_keys(workspace_id, **filters)
        assert page.total == len(page.results)
        found = set(ids(page.results))
        return {name for name, record in keys.items() if record.key_id in found}

    assert await listed(workspace.id) == {"plain", "scoped", "scoped2", "admin"}
    assert await listed(workspace.id, include_revoked=True) == {
        "plain", "scoped", "scoped2", "admin", "expired", "revoked"
    }  # fmt: skip
    assert await listed(None) == {"plain", "scoped", "scoped2", "admin", "elsewhere"}
    assert await listed(other_ws.id) == {"elsewhere"}
    assert await listed(workspace.id, user_id="b@x.com") == {"scoped"}
    assert await listed(workspace.id, key_type="admin") == {"admin"}
    assert await listed(workspace.id, key_type="standard") == {"plain", "scoped", "scoped2"}
    assert await listed(workspace.id, resource_id="ret_1") == {"plain", "scoped", "admin"}
    assert await listed(workspace.id, resource_id="ret_3") == {"plain", "admin"}
    assert await listed(workspace.id, resource_id="ret_2", user_id="a@x.com") == {"plain"}
    assert await listed("ws_unknown") == set()


async def test_pagination_walks_every_key_once_in_order(
    store: Store, make_key: MakeKey, workspace: Workspace
) -> None:
    records = [
        make_key(created_at=T0 + timedelta(seconds=i // 2)) for i in range(8)
    ]  # pairs share a created_at, and pages of 3 split pairs: key_id must break the tie
    for record in reversed(records):
        await store.create_key(record, max_active_per_user=10)
    expected = sorted(records, key=lambda r: (r.created_at, r.key_id))

    sizes = []
    totals = set()
    walked: list[KeyRecord] = []
    cursor = None
    while True:
        page = await store.list_keys(workspace.id, limit=3, cursor=cursor)
        sizes.append(len(page.results))
        totals.add(page.total)
        walked.extend(page.results)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 2]
    assert totals == {8}
    assert walked == expected
    assert await all_pages(store, workspace.id) == expected


async def test_exact_last_page_has_no_next_cursor(
    store: Store, make_key: MakeKey, workspace: Workspace
) -> None:
    for _ in range(4):
        await store.create_key(make_key(), max_active_per_user=10)
    first = await store.list_keys(workspace.id, limit=2)
    second = await store.list_keys(workspace.id, limit=2, cursor=first.next_cursor)
    assert first.next_cursor is not None
    assert len(second.results) == 2 and second.next_cursor is None
    empty = await store.list_keys("ws_unknown", limit=2)
    assert (empty.results, empty.total, empty.next_cursor) == ([], 0, None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!not base64!!!",
        "abc",
        _b64(b"not json"),
        _b64(b'{"created_at": "2024-01-01"}'),
        _b64(b'["2024-01-01T00:00:00+00:00"]'),
        _b64(b'["not a date", "key_x"]'),
        _b64(b'["2024-01-01T00:00:00+00:00", 7]'),
        _b64(b"\xff\xfe"),
    ],
)
async def test_malformed_cursor(store: Store, cursor: str) -> None:
    with pytest.raises(ValidationError) as caught:
        await store.list_keys(None, cursor=cursor)
    assert "cursor" in caught.value.errors


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_out_of_range(store: Store, limit: int) -> None:
    with pytest.raises(ValidationError) as caught:
        await store.list_keys(None, limit=limit)
    assert "limit" in caught.value.errors


async def test_limit_bounds_accepted(store: Store) -> None:
    assert (await store.list_keys(None, limit=1)).total == 0
    assert (await store.list_keys(None, limit=1000)).total == 0


# --- tenancy ------------------------------------------------------------------------------------


async def test_workspace_comes_with_default_project(store: Store) -> None:
    created = await store.create_workspace("acme")
    assert created.id.startswith("ws_")
    assert is_utc(created.created_at)
    assert await store.get_workspace(created.id) == created
    projects = await store.list_projects(created.id)
    assert [(p.id, p.name, p.workspace_id) for p in projects] == [
        (created.default_project_id, "default", created.id)
    ]
    assert await store.get_project(created.default_project_id) == projects[0]


async def test_workspace_lookups(store: Store) -> None:
    assert await store.get_workspace("ws_missing") is None
    assert await store.list_workspaces() == []
    first = await store.create_workspace("one")
    second = await store.create_workspace("two")
    assert await store.list_workspaces() == [first, second]


async def test_projects(store: Store, workspace: Workspace) -> None:
    project = await store.create_project(workspace.id, "search")
    assert project.id.startswith("proj_")
    assert (project.name, project.workspace_id) == ("search", workspace.id)
    assert await store.get_project(project.id) == project
    assert await store.get_project("proj_missing") is None
    assert [p.name for p in await store.list_projects(workspace.id)] == ["default", "search"]
    with pytest.raises(Conflict):
        await store.create_project(workspace.id, "search")
    with pytest.raises(Conflict):
        await store.create_project(workspace.id, "default")
    with pytest.raises(NotFound):
        await store.create_project("ws_missing", "search")
    other = await store.create_workspace("other")
    await store.create_project(other.id, "search")  # names are unique per workspace only
    assert await store.list_projects("ws_missing") == []


async def test_namespaces(store: Store, workspace: Workspace) -> None:
    assert await store.list_namespaces(workspace.id) == []
    first = await store.create_namespace(workspace.id, "prod")
    second = await store.create_namespace(workspace.id, "staging")
    assert first.id.startswith("ns_") and is_utc(first.created_at)
    assert await store.list_namespaces(workspace.id) == [first, second]
    with pytest.raises(Conflict):
        await store.create_namespace(workspace.id, "prod")
    with pytest.raises(NotFound):
        await store.create_namespace("ws_missing", "prod")
    other = await store.create_workspace("other")
    await store.create_namespace(other.id, "prod")
    assert await store.list_namespaces(workspace.id) == [first, second]


# --- usage --------------------------------------------------------------------------------------


async def test_usage_accumulates_in_batches(store: Store, make_key: MakeKey) -> None:
    key = await store.create_key(make_key(), max_active_per_user=10)
    other = await store.create_key(make_key(), max_active_per_user=10)
    assert await store.get_usage(key.key_id) == KeyUsage(key.key_id, 0, 0, None)
    assert await store.get_usage("key_missing") is None
    later = T0 + timedelta(minutes=5)
    ws = key.workspace_id
    await store.record_usage(
        [
            MinuteCounts.of(key.key_id, ws, M0, success=9, upstream_error=1, rate_limited=1),
            MinuteCounts.of(other.key_id, ws, M0, success=3, forbidden=4),
            MinuteCounts.of("key_missing", ws, M0, success=99),  # skipped, does not fail
            MinuteCounts.of(key.key_id, ws, M0 + 60, success=5, quota_exceeded=2,
                            concurrency_limited=7),
        ],
        {key.key_id: later, "key_missing": T0},
    )
    await store.record_usage([MinuteCounts.of(key.key_id, ws, M0, success=1)],
                             {key.key_id: T0})  # older: last_used stays
    await store.record_usage([])
    usage = await store.get_usage(key.key_id)
    assert usage is not None
    # lifetime: requests reached the upstream; rate_limited by the limit or the quota
    assert (usage.requests, usage.rate_limited, usage.last_used_at) == (16, 3, later)
    assert is_utc(usage.last_used_at)
    other_usage = await store.get_usage(other.key_id)
    assert other_usage is not None
    assert (other_usage.requests, other_usage.rate_limited) == (3, 0)
    assert other_usage.last_used_at is None
    stored = await store.get_key(key.key_id)
    assert stored is not None and stored.last_used_at == later


# --- audit --------------------------------------------------------------------------------------


async def test_audit_newest_first(store: Store, workspace: Workspace) -> None:
    for i in range(3):
        await store.add_audit(
            actor="key_admin",
            action="key.update",
            target=f"key_{i}",
            workspace_id=workspace.id,
            changes={"name": [f"old{i}", f"new{i}"], "expires_at": T0, "n": i},
        )
    await store.add_audit(
        actor=None, action="workspace.create", target="ws_other", workspace_id=None, changes={}
    )
    events = await store.list_audit(workspace.id)
    assert [e.target for e in events] == ["key_2", "key_1", "key_0"]
    newest = events[0]
    assert (newest.actor, newest.action, newest.workspace_id) == (
        "key_admin", "key.update", workspace.id
    )  # fmt: skip
    assert newest.changes["name"] == ["old2", "new2"] and newest.changes["n"] == 2
    assert isinstance(newest.changes["expires_at"], str)
    assert is_utc(newest.at)
    assert [e.target for e in await store.list_audit(None)] == [
        "ws_other", "key_2", "key_1", "key_0"
    ]  # fmt: skip
    assert [e.target for e in await store.list_audit(None, limit=2)] == ["ws_other", "key_2"]
    assert await store.list_audit("ws_nobody") == []
    ids_ = [e.id for e in await store.list_audit(None)]
    assert ids_ == sorted(ids_, reverse=True)


# --- change feed --------------------------------------------------------------------------------


async def test_every_key_mutation_feeds_the_change_log(store: Store, make_key: MakeKey) -> None:
    assert await store.last_change_seq() == 0
    assert await store.changes_since(0) == []
    key = await store.create_key(make_key(), max_active_per_user=10)
    after_create = await store.last_change_seq()
    assert [c.key_hash for c in await store.changes_since(0)] == [key.key_hash]

    await store.update_key(key.key_id, {"name": "renamed"})
    await store.update_key(key.key_id, {"status": "revoked", "revoked_at": utcnow()})
    new = make_key()
    await store.rotate_key(key.key_id, new, utcnow(), None)
    changes = await store.changes_since(after_create)
    hashes = [c.key_hash for c in changes]
    assert hashes[:2] == [key.key_hash, key.key_hash]  # update, revoke
    assert sorted(hashes[2:]) == sorted([key.key_hash, new.key_hash])  # rotate: both keys
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(seq > after_create for seq in seqs)
    assert await store.last_change_seq() == seqs[-1]
    assert await store.changes_since(seqs[-1]) == []
    assert await store.changes_since(seqs[1]) == changes[2:]
    assert all(isinstance(c, KeyChange) for c in changes)


H0 = 1_714_564_800  # 2024-05-01T12:00:00Z, a whole hour (and minute)
DAY0 = H0 - H0 % 86_400
KEEP_ALL = Retention(minute=10**9, hour=10**9, day=10**9)


def totals(points: list[UsagePoint]) -> tuple[int, ...]:
    return tuple(map(sum, zip(*(p.counts for p in points), strict=True))) if points else ()


async def test_usage_buckets_read_alike_before_and_after_the_roll_up(
    store: Store, make_key: MakeKey
) -> None:
    key = await store.create_key(make_key(), max_active_per_user=10)
    ws = key.workspace_id
    assert ws is not None
    batch = [
        MinuteCounts.of(key.key_id, ws, H0, success=3, forbidden=1),
        MinuteCounts.of(key.key_id, ws, H0 + 60, success=1, rejected=2),
        MinuteCounts.of(key.key_id, ws, H0 + 3600, rate_limited=5),  # the next hour
    ]
    await store.record_usage(batch)
    span = (H0 - 86_400, H0 + 86_400)

    async def hours() -> list[UsagePoint]:
        return await store.usage.key_series(key.key_id, 3600, *span)

    before = await hours()  # nothing rolled up yet: the minutes are summed on read
    assert [(p.start, p.counts) for p in before] == [
        (H0, MinuteCounts.of("", None, 0, success=4, forbidden=1, rejected=2).counts),
        (H0 + 3600, MinuteCounts.of("", None, 0, rate_limited=5).counts),
    ]
    assert await store.usage.roll_up(H0 + 7200 + 30, KEEP_ALL) == H0 + 7200
    assert await hours() == before
    assert await store.usage.roll_up(H0 + 7200 + 30, KEEP_ALL) == H0 + 7200  # twice: no-op
    assert await hours() == before
    minutes = await store.usage.key_series(key.key_id, 60, *span)
    days = await store.usage.key_series(key.key_id, 86_400, *span)
    workspace = await store.usage.workspace_series(ws, 3600, *span)
    assert [p.start for p in minutes] == [H0, H0 + 60, H0 + 3600]
    assert [p.start for p in days] == [DAY0]
    assert totals(minutes) == totals(before) == totals(days) == totals(workspace)


async def test_a_late_minute_reaches_every_granularity_once(
    store: Store, make_key: MakeKey
) -> None:
    """A node that was cut off from the store writes minutes the roll-up has already passed."""
    key = await store.create_key(make_key(), max_active_per_user=10)
    ws = key.workspace_id
    await store.record_usage([MinuteCounts.of(key.key_id, ws, H0, success=2)])
    await store.usage.roll_up(H0 + 600, KEEP_ALL)
    await store.record_usage([MinuteCounts.of(key.key_id, ws, H0 + 60, success=3)])  # late
    await store.usage.roll_up(H0 + 1200, KEEP_ALL)
    span = (H0 - 86_400, H0 + 86_400)
    for granularity in (60, 3600, 86_400):
        points = await store.usage.key_series(key.key_id, granularity, *span)
        assert totals(points)[0] == 5, granularity
        points = await store.usage.workspace_series(str(ws), granularity, *span)
        assert totals(points)[0] == 5, granularity


async def test_top_keys_of_a_workspace(store: Store, make_key: MakeKey) -> None:
    keys = [await store.create_key(make_key(name=f"k{i}"), max_active_per_user=10)
            for i in range(3)]
    ws = keys[0].workspace_id
    assert ws is not None and all(k.workspace_id == ws for k in keys)
    stranger = await store.create_workspace("stranger")
    foreign = await store.create_key(make_key(workspace_id=stranger.id), max_active_per_user=10)
    await store.record_usage([
        MinuteCounts.of(keys[0].key_id, ws, H0, success=1),
        MinuteCounts.of(keys[1].key_id, ws, H0, success=5, rejected=5),
        MinuteCounts.of(keys[2].key_id, ws, H0 + 60, forbidden=3),
        MinuteCounts.of(foreign.key_id, stranger.id, H0, success=100),
    ])
    await store.usage.roll_up(H0 + 30, KEEP_ALL)  # half rolled up: H0 only
    top = await store.usage.top_keys(ws, H0, H0 + 3600)
    assert [(t.key_id, t.name, t.total) for t in top] == [
        (keys[1].key_id, "k1", 10), (keys[2].key_id, "k2", 3), (keys[0].key_id, "k0", 1),
    ]
    assert len(await store.usage.top_keys(ws, H0, H0 + 3600, limit=2)) == 2


async def test_top_keys_over_days_match_every_count_in_the_window(
    store: Store, make_key: MakeKey
) -> None:
    """Whole days come from running totals, edges from hours and minutes, and minutes past the
    roll-up from minute rows: every window sums exactly what was written into it, late writes
    and retention included."""
    keys = [await store.create_key(make_key(name=f"k{i}"), max_active_per_user=10)
            for i in range(3)]
    ws = keys[0].workspace_id
    assert ws is not None
    written: list[MinuteCounts] = []

    async def write(*minutes: MinuteCounts) -> None:
        written.extend(minutes)
        await store.record_usage(list(minutes))

    for day in range(5):
        for i, key in enumerate(keys):
            for hour in (1, 13, 23):
                start = DAY0 + day * 86_400 + hour * 3600 + 60 * (i + day)
                await write(MinuteCounts.of(key.key_id, ws, start, success=(i + 1) * (day + hour),
                                            forbidden=day))
    await store.usage.roll_up(DAY0 + 3 * 86_400 + 14 * 3600, KEEP_ALL)  # day 3, 14:00
    await write(MinuteCounts.of(keys[0].key_id, ws, DAY0 + 86_400 + 600, success=1000))  # late

    def expected(start: int, end: int) -> list[tuple[str, int]]:
        totals: dict[str, int] = {}
        for m in written:
            if start <= m.start < end:
                totals[m.key_id] = totals.get(m.key_id, 0) + sum(m.counts)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))

    async def top(start: int, end: int) -> list[tuple[str, int]]:
        return [(t.key_id, t.total) for t in await store.usage.top_keys(ws, start, end)]

    windows = [
        (DAY0, DAY0 + 5 * 86_400),  # whole days, across the roll-up's mark
        (DAY0 + 13 * 3600, DAY0 + 3 * 86_400 + 5 * 3600),  # hour edges, days between
        (DAY0 + 86_400 + 300, DAY0 + 4 * 86_400 + 13 * 3600 + 120),  # minute edges
        (DAY0 + 3 * 86_400 + 13 * 3600, DAY0 + 3 * 86_400 + 20 * 3600),  # inside one day
    ]
    for start, end in windows:
        assert await top(start, end) == expected(start, end), (start - DAY0, end - DAY0)
    await store.usage.roll_up(DAY0 + 6 * 86_400, KEEP_ALL)
    for start, end in windows:
        assert await top(start, end) == expected(start, end), (start - DAY0, end - DAY0)
    # retention drops days 0 and 1; totals over what is left stay exact
    await store.usage.roll_up(DAY0 + 6 * 86_400, Retention(minute=10**9, hour=10**9,
                                                           day=4 * 86_400))
    later = (DAY0 + 2 * 86_400, DAY0 + 5 * 86_400)
    assert await top(*later) == expected(*later)


async def test_retention_deletes_old_buckets_and_never_a_minute_not_rolled_up(
    store: Store, make_key: MakeKey
) -> None:
    key = await store.create_key(make_key(), max_active_per_user=10)
    ws = key.workspace_id
    await store.record_usage([MinuteCounts.of(key.key_id, ws, H0, success=1)])
    short = Retention(minute=60, hour=7200, day=10 * 86_400)
    span = (H0 - 86_400 * 30, H0 + 86_400 * 30)

    async def starts(granularity: int) -> list[int]:
        points = await store.usage.key_series(key.key_id, granularity, *span)
        return [p.start for p in points]

    await store.usage.roll_up(H0 + 3 * 3600, short)
    assert await starts(60) == []  # rolled up, then past its 60 s
    assert await starts(3600) == []  # 3 hours > 2 hours
    assert await starts(86_400) == [DAY0]
    await store.usage.roll_up(H0 + 11 * 86_400, short)
    assert await starts(86_400) == []


async def test_reads_usage_and_failures_do_not_feed_the_change_log(
    store: Store, make_key: MakeKey
) -> None:
    key = await store.create_key(make_key(user_id="u@x.com"), max_active_per_user=1)
    seq = await store.last_change_seq()
    await store.get_key(key.key_id)
    await store.list_keys(None)
    await store.record_usage([MinuteCounts.of(key.key_id, key.workspace_id, M0, success=1)])
    with pytest.raises(KeyLimitReached):
        await store.create_key(make_key(user_id="u@x.com"), max_active_per_user=1)
    with pytest.raises(NotFound):
        await store.update_key("key_missing", {"name": "x"})
    assert await store.last_change_seq() == seq


async def test_change_feed_is_shared_between_instances(
    open_store: OpenStore, store: Store, make_key: MakeKey
) -> None:
    other = await open_store()
    seq = await other.last_change_seq()
    key = await store.create_key(make_key(), max_active_per_user=10)
    assert [c.key_hash for c in await other.changes_since(seq)] == [key.key_hash]


# --- migrations, availability -------------------------------------------------------------------


async def test_migrations_are_idempotent(open_store: OpenStore, store: Store) -> None:
    assert await store.migrate() == []
    second = await open_store()
    assert await second.migrate() == []
    assert await second.ping()


def test_migration_files_are_ordered_and_named() -> None:
    files = migration_files("sqlite")
    versions = [version for version, _, _ in files]
    assert versions == sorted(versions) and versions[0] == 1
    assert files[0][1] == "init"
    assert "CREATE TABLE api_keys" in files[0][2]
    with pytest.raises(ValueError):
        migration_files("no-such-dialect")


async def test_ping(open_store: OpenStore, db_url: str) -> None:
    never_opened = build_store(db_url)
    assert await never_opened.ping() is False
    store = await open_store()
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False
    await store.close()  # closing twice is harmless


async def test_closed_store_is_unavailable(open_store: OpenStore, make_key: MakeKey) -> None:
    store = await open_store()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_key("key_x")
    with pytest.raises(StoreUnavailable):
        await store.create_key(make_key(), max_active_per_user=10)


async def test_unusable_database_is_unavailable(backend: str, tmp_path: Path) -> None:
    for problem, url in unusable_urls(backend, tmp_path).items():
        store = build_store(url)
        with pytest.raises(StoreUnavailable):
            await store.open()
        assert await store.ping() is False, problem
        await store.close()


async def test_locked_database_is_unavailable_for_writes(
    open_store: OpenStore, db_url: str, make_key: MakeKey
) -> None:
    store = await open_store(timeout=0.1)
    record = await store.create_key(make_key(), max_active_per_user=10)
    secret = "do-not-leak@example.com"
    with write_locked(db_url):
        with pytest.raises(StoreUnavailable) as caught:
            await store.create_key(make_key(user_id=secret), max_active_per_user=10)
        assert secret not in str(caught.value)
        assert await store.get_key(record.key_id) == record  # readers are not blocked
        assert await store.ping()
    await store.create_key(make_key(), max_active_per_user=10)  # and it recovers


# --- SQLite specifics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./gateway.db", "./gateway.db"),
        ("sqlite:////var/lib/gateway/keys.db", "/var/lib/gateway/keys.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_url_forms(url: str, path: str) -> None:
    assert database_path(url) == path


@pytest.mark.parametrize("url", ["postgresql://x/y", "sqlite://relative.db", "sqlite:///"])
def test_sqlite_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        sqlite_store(url, KeyStoreConfig())


async def test_sqlite_relative_path_and_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = sqlite_store("sqlite:///./data/nested/gateway.db", KeyStoreConfig())
    await store.open()
    try:
        assert await store.ping()
        assert (tmp_path / "data" / "nested" / "gateway.db").is_file()
    finally:
        await store.close()


async def test_sqlite_failed_migration_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.store.migrations as migrations_module

    path = tmp_path / "keys.db"
    broken = [*migration_files("sqlite"), (999, "broken", "CREATE TABLE t1 (x); CREATE TABLE (")]
    monkeypatch.setattr(migrations_module, "migration_files", lambda dialect: broken)
    with pytest.raises(StoreUnavailable):
        await sqlite_store(f"sqlite:///{path}", KeyStoreConfig()).open()
    with closing(sqlite3.connect(path)) as raw:
        tables = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == []  # 001 and the half of 999 were rolled back together

    monkeypatch.undo()
    store = sqlite_store(f"sqlite:///{path}", KeyStoreConfig())
    await store.open()
    try:
        assert await store.migrate() == []
        assert await store.list_workspaces() == []
    finally:
        await store.close()


async def test_sqlite_in_memory() -> None:
    store = sqlite_store("sqlite:///:memory:", KeyStoreConfig())
    await store.open()
    try:
        workspace = await store.create_workspace("mem")
        assert await store.get_workspace(workspace.id) == workspace
    finally:
        await store.close()


# --- subscriptions ------------------------------------------------------------------------------


async def test_subscription_put_get_and_the_key_reads_its_plan(
    store: Store, make_key: MakeKey, workspace: Workspace
) -> None:
    key = await store.create_key(make_key(), max_active_per_user=10)
    assert (key.subscription_id, key.plan) == (None, None)
    assert await store.subscriptions.get(workspace.id) is None
    since = await store.last_change_seq()

    sub, hashes = await store.subscriptions.put(workspace.id, "free")
    assert sub.subscription_id.startswith("sub_") and sub.plan == "free"
    assert (sub.workspace_id, is_utc(sub.started_at)) == (workspace.id, True)
    assert hashes == [key.key_hash]
    assert [c.key_hash for c in await store.changes_since(since)] == [key.key_hash]
    assert await store.subscriptions.get(workspace.id) == sub
    cached = await store.get_key_by_hash(key.key_hash)
    assert (cached.subscription_id, cached.plan) == (sub.subscription_id, "free")
    assert (await store.get_key(key.key_id)).plan == "free"
    assert [k.plan for k in (await store.list_keys(workspace.id)).results] == ["free"]

    same, _ = await store.subscriptions.put(workspace.id, "free")
    assert same == sub  # the same plan again: nothing starts anew
    pro, _ = await store.subscriptions.put(workspace.id, "pro")
    assert (pro.subscription_id, pro.plan) == (sub.subscription_id, "pro")
    assert pro.started_at >= sub.started_at
    assert (await store.get_key_by_hash(key.key_hash)).plan == "pro"


async def test_subscription_of_unknown_workspace_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.subscriptions.put("ws_missing", "free")


async def test_subscriptions_using_plans(store: Store) -> None:
    one = await store.create_workspace("one")
    two = await store.create_workspace("two")
    await store.subscriptions.put(one.id, "free")
    await store.subscriptions.put(two.id, "free")
    assert await store.subscriptions.using(["free", "pro"]) == {"free": sorted([one.id, two.id])}
