"""Leaked-key revocation with real ``gateway serve`` processes: a signed report sent to one
node revokes the key on every node within the revocation bound (Postgres NOTIFY, or the SQLite
change log polled); the public keys file is named relative to the config file and read again
on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, bearer
from tests.gateway_process import GatewayProcess
from tests.keys.conftest import BACKENDS, fresh_pg_database
from tests.keys.test_revocation_multiprocess import first_status
from tests.secret_scanning.conftest import Signer, keys_document, post_report, report

REVOCATION_BOUND = 2.0  # seconds: far above the p99 README "Running on Postgres" measures
KEYS_FILE = "github-keys.json"  # relative: to each node's config file


def scanning_node(
    directory: Path, upstream: Upstream, signer: Signer, database: str
) -> GatewayProcess:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / KEYS_FILE).write_bytes(keys_document(signer))
    route = {"name": "api", "path": "/api/", "upstream": upstream.url}
    return GatewayProcess.create(
        directory, [route], database=database, workers=1,
        key_cache={"poll_interval": 0.05},
        secret_scanning={"github": {"public_keys": KEYS_FILE}},
    )


async def new_key(session: aiohttp.ClientSession, node: GatewayProcess, token: str) -> Any:
    auth = bearer(token)
    async with session.post(f"{node.admin_url}/admin/v1/workspaces", json={"name": "leaks"},
                            headers=auth) as response:
        assert response.status == 201, await response.text()
        workspace = (await response.json())["id"]
    async with session.post(f"{node.admin_url}/admin/v1/workspaces/{workspace}/keys",
                            json={"name": "to leak"}, headers=auth) as response:
        assert response.status == 201, await response.text()
        return await response.json()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_signed_report_revokes_the_key_on_every_node(
    backend: str, tmp_path: Path, upstream: Upstream
) -> None:
    signer = Signer("key-1")
    async with fresh_pg_database() as pg_url:
        database = pg_url if backend == "postgres" else f"sqlite:///{tmp_path}/shared.db"
        nodes = [scanning_node(tmp_path / f"node{i}", upstream, signer, database)
                 for i in range(2)]
        try:
            token = nodes[0].admin_key()  # it also migrates the empty database
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                await GatewayProcess.start_all(nodes, session)
                key = await new_key(session, nodes[0], token)
                headers = bearer(key["key"])
                for node in nodes:  # cached by both
                    assert await first_status(session, f"{node.url}/api/x", headers,
                                              time.perf_counter(), 2.0, 200, 401) < 2000
                body = report(key["key"])
                started = time.perf_counter()
                status, answer = await post_report(session, nodes[0].admin_url, body,
                                                   signer.headers(body))
                assert status == 200 and answer[0]["label"] == "true_positive", answer
                lags = await asyncio.gather(*(
                    first_status(session, f"{node.url}/api/x", headers, started,
                                 REVOCATION_BOUND)
                    for node in nodes
                ))
                assert max(lags) <= REVOCATION_BOUND * 1000, lags
                async with session.get(f"{nodes[1].admin_url}/admin/v1/keys/{key['key_id']}",
                                       headers=bearer(token)) as response:
                    shown = await response.json()
                assert (shown["status"], shown["revoked_by"]) == ("revoked", "secret-scanning")
        finally:
            for node in nodes:
                node.stop()


async def test_sighup_reads_the_public_keys_file_again(
    tmp_path: Path, upstream: Upstream
) -> None:
    old, new = Signer("key-1"), Signer("key-2")
    node = scanning_node(tmp_path / "node", upstream, old, f"sqlite:///{tmp_path}/gw.db")
    try:
        token = node.admin_key()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await GatewayProcess.start_all([node], session)
            key = await new_key(session, node, token)
            (node.directory / KEYS_FILE).write_bytes(keys_document(new))  # GitHub rotated
            body = report(key["key"])
            status, _ = await post_report(session, node.admin_url, body, new.headers(body))
            assert status == 401  # not read yet: the file is read with the config
            node.send(signal.SIGHUP)
            await node.wait_log("config reloaded")
            status, _ = await post_report(session, node.admin_url, body, old.headers(body))
            assert status == 401  # the old key is no longer listed
            status, answer = await post_report(session, node.admin_url, body, new.headers(body))
            assert status == 200 and answer[0]["label"] == "true_positive"
    finally:
        node.stop()
