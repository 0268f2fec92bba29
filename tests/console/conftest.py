"""Browser tests of the web console (README "Web console"): Playwright for Python driving
Debian's Chromium (``playwright install`` cannot download browsers here), against a real
``gateway serve`` process on SQLite and on Postgres (a fresh database per test).

The tests are plain functions on Playwright's sync API: one browser per module, a fresh
context (cookie jar) per signed-in member. A test's ``Console`` holds the gateway, its
workspace and the ways in: the CLI's sign-in links, the proxy, the key store itself (for
seeding usage and ten thousand keys)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import free_port
from tests.gateway_process import ROOT, GatewayProcess
from tests.keys.conftest import (
    BACKENDS,
    create_pg_database,
    drop_pg_database,
    postgres_reachable,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "docs" / "console"
T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """An async helper run to completion on its own loop, in a thread: Playwright's sync API
    owns this thread's loop."""
    async def main() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    """The demo upstream (``gateway echo-upstream``), for 200s through the proxy."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "echo-upstream", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    assert b"listening" in process.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)
    process.stdout.close()


@dataclass
class Console:
    """A running gateway with a workspace whose members sign in to its console."""

    gateway: GatewayProcess
    workspace: str
    database: str
    backend: str
    emails: dict[str, str] = field(default_factory=dict)  # role -> the member's email

    @property
    def url(self) -> str:
        return self.gateway.admin_url + "/console"

    def cli(self, *args: str) -> Any:
        """``gateway <args>`` against this gateway's config; its JSON output."""
        return json.loads(self.gateway.command(*args))

    def cli_key(self, *args: str) -> tuple[dict[str, Any], str]:
        """``gateway keys create <args>``: the key object and the plaintext (the last line)."""
        out = self.gateway.command("keys", "create", *args).strip().splitlines()
        return json.loads("\n".join(out[:-1])), out[-1]

    def member(self, role: str, workspace: str | None = None) -> str:
        """A new member with ``role`` (email ``<role>@example.com``); returns its user_id."""
        email = f"{role}@example.com"
        found = self.cli("members", "add", "--workspace", workspace or self.workspace,
                         "--email", email, "--role", role)
        self.emails[role] = email
        return str(found["user_id"])

    def link(self, email: str, workspace: str | None = None) -> str:
        out = self.gateway.command("console-link", "--workspace", workspace or self.workspace,
                                   "--email", email)
        return out.strip().splitlines()[-1]

    def sign_in(self, browser: Any, role: str) -> Any:
        """A new browser context signed in as the member of ``role``: its page, on Keys."""
        page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        page.goto(self.link(self.emails[role]))
        page.wait_for_url(self.url + "/")
        return page

    def proxy(self, key: str, path: str = "/api/ping") -> int:
        """The status of a GET through the proxy with ``key``."""
        request = urllib.request.Request(self.gateway.url + path,
                                         headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def until_proxy(self, key: str, status: int, timeout: float = 5.0) -> None:
        """Changes reach the proxy's cache through the change feed: wait for ``status``."""
        deadline = time.monotonic() + timeout
        while (got := self.proxy(key)) != status:
            assert time.monotonic() < deadline, f"proxy answered {got}, not {status}"
            time.sleep(0.05)

    def shot(self, page: Any, name: str, full_page: bool = True) -> None:
        """A screenshot for the README, from the SQLite run only (one set of pictures)."""
        if self.backend == "sqlite":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def routes(upstream: str) -> list[dict[str, Any]]:
    return [{"name": "api", "path": "/api/", "upstream": upstream,
             "permissions": {"GET": ["read"], "POST": ["write"]}}]


def wait_ready(gateway: GatewayProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert gateway.process is not None and gateway.process.poll() is None, \
            gateway.log_text()
        try:
            with urllib.request.urlopen(gateway.admin_url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, gateway.log_text()
        time.sleep(0.05)


@pytest.fixture(params=BACKENDS)
def console(request: pytest.FixtureRequest, tmp_path: Path, echo_upstream: str
            ) -> Iterator[Console]:
    """A gateway on a fresh database of the backend, its workspace ``acme`` with an admin."""
    if request.param == "postgres":
        if not postgres_reachable():
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
        database = run_async(create_pg_database)
    else:
        database = f"sqlite:///{tmp_path}/gateway.db"
    gateway = GatewayProcess.create(
        tmp_path, routes(echo_upstream), database=database,
        permissions={"implies": {"write": ["read"]}},
        plans={"team": {"quota": {"day": 5000, "month": 100000}}}, default_plan="team",
        key_cache={"poll_interval": 0.05},
    )
    try:
        console = Console(gateway, "", database, request.param)
        console.workspace = console.cli("workspaces", "create", "--name", "acme")["id"]
        console.member("admin")
        gateway.start()
        wait_ready(gateway)
        yield console
    finally:
        gateway.stop()
        if request.param == "postgres":
            run_async(lambda: drop_pg_database(database))


async def seed_keys(database: str, workspace: str, count: int) -> None:
    """``count`` keys straight into the store, in one transaction (no plaintext exists)."""
    from gateway.keys.model import KeyRecord, new_id, utcnow
    from gateway.store.keys import KINDS, PRINCIPAL, SUBSCRIPTION
    from gateway.store.rows import Rows
    from tests.keys.conftest import build_store

    store = build_store(database)
    await store.open()
    try:
        rows = Rows("api_keys", KeyRecord, KINDS, store.db.dialect,
                    {"principal_id": PRINCIPAL, **SUBSCRIPTION})
        found = await store.get_workspace(workspace)
        start = utcnow()
        records = [
            KeyRecord(key_id=new_id("key"), key_hash=new_id("hash"), key_prefix="sk_live_Ab12",
                      hint=f"{i:04d}"[-4:], name=f"service {i:05d}", workspace_id=workspace,
                      project_id=found.default_project_id, user_id=None,
                      environment="test" if i % 4 == 0 else "live",
                      created_at=start - timedelta(seconds=count - i))
            for i in range(count)
        ]
        async with store.db.transaction() as tx:
            await tx.executemany(rows.insert, [rows.params(r) for r in records])
    finally:
        await store.close()


async def seed_usage(database: str, workspace: str, key_ids: list[str], days: int = 7) -> None:
    """Hourly minutes of traffic for the keys over the last ``days`` (shapes for the charts)."""
    from gateway.store.usage import MinuteCounts
    from tests.keys.conftest import build_store

    store = build_store(database)
    await store.open()
    try:
        now = int(time.time()) // 60 * 60
        minutes = []
        for k, key_id in enumerate(key_ids):
            for hour in range(days * 24):
                start = now - hour * 3600
                wave = 20 + int(15 * math.sin(hour / 4 + k)) + (k + 1) * 6
                minutes.append(MinuteCounts.of(
                    key_id, workspace, start, success=wave,
                    rate_limited=wave // 9 if hour % 7 == 0 else 0,
                    upstream_error=2 if hour % 11 == k else 0,
                    forbidden=1 if hour % 5 == 0 else 0))
        await store.usage.add(minutes)
    finally:
        await store.close()
