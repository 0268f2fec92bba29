"""Unknown keys cannot turn into a flood of store queries: a well-formed unknown key costs at
most one lookup per negative-cache period, however many requests carry it at once (single
flight, then the negative cache); a malformed one (wrong checksum) costs none."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from gateway.keys.model import KeyRecord, generate_key
from tests.conftest import Gateway
from tests.hostile.figures import record

KEYS = 10
REPEATS = 20


async def test_unknown_keys_cost_one_lookup_each(
    hostile: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = hostile.services.store
    real: Callable[[str], Awaitable[KeyRecord | None]] = store.get_key_by_hash
    lookups: Counter[str] = Counter()

    async def counted(key_hash: str) -> KeyRecord | None:
        lookups[key_hash] += 1
        return await real(key_hash)

    monkeypatch.setattr(store, "get_key_by_hash", counted)
    unknown = [generate_key("sk_live") for _ in range(KEYS)]
    malformed = [key[:-1] + ("A" if key[-1] != "A" else "B") for key in unknown]
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as http:

        async def call(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.get(f"{hostile.url}/api/ai/x", headers=headers) as response:
                statuses[response.status] += 1

        for _round in range(2):  # the second round is answered by the negative cache
            await asyncio.gather(*(call(key) for key in unknown * REPEATS))
        await asyncio.gather(*(call(key) for key in malformed * REPEATS))
    requests = sum(statuses.values())
    record("LOOKUPS", f"{2 * KEYS * REPEATS} requests with {KEYS} unknown well-formed keys: "
           f"{sum(lookups.values())} store lookups; {KEYS * REPEATS} with a bad checksum: 0")
    assert statuses == Counter({401: requests})
    assert sum(lookups.values()) == KEYS
    assert set(lookups.values()) == {1}
