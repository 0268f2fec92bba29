"""Fixtures for the key-store contract suite.

Every backend runs the same tests. Adding one (Postgres) means: a name in ``BACKENDS`` and a
branch in ``database_url``, ``unusable_urls``, ``build_store`` and ``write_locked``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.keys.model import (
    KeyHasher,
    KeyRecord,
    Workspace,
    display_parts,
    generate_key,
    new_id,
    utcnow,
)
from gateway.keys.sqlite import SqliteKeyStore, database_path

BACKENDS = ["sqlite"]

# A KeyStore plus ``migrate() -> list[int]``: what these tests drive.
Store = Any
MakeKey = Callable[..., KeyRecord]
OpenStore = Callable[..., Awaitable[Store]]


# --- the backend factory ----------------------------------------------------------------------


def database_url(backend: str, tmp_path: Path) -> str:
    """A fresh, empty database for one test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'keys.db'}"  # absolute: sqlite:////tmp/...
    raise ValueError(f"unknown backend {backend!r}")


def unusable_urls(backend: str, tmp_path: Path) -> dict[str, str]:
    """Databases the store cannot use, by what is wrong with them."""
    if backend == "sqlite":
        blocker = tmp_path / "plain-file"
        blocker.write_text("x")
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not an SQLite database, just some bytes\n" * 100)
        return {
            "parent is a file": f"sqlite:///{blocker / 'keys.db'}",
            "not a database": f"sqlite:///{garbage}",
        }
    raise ValueError(f"unknown backend {backend!r}")


def build_store(url: str, *, lock_timeout_ms: int = 5000) -> Store:
    if url.startswith("sqlite:"):
        return SqliteKeyStore(url, busy_timeout_ms=lock_timeout_ms)
    raise ValueError(f"no store for {url!r}")


@contextmanager
def write_locked(url: str) -> Iterator[None]:
    """Another client (the CLI, another node) holding the database's write lock."""
    if not url.startswith("sqlite:"):
        raise ValueError(f"cannot lock {url!r}")
    conn = sqlite3.connect(database_path(url), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.rollback()
        conn.close()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> str:
    return database_url(backend, tmp_path)


@pytest.fixture
async def open_store(db_url: str) -> AsyncIterator[OpenStore]:
    """Open another store instance on the test's database (closed at teardown)."""
    opened: list[Store] = []

    async def _open(**options: Any) -> Store:
        store = build_store(db_url, **options)
        await store.open()
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    return await open_store()


@pytest.fixture
async def workspace(store: Store) -> Workspace:
    workspace: Workspace = await store.create_workspace("acme")
    return workspace


@pytest.fixture
def hasher() -> KeyHasher:
    return KeyHasher(None)


@pytest.fixture
def make_key(workspace: Workspace, hasher: KeyHasher) -> MakeKey:
    """``make_key(**overrides)``: a fresh KeyRecord in ``workspace`` (default project)."""

    def _make(**overrides: Any) -> KeyRecord:
        environment = overrides.get("environment", "live")
        plaintext = generate_key(f"sk_{environment}")
        key_prefix, hint = display_parts(plaintext)
        fields: dict[str, Any] = {
            "key_id": new_id("key"),
            "key_hash": hasher(plaintext),
            "key_prefix": key_prefix,
            "hint": hint,
            "name": "test key",
            "workspace_id": workspace.id,
            "project_id": workspace.default_project_id,
            "user_id": None,
            "created_at": utcnow(),
        }
        fields.update(overrides)
        return KeyRecord(**fields)

    return _make
