"""Fixtures for the key-store contract suite.

Every backend runs the same tests. Adding one (Postgres) means: a name in ``BACKENDS`` and a
branch in ``database_url``, ``unusable_urls``, ``build_store`` and ``write_locked``.

Postgres tests use the shared server on 127.0.0.1:5432 (``GATEWAY_TEST_PG``); each test gets a
fresh ``gw_test_<random>`` database, dropped afterwards. They skip only when that server is
unreachable.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.config import KeyStoreConfig
from gateway.keys.model import (
    KeyHasher,
    KeyRecord,
    Workspace,
    display_parts,
    generate_key,
    new_id,
    utcnow,
)
from gateway.store.postgres import postgres_store
from gateway.store.sqlite import database_path, sqlite_store

BACKENDS = ["sqlite", "postgres"]

PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST, PG_PORT = "127.0.0.1", 5432

# A gateway.store.Store: what these tests drive.
Store = Any
MakeKey = Callable[..., KeyRecord]
OpenStore = Callable[..., Awaitable[Store]]


# --- the backend factory ----------------------------------------------------------------------


def postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def pg_database_url(database: str) -> str:
    """``PG_ADMIN_URL`` pointing at another database of the same server."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


async def create_pg_database() -> str:
    """A fresh, empty database on the shared server; returns its URL."""
    import asyncpg  # type: ignore[import-untyped]

    name = f"gw_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return pg_database_url(name)


async def drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A fresh database on the shared server for one test, dropped afterwards; the test is
    skipped when the server is not reachable."""
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


def database_url(backend: str, tmp_path: Path) -> str:
    """A fresh, empty database for one test (Postgres: see the ``db_url`` fixture)."""
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
    if backend == "postgres":
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            free_port = probe.getsockname()[1]
        return {
            "no such database": pg_database_url(f"gw_missing_{secrets.token_hex(4)}"),
            "nothing listening": f"postgresql://postgres@127.0.0.1:{free_port}/postgres",
        }
    raise ValueError(f"unknown backend {backend!r}")


def build_store(url: str, *, timeout: float = KeyStoreConfig().timeout) -> Store:
    """``timeout``: ``key_store.timeout`` (the busy/lock wait and, on Postgres, every call)."""
    options = KeyStoreConfig(timeout=timeout)
    if url.startswith("sqlite:"):
        return sqlite_store(url, options)
    if url.startswith("postgresql:"):
        return postgres_store(url, options)
    raise ValueError(f"no store for {url!r}")


@contextmanager
def write_locked(url: str) -> Iterator[None]:
    """Another client (the CLI, another node) holding the database's write lock."""
    if url.startswith("postgresql:"):
        with _pg_write_locked(url):
            yield
        return
    if not url.startswith("sqlite:"):
        raise ValueError(f"cannot lock {url!r}")
    conn = sqlite3.connect(database_path(url), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.rollback()
        conn.close()


@contextmanager
def _pg_write_locked(url: str) -> Iterator[None]:
    """A connection on its own thread and loop holding ``EXCLUSIVE`` on ``api_keys`` (readers
    pass, writers wait), released when the block ends."""
    import asyncpg

    locked, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
                locked.set()
                while not release.is_set():
                    await asyncio.sleep(0.01)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            locked.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    locked.wait(10)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        release.set()
        thread.join(10)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend != "postgres":
        yield database_url(backend, tmp_path)
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh Postgres database (for the Postgres-only tests)."""
    async with fresh_pg_database() as url:
        yield url


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
