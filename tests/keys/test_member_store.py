"""The members table and the key columns it brought (README "Members and roles", seed 003), on
every backend (``conftest.BACKENDS``), in the style of ``test_store_contract.py``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.errors import Conflict, KeyLimitReached, MemberNotFound, NotFound
from gateway.keys.model import KeyRecord, Member, Workspace, new_id, utcnow
from gateway.store import migrations
from tests.keys.conftest import MakeKey, Store, build_store


def member(workspace: Workspace, email: str, role: str = "member") -> Member:
    return Member(new_id("usr"), workspace.id, email, role, utcnow())


async def test_members_round_trip_oldest_first(store: Store, workspace: Workspace) -> None:
    added = [await store.members.add(member(workspace, f"m{i}@example.com")) for i in range(3)]
    assert await store.members.all(workspace.id) == added
    assert await store.members.get(workspace.id, added[1].user_id) == added[1]
    assert await store.members.by_email(workspace.id, "m2@example.com") == added[2]
    assert await store.members.get("ws_other", added[1].user_id) is None


async def test_member_email_is_unique_in_its_workspace_only(
    store: Store, workspace: Workspace
) -> None:
    await store.members.add(member(workspace, "a@example.com"))
    with pytest.raises(Conflict):
        await store.members.add(member(workspace, "a@example.com", "admin"))
    other = await store.create_workspace("other")
    await store.members.add(member(other, "a@example.com"))
    assert len(await store.members.all(workspace.id)) == 1


async def test_member_of_an_unknown_workspace_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.members.add(Member(new_id("usr"), "ws_nope", "a@example.com", "viewer",
                                       utcnow()))


async def test_set_role(store: Store, workspace: Workspace) -> None:
    alice = await store.members.add(member(workspace, "a@example.com"))
    changed = await store.members.set_role(workspace.id, alice.user_id, "owner")
    assert changed.role == "owner" and changed.user_id == alice.user_id
    with pytest.raises(MemberNotFound):
        await store.members.set_role(workspace.id, "usr_nope", "owner")


async def test_a_member_key_needs_the_member(
    store: Store, workspace: Workspace, make_key: MakeKey
) -> None:
    with pytest.raises(MemberNotFound):
        await store.create_key(make_key(user_id="usr_nobody"), max_active_per_user=10)
    assert (await store.list_keys(workspace.id, include_revoked=True)).total == 0
    other = await store.create_workspace("other")
    outsider = await store.members.add(member(other, "o@example.com"))
    with pytest.raises(MemberNotFound):  # a member of another workspace is no member here
        await store.create_key(make_key(user_id=outsider.user_id), max_active_per_user=10)


async def test_principal_is_the_member_or_a_stable_service_id(
    store: Store, workspace: Workspace, make_key: MakeKey
) -> None:
    alice = await store.members.add(member(workspace, "a@example.com"))
    owned = await store.create_key(make_key(user_id=alice.user_id), max_active_per_user=10)
    service = await store.create_key(make_key(user_id="ci@example.com"), max_active_per_user=10)
    assert owned.principal_id == alice.user_id
    assert service.principal_id == "svc_" + service.key_id.removeprefix("key_")
    for record in (owned, service):
        by_hash = await store.get_key_by_hash(record.key_hash)
        assert by_hash is not None and by_hash.principal_id == record.principal_id
        assert record.internal_id.startswith("int_")
    assert owned.internal_id != service.internal_id
    listed = (await store.list_keys(workspace.id)).results
    assert {r.key_id: r.principal_id for r in listed} == {
        owned.key_id: owned.principal_id, service.key_id: service.principal_id}


async def test_rotation_keeps_the_principal_and_takes_a_new_internal_id(
    store: Store, make_key: MakeKey
) -> None:
    old = await store.create_key(make_key(user_id="svc-owner"), max_active_per_user=10)
    new = make_key(user_id="svc-owner", rotated_from=old.key_id)
    _old, rotated = await store.rotate_key(old.key_id, new, utcnow() + timedelta(hours=1), "a")
    assert rotated.principal_id == old.principal_id
    assert rotated.internal_id != old.internal_id


async def test_disabled_at_round_trip_and_it_still_counts_as_held(
    store: Store, make_key: MakeKey
) -> None:
    key = await store.create_key(make_key(user_id="u"), max_active_per_user=1)
    disabled = await store.update_key(key.key_id, {"disabled_at": utcnow()})
    assert disabled.effective_status(utcnow()) == "disabled"
    with pytest.raises(KeyLimitReached):  # disabling is reversible: the key is still held
        await store.create_key(make_key(user_id="u"), max_active_per_user=1)
    enabled = await store.update_key(key.key_id, {"disabled_at": None})
    assert enabled.effective_status(utcnow()) == "active" and enabled.disabled_at is None


async def test_member_keys_count_toward_max_active_even_when_racing(
    store: Store, workspace: Workspace, make_key: MakeKey
) -> None:
    alice = await store.members.add(member(workspace, "a@example.com"))
    results = await asyncio.gather(
        *(store.create_key(make_key(user_id=alice.user_id), max_active_per_user=3)
          for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, KeyRecord) for r in results) == 3
    assert all(isinstance(r, KeyRecord | KeyLimitReached) for r in results)


async def test_remove_member_revokes_its_keys_in_one_transaction(
    store: Store, workspace: Workspace, make_key: MakeKey
) -> None:
    alice = await store.members.add(member(workspace, "a@example.com"))
    bob = await store.members.add(member(workspace, "b@example.com"))
    active = await store.create_key(make_key(user_id=alice.user_id), max_active_per_user=10)
    disabled = await store.create_key(make_key(user_id=alice.user_id), max_active_per_user=10)
    await store.update_key(disabled.key_id, {"disabled_at": utcnow()})
    gone = await store.create_key(make_key(user_id=alice.user_id), max_active_per_user=10)
    await store.update_key(gone.key_id, {"status": "revoked", "revoked_at": utcnow(),
                                         "revoked_by": "earlier"})
    bobs = await store.create_key(make_key(user_id=bob.user_id), max_active_per_user=10)
    seq = await store.last_change_seq()

    removed, revoked = await store.members.remove(workspace.id, alice.user_id, "key_admin")

    assert removed == alice
    assert sorted(r.key_id for r in revoked) == sorted([active.key_id, disabled.key_id])
    assert all(r.status == "revoked" and r.revoked_by == "key_admin" for r in revoked)
    assert {c.key_hash for c in await store.changes_since(seq)} == {
        active.key_hash, disabled.key_hash}
    earlier = await store.get_key(gone.key_id)
    assert earlier is not None and earlier.revoked_by == "earlier"
    untouched = await store.get_key(bobs.key_id)
    assert untouched is not None and untouched.status == "active"
    assert await store.members.all(workspace.id) == [bob]
    with pytest.raises(MemberNotFound):
        await store.members.remove(workspace.id, alice.user_id, "key_admin")
    with pytest.raises(MemberNotFound):  # and no key can be made for it any more
        await store.create_key(make_key(user_id=alice.user_id), max_active_per_user=10)


async def test_migration_002_gives_existing_keys_an_internal_and_a_service_id(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys made before members existed keep working, as unowned service keys."""
    store = build_store(db_url)
    everything = migrations.migration_files
    monkeypatch.setattr(migrations, "migration_files", lambda name: everything(name)[:1])
    await store.db.open()
    try:
        assert await store.migrate() == [1]
        workspace = await store.create_workspace("old")
        await store.db.execute(
            "INSERT INTO api_keys (key_id, key_hash, key_prefix, hint, name, workspace_id,"
            " user_id, created_at) VALUES ('key_Legacy0123456789', 'h1', 'sk_live_abcd', 'wxyz',"
            " 'old key', $1, 'usr_notamember', $2)",
            workspace.id, store.db.dialect.timestamp(utcnow()),
        )
        monkeypatch.setattr(migrations, "migration_files", everything)
        assert 2 in await store.migrate()
        found = await store.get_key_by_hash("h1")
    finally:
        await store.close()
    assert found is not None and found.effective_status(utcnow()) == "active"
    assert found.internal_id == "int_Legacy0123456789"
    assert found.principal_id == "svc_Legacy0123456789"
    assert found.user_id == "usr_notamember" and found.disabled_at is None
