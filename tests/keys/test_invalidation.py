"""Changes written by another process (the CLI, another node) reach a running gateway through
the store's change feed."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.keys.service import KeyService
from gateway.services import open_store
from tests.conftest import Gateway, bearer


async def test_revocation_by_another_process_is_seen_quickly(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    record = gateway.created[-1]
    async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as r:
        assert r.status == 200  # cached now
    config = gateway.services.config
    async with open_store(config) as other_store:  # a second connection: "another process"
        await KeyService(other_store, config).revoke_key(record.key_id, "cli")
    started = time.monotonic()
    while time.monotonic() - started < 3:
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as r:
            if r.status == 401:
                break
        await asyncio.sleep(0.05)
    lag = time.monotonic() - started
    assert r.status == 401
    assert lag < 1.5  # poll interval is 0.5 s


async def test_negative_entry_dropped_when_the_key_appears_elsewhere(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A hash first seen as unknown is cached as negative; when another process then inserts a
    key with that hash, the change feed drops the negative entry."""
    config = gateway.services.config
    async with open_store(config) as other_store:
        service = KeyService(other_store, config)
        record, key = await service.create_key(
            gateway.workspace.id, {"name": "late", "permissions": ["read"]}, "cli"
        )
        stored = await other_store.get_key(record.key_id)
        assert stored is not None
        # make the gateway see the hash as unknown first
        gateway.services.cache._remember(stored.key_hash, None)
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as r:
            assert r.status == 401
        await other_store.update_key(record.key_id, {"description": "touched"})
    started = time.monotonic()
    while time.monotonic() - started < 3:
        async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as r:
            if r.status == 200:
                break
        await asyncio.sleep(0.05)
    assert r.status == 200
    assert time.monotonic() - started < 1.5
