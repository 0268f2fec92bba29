"""SPEC §13 "Listeners": a second gateway on ports a running one holds fails at start with one
line naming the address, whatever ``workers`` either has (workers bind with SO_REUSEPORT, so
without the probe in ``gateway.launch`` the kernel would split the traffic between the two)."""

from __future__ import annotations

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
