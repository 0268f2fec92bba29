"""Forward auth through a real nginx (README "Forward auth"): the README's nginx example, as
written, in front of a real recording upstream, asking a real ``gateway serve`` process.

The config is the README's ``nginx`` block with its three addresses replaced by free ports,
wrapped in the top level a test needs (no daemon, pid, logs and temp files in a tmp dir). Skipped
only when there is no nginx binary (``apt-get install -y nginx``; .ci/run installs it)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Upstream, bearer, free_port
from tests.gateway_process import GatewayProcess
from tests.verify.conftest import VERIFY_ROUTE

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install -y nginx)"
)
TOP = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{server}
}}
"""


def readme_server_block() -> str:
    """The README's nginx example (the first ```nginx block under "## Forward auth")."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Forward auth\n", 1)[1]
    found = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert found is not None, "README 'Forward auth' has no nginx block"
    return found.group(1)


def nginx_config(directory: Path, port: int, gateway_port: int, upstream_port: int) -> str:
    server = readme_server_block()
    for old, new in (("listen 80;", f"listen 127.0.0.1:{port};"),
                     ("http://127.0.0.1:8080/", f"http://127.0.0.1:{gateway_port}/"),
                     ("http://127.0.0.1:9000;", f"http://127.0.0.1:{upstream_port};")):
        assert old in server, f"the README example no longer has {old!r}"
        server = server.replace(old, new)
    return TOP.format(dir=directory, server=server)


@pytest.fixture
def nginx_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "nginx"
    directory.mkdir()
    return directory


@pytest.fixture
def gateway(tmp_path: Path, upstream: Upstream) -> Iterator[GatewayProcess]:
    api = {"name": "api", "path": "/api/", "upstream": upstream.url,
           "permissions": {"GET": ["read"], "POST": ["write"]}}
    node = GatewayProcess.create(tmp_path / "gateway", [api, VERIFY_ROUTE])
    try:
        yield node
    finally:
        node.stop()


async def start_nginx(directory: Path, config: str, port: int) -> subprocess.Popen[bytes]:
    assert NGINX is not None
    (directory / "nginx.conf").write_text(config)
    check = subprocess.run([NGINX, "-t", "-p", str(directory), "-c", "nginx.conf",
                            "-e", str(directory / "error.log")], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    with (directory / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", "nginx.conf", "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(5)
                log = (directory / "stderr.log").read_text() + (directory / "error.log").read_text()
                raise AssertionError(f"nginx did not start: {log}") from None
            await asyncio.sleep(0.05)


@pytest.fixture
async def nginx(
    nginx_dir: Path, gateway: GatewayProcess, upstream: Upstream
) -> AsyncIterator[str]:
    port = free_port()
    config = nginx_config(nginx_dir, port, gateway.port, upstream.port)
    process = await start_nginx(nginx_dir, config, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def call(http: aiohttp.ClientSession, method: str, url: str,
               headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    async with http.request(method, url, headers=headers or {}) as response:
        return response.status, response.headers, await response.text()


async def test_nginx_auth_request_with_the_readme_config(
    nginx: str, gateway: GatewayProcess, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    token = gateway.admin_key()
    gateway.start()
    await gateway.wait_ready(http)
    admin = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{gateway.admin_url}/admin/v1/workspaces", json={"name": "w"},
                         headers=admin) as response:
        workspace = await response.json()
    async with http.post(f"{gateway.admin_url}/admin/v1/workspaces/{workspace['id']}/keys",
                         json={"name": "k", "permissions": ["read"], "rate_limit_override": 3},
                         headers=admin) as response:
        created = await response.json()
    key = created["key"]

    # allowed: the upstream gets the identity, never the key, never the client's copies
    spoofed = {**bearer(key), "X-Workspace-Id": "ws_spoofed", "X-Api-Key-Id": "key_spoofed",
               "X-Request-Id": "req-nginx-1"}
    status, headers, body = await call(http, "GET", f"{nginx}/api/items?x=1", spoofed)
    assert status == 200, body
    received = upstream.log.last
    assert (received.method, received.path) == ("GET", "/api/items?x=1")
    assert received.all("X-Workspace-Id") == [workspace["id"]]
    assert received.all("X-Project-Id") == [workspace["default_project_id"]]
    assert received.all("X-Api-Key-Id") == [created["key_id"]]
    assert received.all("X-Api-Key-Permissions") == ["read"]
    assert received.all("X-Principal-Id") == [created["principal_id"]]
    assert received.all("X-Request-Id") == ["req-nginx-1"]
    assert received.all("Authorization") == []
    assert received.all("X-Namespace-Id") == []  # none selected: none sent
    assert headers["RateLimit-Remaining"] == "2"
    assert headers["X-Request-Id"] == "req-nginx-1"
    forwarded = len(upstream.log.received)

    # missing key: 401 (auth_request passes it on)
    status, headers, body = await call(http, "GET", f"{nginx}/api/items")
    assert status == 401, body
    assert headers.getall("WWW-Authenticate") == ['Bearer realm="gateway"']
    assert headers["Content-Type"] == "application/problem+json"
    assert '"status": 401' in body and headers["X-Request-Id"]

    # wrong method: POST on this route needs write
    status, _headers, body = await call(http, "POST", f"{nginx}/api/items", bearer(key))
    assert status == 403, body

    # unknown route: the gateway's 404, not nginx's 500
    status, headers, body = await call(http, "GET", f"{nginx}/nowhere", bearer(key))
    assert status == 404, body
    assert '"status": 404' in body and headers["X-Request-Id"]

    # over the limit (3 a minute; one spent above): 429 with Retry-After
    statuses = [(await call(http, "GET", f"{nginx}/api/items", bearer(key)))[0]
                for _ in range(2)]
    assert statuses == [200, 200]
    status, headers, body = await call(http, "GET", f"{nginx}/api/items", bearer(key))
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Remaining"] == "0"

    # a path the gateway refuses to normalise: 400
    status, _headers, body = await call(http, "GET", f"{nginx}/api/a%2Fb", bearer(key))
    assert status == 400, body

    assert len(upstream.log.received) == forwarded + 2  # only the two admitted ones

    # the gateway gone: 503, nothing forwarded
    gateway.stop()
    status, _headers, body = await call(http, "GET", f"{nginx}/api/items", bearer(key))
    assert status == 503, body
    assert len(upstream.log.received) == forwarded + 2
