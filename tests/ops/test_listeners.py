"""SPEC §13 "Listeners": a second gateway on ports a running one holds fails at start with one
line naming the address, whatever ``workers`` either has (workers bind with SO_REUSEPORT, so
without the probe in ``gateway.launch`` the kernel would split the traffic between the two)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.gateway_process import GatewayProcess, fresh, route

pytestmark = pytest.mark.slow


def node(directory: Path, upstream: Upstream, workers: int) -> GatewayProcess:
    return GatewayProcess.create(directory, [route("pub", "/pub/", upstream.url)],
                                 workers=workers)


@pytest.mark.parametrize(("running", "second"), [(2, 2), (2, 1), (1, 2)])
async def test_a_second_gateway_on_busy_ports_refuses_in_one_line(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, running: int, second: int
) -> None:
    first = node(tmp_path / "first", upstream, running)
    other = node(tmp_path / "second", upstream, second)
    other.write({**other.data, "listen": first.data["listen"]})
    first.start()
    try:
        await first.wait_ready(http)
        other.start()
        assert await other.wait_exit(timeout=20) == 1
        assert other.log_text() == (
            f"gateway: listen: cannot listen on 127.0.0.1:{first.port}: address already in use "
            "(another gateway or process holds it)\n")
        for _ in range(20):  # every connection still reaches the first gateway
            assert (await fresh(http, f"{first.url}/pub/x"))[0] == 200
    finally:
        first.stop()
        other.stop()


async def test_a_busy_admin_port_is_named(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    first = node(tmp_path / "first", upstream, 2)
    other = node(tmp_path / "second", upstream, 2)
    other.write({**other.data, "admin_listen": first.data["admin_listen"]})
    first.start()
    try:
        await first.wait_ready(http)
        other.start()
        assert await other.wait_exit(timeout=20) == 1
        assert other.log_text().startswith(
            f"gateway: admin_listen: cannot listen on 127.0.0.1:{first.admin_port}: address "
            "already in use")
        assert other.log_text().count("\n") == 1
    finally:
        first.stop()
        other.stop()


async def test_oversized_and_unknown_requests_get_problem_json_from_a_real_gateway(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """The issue's case: these got a bare 400 without problem+json or a request id."""
    gateway = node(tmp_path, upstream, 1)
    gateway.start()
    try:
        await gateway.wait_ready(http)
        cases = {
            f"GET /pub/{'a' * 9000} HTTP/1.1\r\nHost: g\r\n\r\n": (414, "uri_too_long"),
            f"GET /pub/x HTTP/1.1\r\nHost: g\r\nX-Big: {'a' * 9000}\r\n\r\n": (
                431, "headers_too_large"),
            "FROB /pub/x HTTP/1.1\r\nHost: g\r\n\r\n": (400, "bad_request"),
        }
        for head, (status, code) in cases.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(head.encode())
            answer = await reader.read()  # the gateway closes the connection
            writer.close()
            top, _, body = answer.partition(b"\r\n\r\n")
            status_line, *fields = top.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
            problem = json.loads(body)
            # HTTP/1.0 when the parser gave up before the request's version (RFC 9110 §2.5:
            # nothing above what the client is known to speak)
            assert re.match(rf"HTTP/1\.[01] {status} ", status_line), status_line
            assert headers["content-type"] == "application/problem+json"
            assert problem["code"] == code and problem["status"] == status
            assert problem["request_id"] == headers["x-request-id"] != ""
    finally:
        gateway.stop()
