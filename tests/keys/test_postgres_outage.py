"""Postgres outage: a private server (own data directory, free port) is stopped under a running
gateway and started again. The machine's shared server is never touched.

While it is down: keys already cached keep working (stale window: ``key_cache.stale_if_error``
past the ttl, itself capped at 5 s once the change listener is lost); an uncached key is 503
``auth_unavailable`` (never 401); ``/readyz`` is 503; no request waits longer than the store's
command timeout; the admin API is 503 ``store_unavailable``. Once it is back, service resumes
by itself within 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import KeyStoreConfig
from tests.conftest import Upstream, free_port
from tests.gateway_process import Admin, GatewayProcess

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
COMMAND_TIMEOUT = KeyStoreConfig().timeout  # what one store call may take (key_store.timeout)


class PrivatePostgres:
    """initdb + pg_ctl on a temp directory and a free port (as the postgres user when root)."""

    def __init__(self) -> None:
        self.bin = Path(PG_BINS[-1])
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, timeout=timeout, cwd=self.root
        )

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "pg.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not PG_BINS or (shutil.which("runuser") is None and os.geteuid() == 0):
        pytest.skip("initdb/pg_ctl (or runuser) not available")
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


async def timed_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object] | None, float]:
    started = time.perf_counter()
    async with session.get(url, headers=headers or {}) as response:
        body = await response.read()
        elapsed = time.perf_counter() - started
        data = None
        if response.content_type.endswith("json"):
            data = await response.json(content_type=None)
        del body
        return response.status, data, elapsed


async def new_keys(admin: Admin, names: list[str]) -> tuple[str, list[str]]:
    """A new workspace and one key per name in it, through the admin API: its id and the
    keys' plaintexts."""
    _, workspace = await admin.call("POST", "/admin/v1/workspaces", {"name": "outage"})
    keys = []
    for name in names:
        status, created = await admin.call(
            "POST", f"/admin/v1/workspaces/{workspace['id']}/keys", {"name": name})
        assert status == 201
        keys.append(created["key"])
    return workspace["id"], keys


@pytest.mark.slow
async def test_outage_and_recovery(
    private_pg: PrivatePostgres, tmp_path: Path, upstream: Upstream
) -> None:
    node = GatewayProcess.create(
        tmp_path, [{"name": "api", "path": "/api/", "upstream": upstream.url}],
        database=private_pg.url, workers=1,
        defaults={"rate_limit": {"requests": 100000, "window": 60}, "max_concurrent": 100},
    )
    try:
        token = node.admin_key()
        node.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await node.wait_ready(session)
            workspace_id, keys = await new_keys(Admin(session, node, token),
                                                ["cached", "uncached"])
            auth = {"Authorization": f"Bearer {token}"}
            cached = {"Authorization": f"Bearer {keys[0]}"}
            uncached = {"Authorization": f"Bearer {keys[1]}"}
            api = f"{node.url}/api/x"
            assert (await timed_get(session, api, cached))[0] == 200

            private_pg.stop()
            worst = 0.0
            for _ in range(5):
                status, _, elapsed = await timed_get(session, api, cached)
                assert status == 200
                worst = max(worst, elapsed)
                status, body, elapsed = await timed_get(session, api, uncached)
                assert status == 503 and body is not None
                assert body["code"] == "auth_unavailable"
                worst = max(worst, elapsed)
                status, _, elapsed = await timed_get(session, f"{node.admin_url}/readyz")
                assert status == 503
                worst = max(worst, elapsed)
                status, body, elapsed = await timed_get(  # the admin API: 503, never 401
                    session, f"{node.admin_url}/admin/v1/workspaces/{workspace_id}/keys", auth
                )
                assert status == 503 and body is not None, (status, body)
                assert body["code"] == "store_unavailable", body
                worst = max(worst, elapsed)
            assert worst < COMMAND_TIMEOUT + 0.5, worst

            private_pg.start()
            back = time.monotonic()
            while True:
                status, _, _ = await timed_get(session, api, uncached)
                ready, _, _ = await timed_get(session, f"{node.admin_url}/readyz")
                if status == 200 and ready == 200:
                    break
                assert status in (503, 200), status
                assert time.monotonic() - back < 2.0, "not resumed within 2 s"
                await asyncio.sleep(0.02)
            resumed = time.monotonic() - back
            assert (await timed_get(session, api, cached))[0] == 200

            # the change listener is back too: a revocation still lands at once
            async with session.get(
                f"{node.admin_url}/admin/v1/workspaces/{workspace_id}/keys", headers=auth
            ) as response:
                listed = (await response.json())["results"]
            cached_id = next(k["key_id"] for k in listed if k["name"] == "cached")
            await asyncio.sleep(1.2)  # past the listener's longest reconnect backoff
            async with session.delete(
                f"{node.admin_url}/admin/v1/keys/{cached_id}", headers=auth
            ) as response:
                assert response.status == 200
            assert (await timed_get(session, api, cached))[0] == 401
    finally:
        node.stop()
    print(f"\noutage: slowest request while down {worst * 1000:.1f} ms; resumed in {resumed:.2f} s")


