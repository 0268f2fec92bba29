"""SQLite-only behaviour the contract suite does not cover."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import KeyStoreConfig
from gateway.store.sqlite import sqlite_store


async def test_many_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """The switch to WAL gets no busy handler from SQLite; without the retry about one round in
    fifteen failed with "database is locked"."""
    for trial in range(20):
        stores = [
            sqlite_store(f"sqlite:///{tmp_path}/t{trial}.db", KeyStoreConfig()) for _ in range(8)
        ]
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        for store, result in zip(stores, results, strict=True):
            if not isinstance(result, BaseException):
                await store.close()
        assert not [r for r in results if isinstance(r, BaseException)], (trial, results)
