"""SPEC §13 on real ``gateway`` processes: the start-up line, worker ids on every worker line,
debug logs that show the gateway's decisions and not the drivers', dependency errors that name
their server, and the CLI and the server agreeing on a relative SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.pipeline import Pipeline
from gateway.services import open_services
from tests.conftest import Upstream, bearer, free_port
from tests.gateway_process import ROOT, GatewayProcess, fresh, route

pytestmark = pytest.mark.slow


def lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(text) for text in gateway.log_text().splitlines() if text.startswith("{")]


async def test_the_start_up_line_and_worker_ids(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    redis = "redis://default:hunter2@127.0.0.1:6379/0"  # Redis's nopass user takes any
    gateway = GatewayProcess.create(tmp_path, [route("pub", "/pub/", upstream.url)], workers=2,
                                    redis=redis, limiter={"prefix": f"gw-{uuid.uuid4().hex}:"})
    gateway.start()
    try:
        await gateway.wait_ready(http)
        await gateway.wait_log("2 workers serving")
        for _ in range(10):
            assert (await fresh(http, f"{gateway.url}/pub/x"))[0] == 200
        await gateway.wait_log('"gateway.access"', count=10)
    finally:
        gateway.stop()
    logged = lines(gateway)
    start = logged[0]
    assert start["message"] == "gateway starting" and "worker" not in start
    assert {k: start[k] for k in ("config", "store", "limiter", "routes", "workers")} == {
        "config": str(gateway.config), "store": f"sqlite:///{tmp_path}/gateway.db",
        "limiter": "redis redis://default:***@127.0.0.1:6379/0", "routes": 1, "workers": 2,
    }
    assert start["version"] and "hunter2" not in gateway.log_text()
    workers = [line for line in logged if line["logger"] != "gateway.supervisor"][1:]
    assert workers and all(line.get("worker") in (1, 2) for line in workers)
    assert {line["worker"] for line in workers if line["logger"] == "gateway.access"} <= {1, 2}


async def test_redis_unreachable_is_named(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    port = free_port()  # nobody there: not fatal, on_limiter_error applies
    gateway = GatewayProcess.create(tmp_path, [route("pub", "/pub/", upstream.url)],
                                    redis=f"redis://127.0.0.1:{port}/0")
    gateway.start()
    try:
        await gateway.wait_log(f"redis at 127.0.0.1:{port} is unreachable", timeout=20)
    finally:
        gateway.stop()


async def test_debug_shows_decisions_not_driver_chatter(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    routes = [{"name": "keyed", "path": "/k/", "upstream": upstream.url, "permissions": ["read"]},
              {"name": "dead", "path": "/d/", "upstream": dead, "auth": "none"}]
    gateway = GatewayProcess.create(tmp_path, routes, logging={"level": "debug"})
    workspace = json.loads(gateway.command("workspaces", "create", "--name", "w"))["id"]
    key = gateway.command("keys", "create", "--workspace", workspace, "--name", "k",
                          "--permission", "other").strip().splitlines()[-1]  # not "read": 403
    gateway.start()
    try:
        await gateway.wait_ready(http)
        async with http.get(f"{gateway.url}/k/x", headers=bearer(key)) as response:
            assert response.status == 403
            request_id = response.headers["X-Request-Id"]
        async with http.get(f"{gateway.url}/d/x") as response:
            assert response.status == 502
            failed_id = response.headers["X-Request-Id"]
        await gateway.wait_log(failed_id, count=2)
    finally:
        gateway.stop()
    logged = lines(gateway)
    assert {line["logger"].partition(".")[0] for line in logged} == {"gateway"}
    decisions = [(line["stage"], line["decision"]) for line in logged
                 if line.get("request_id") == request_id and line["logger"] == "gateway.decision"]
    assert decisions[:2] == [("request_id", "pass"), ("match", "pass")]
    assert decisions[-2:] == [("authenticate", "pass"),
                              ("authorize", "refused 403 insufficient_permissions")]
    keyed = [line for line in logged if line.get("stage") == "authorize"]
    assert keyed[0]["route"] == "keyed" and keyed[0]["key_id"].startswith("key_")
    (failure,) = [line for line in logged if line["logger"] == "gateway.error"
                  and line.get("request_id") == failed_id]
    assert failure["message"].startswith(f"upstream {dead} failed: ")
    assert failure["route"] == "dead" and failure["level"] == "warning"


async def test_decisions_cost_nothing_when_debug_is_off(tmp_path: Path, upstream: Upstream) -> None:
    config = parse_config({"database": f"sqlite:///{tmp_path}/g.db",
                           "routes": [route("pub", "/pub/", upstream.url)]}, "t.yaml", {})
    async with open_services(config) as services:
        pipeline = Pipeline(services)
    wrapped = [check for check in (*pipeline.front, *pipeline.paths["pub"].checks)
               if check.__qualname__.startswith("traced.")]
    assert wrapped == []


def test_an_unreachable_postgres_is_named(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"database: postgresql://gw:secret@127.0.0.1:{port}/gw\n"
                      "key_store: {connect_timeout: 1, timeout: 1}\n"
                      "routes: [{name: a, path: /a/, upstream: 'http://127.0.0.1:9'}]\n")
    done = subprocess.run([sys.executable, "-m", "gateway", "-c", str(config), "migrate"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"gateway: key store unavailable: postgres key store at "
                                  f"127.0.0.1:{port} unavailable: ")
    assert done.stderr.count("\n") == 1 and "secret" not in done.stderr


async def test_the_cli_and_the_server_agree_on_a_relative_sqlite_file(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """The issue's case: ``admin-key create -c /abs/gateway.yaml`` run from another directory
    wrote to another, empty file, and its key got 401 from the running gateway."""
    gateway = GatewayProcess.create(tmp_path / "etc", [route("pub", "/pub/", upstream.url)],
                                    database="sqlite:///./gateway.db")
    gateway.start()  # from the repository root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        await gateway.wait_ready(http)
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "admin-key", "create", "--name", "ops", "-c",
             str(gateway.config)],
            cwd=elsewhere, capture_output=True, text=True, timeout=30,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == f"gateway: wrote to key store sqlite:///{tmp_path}/etc/gateway.db\n"
        key = done.stdout.strip().splitlines()[-1]
        async with http.get(f"{gateway.admin_url}/admin/v1/workspaces",
                            headers=bearer(key)) as response:
            assert response.status == 200
    finally:
        gateway.stop()
    assert list(elsewhere.iterdir()) == []