def cluster_pids(server: PrivatePostgres) -> list[int]:
    """The postmaster and every backend of the private cluster."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids, todo = [], [postmaster]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(p) for p in (task / "children").read_text().split()]
    return pids


def signal_cluster(server: PrivatePostgres, signum: int) -> None:
    for pid in cluster_pids(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def metric(session: aiohttp.ClientSession, admin_url: str, line: str) -> float:
    async with session.get(f"{admin_url}/metrics") as response:
        text = await response.text()
    return next((float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line)),
                0.0)


@pytest.mark.slow
async def test_black_holed_postgres(
    private_pg: PrivatePostgres, tmp_path: Path, upstream: Upstream
) -> None:
    """Postgres stops answering without closing anything (every process of the cluster
    SIGSTOPped: connections stay open, queries are never answered, a connect is accepted by
    the kernel and left at that): a cached key is served, each cold key is 503
    ``auth_unavailable`` within ``key_store.timeout`` and costs one store call however many
    requests carry it (single flight); once Postgres answers again, cold keys are 200."""
    timeout = 1.0
    node = GatewayProcess.create(
        tmp_path, [{"name": "api", "path": "/api/", "upstream": upstream.url}],
        database=private_pg.url, key_store={"timeout": timeout, "connect_timeout": timeout},
    )
    stopped = False
    try:
        token = node.admin_key()
        node.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await node.wait_ready(session)
            _, keys = await new_keys(Admin(session, node, token), [f"k{i}" for i in range(4)])
            warm, cold = keys[0], keys[1:]
            api = f"{node.url}/api/x"
            assert (await timed_get(session, api, {"Authorization": f"Bearer {warm}"}))[0] == 200
            lookups = 'gateway_store_errors_total{operation="key_lookup"}'
            before = await metric(session, node.admin_url, lookups)

            signal_cluster(private_pg, signal.SIGSTOP)
            stopped = True
            started = time.monotonic()
            waves = [timed_get(session, api, {"Authorization": f"Bearer {key}"})
                     for key in cold for _ in range(5)]
            warm_answers = [await timed_get(session, api, {"Authorization": f"Bearer {warm}"})
                            for _ in range(10)]
            cold_answers = await asyncio.gather(*waves)
            whole = time.monotonic() - started
            assert [status for status, _, _ in warm_answers] == [200] * 10
            assert max(elapsed for _, _, elapsed in warm_answers) < 0.5
            assert {(status, (body or {}).get("code")) for status, body, _ in cold_answers} == {
                (503, "auth_unavailable")}
            slowest = max(elapsed for _, _, elapsed in cold_answers)
            assert slowest < timeout + 0.5, slowest
            calls = await metric(session, node.admin_url, lookups) - before
            assert calls == len(cold), calls  # one store call per cold key, 5 requests each

            signal_cluster(private_pg, signal.SIGCONT)
            stopped = False
            back = time.monotonic()
            while (await timed_get(session, api, {"Authorization": f"Bearer {cold[0]}"}))[0] != 200:
                assert time.monotonic() - back < 2 * timeout + 2.0, "not resumed"
                await asyncio.sleep(0.05)
            resumed = time.monotonic() - back
    finally:
        if stopped:
            signal_cluster(private_pg, signal.SIGCONT)
        node.stop()
    print(f"\nblack hole: {len(cold_answers)} requests with {len(cold)} cold keys: 503 "
          f"auth_unavailable, slowest {slowest * 1000:.0f} ms (key_store.timeout "
          f"{timeout:g} s), {calls:g} store calls; cached key served; 200 again {resumed:.2f} s "
          f"after SIGCONT; whole wave {whole:.2f} s")
