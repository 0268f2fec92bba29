"""The console's sign-in links, sessions and reveals in the key store, on every backend
(README "Web console"): single use, expiry, idle timeout, removed members, another session,
and the console's key-list filters."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import MemberNotFound, ValidationError
from gateway.keys.model import Workspace, utcnow
from gateway.keys.service import KeyService
from tests.keys.conftest import MakeKey, Store


def service(store: Store, **console: Any) -> KeyService:
    config = parse_config({"routes": [{"name": "r", "path": "/r/", "upstream":
                                       "http://127.0.0.1:9"}], "console": console}, "t.yaml", {})
    return KeyService(store, config)


async def member(keys: KeyService, workspace: Workspace, email: str = "a@example.com") -> str:
    added = await keys.members.add(workspace.id, {"email": email, "role": "admin"}, "test")
    return added.user_id


async def test_a_link_signs_in_once(store: Store, workspace: Workspace) -> None:
    keys = service(store)
    user_id = await member(keys, workspace)
    token = await keys.console.make_link(workspace.id, "A@Example.com", "test")
    signed = await keys.console.sign_in(token)
    assert signed is not None and signed.session.user_id == user_id
    assert signed.session.role == "admin"
    assert await keys.console.sign_in(token) is None  # used
    assert await keys.console.session(signed.token) == signed.session
    assert await keys.console.session(token) is None  # a link is no session
    [event] = [e for e in await keys.audit(workspace.id) if e.action == "console.link"]
    assert token not in str(event.changes)


async def test_links_are_for_members_only_and_expire(store: Store, workspace: Workspace) -> None:
    keys = service(store, link_ttl=0.2)
    await member(keys, workspace)
    with pytest.raises(MemberNotFound):
        await keys.console.make_link(workspace.id, "stranger@example.com", "test")
    token = await keys.console.make_link(workspace.id, "a@example.com", "test")
    await asyncio.sleep(0.3)
    assert await keys.console.sign_in(token) is None


async def test_a_session_ends_when_idle_signed_out_or_its_member_removed(
    store: Store, workspace: Workspace
) -> None:
    keys = service(store, idle_timeout=3600)
    user_id = await member(keys, workspace)
    signed = await keys.console.sign_in(await keys.console.make_link(workspace.id,
                                                                     "a@example.com", "t"))
    assert signed is not None
    await store.console.touch(signed.session.token_hash, utcnow() - timedelta(hours=2))
    assert await keys.console.session(signed.token) is None  # idle past the timeout
    again = await keys.console.sign_in(await keys.console.make_link(workspace.id,
                                                                    "a@example.com", "t"))
    assert again is not None
    await keys.console.sign_out(again.session)
    assert await keys.console.session(again.token) is None
    third = await keys.console.sign_in(await keys.console.make_link(workspace.id,
                                                                    "a@example.com", "t"))
    assert third is not None
    await keys.members.remove(workspace.id, user_id, "test")
    assert await keys.console.session(third.token) is None


async def test_a_reveal_is_read_once_by_its_own_session(store: Store, workspace: Workspace) -> None:
    keys = service(store)
    await member(keys, workspace)
    await member(keys, workspace, "b@example.com")
    first = await keys.console.sign_in(await keys.console.make_link(workspace.id,
                                                                    "a@example.com", "t"))
    other = await keys.console.sign_in(await keys.console.make_link(workspace.id,
                                                                    "b@example.com", "t"))
    assert first is not None and other is not None
    plaintext = "sk_live_" + "x" * 32
    reveal = await keys.console.seal(first.session, "key_1", plaintext)
    rows = await store.db.fetch("SELECT sealed FROM console_reveals")
    assert plaintext not in str(rows[0][0])  # the store holds it XOR a pad it never sees
    assert await keys.console.reveal(other.session, reveal) is None  # not theirs
    reveal_id = reveal.split(".")[0]
    assert await keys.console.reveal(first.session, reveal_id + ".AAAA") is None  # a bad pad
    second = await keys.console.seal(first.session, "key_1", plaintext)
    assert await keys.console.reveal(first.session, second) == ("key_1", plaintext)
    assert await keys.console.reveal(first.session, second) is None  # once


async def test_the_console_list_filters(store: Store, make_key: MakeKey,
                                        workspace: Workspace) -> None:
    now = utcnow()
    made = [
        make_key(name="Billing 50%_off", created_at=now - timedelta(minutes=5)),
        make_key(name="billing test", environment="test", created_at=now - timedelta(minutes=4)),
        make_key(name="old", status="revoked", created_at=now - timedelta(minutes=3)),
        make_key(name="gone", expires_at=now - timedelta(minutes=1),
                 created_at=now - timedelta(minutes=2)),
        make_key(name="paused", disabled_at=now, created_at=now - timedelta(minutes=1)),
    ]
    for record in made:
        await store.create_key(record, max_active_per_user=10)

    async def names(**filters: Any) -> list[str]:
        page = await store.list_keys(workspace.id, newest_first=True, **filters)
        return [k.name for k in page.results]

    assert await names() == ["paused", "billing test", "Billing 50%_off"]
    assert await names(search="BILLING") == ["billing test", "Billing 50%_off"]
    assert await names(search="50%_") == ["Billing 50%_off"]  # LIKE's wildcards, literally
    assert await names(search="%") == ["Billing 50%_off"]
    assert await names(search=made[2].hint, include_revoked=True) == ["old"]
    assert await names(environment="test") == ["billing test"]
    for status, expected in (("active", ["billing test", "Billing 50%_off"]),
                             ("disabled", ["paused"]), ("revoked", ["old"]),
                             ("expired", ["gone"])):
        assert await names(status=status) == expected
    with pytest.raises(ValidationError):
        await names(status="lost")
    first = await store.list_keys(workspace.id, newest_first=True, include_revoked=True,
                                  limit=2)
    rest = await store.list_keys(workspace.id, newest_first=True, include_revoked=True,
                                 limit=10, cursor=first.next_cursor)
    assert [k.name for k in first.results + rest.results] == \
        ["paused", "gone", "old", "billing test", "Billing 50%_off"]
