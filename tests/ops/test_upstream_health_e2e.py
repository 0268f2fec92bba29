"""Upstream health end to end (README "Upstream health"): a real ``gateway serve`` in front of
two real echo upstream processes, one of which is killed and started again, or stopped
(SIGSTOP: the kernel still accepts its connections, nothing answers) and continued. The
gateway's ``/metrics`` and log say what it decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.gateway_process import ROOT, GatewayProcess, route, until
from tests.ops.metrics_text import scrape, value


class EchoProcess:
    """``gateway echo-upstream`` on a fixed port, in a process of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "echo-upstream", "--listen",
             f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        async def answers() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.url) as response:
                    return response.status == 200
            return False

        await until(answers, timeout=20)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
async def echoes(http: aiohttp.ClientSession) -> AsyncIterator[tuple[EchoProcess, EchoProcess]]:
    a, b = EchoProcess(), EchoProcess()
    await asyncio.gather(a.start(http), b.start(http))
    yield a, b
    a.kill()
    b.kill()


async def served_by(http: aiohttp.ClientSession, gateway: GatewayProcess) -> str:
    """The port of the upstream that answered a GET through the gateway."""
    async with http.get(f"{gateway.url}/r/x") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = json.loads(await response.read())
    return str(body["headers"]["Host"]).rpartition(":")[2]


def health_route(urls: list[str], **health: Any) -> dict[str, Any]:
    return {**route("r", "/r/", urls[0]), "upstream": urls, "timeout": 1, "health": health}


async def target_up(http: aiohttp.ClientSession, gateway: GatewayProcess, url: str) -> float:
    return value(await scrape(http, gateway.admin_url), "gateway_upstream_up", route="r",
                 target=url)


async def test_a_killed_upstream_is_ejected_then_back_once_it_returns(
    tmp_path: Path, http: aiohttp.ClientSession, echoes: tuple[EchoProcess, EchoProcess],
) -> None:
    a, b = echoes
    gateway = GatewayProcess.create(
        tmp_path, [health_route([a.url, b.url], failures=2, eject_seconds=0.5)]
    )
    try:
        gateway.start()
        await gateway.wait_ready(http)
        ports = [await served_by(http, gateway) for _ in range(4)]
        assert sorted(ports) == sorted([str(a.port), str(b.port)] * 2)

        a.kill()
        # every request still answered: a refused connect is retried on b
        assert [await served_by(http, gateway) for _ in range(10)] == [str(b.port)] * 10
        text = await scrape(http, gateway.admin_url)
        labels = {"route": "r", "target": a.url}
        assert value(text, "gateway_upstream_up", **labels) == 0
        assert value(text, "gateway_upstream_ejections_total", **labels) == 1
        assert value(text, "gateway_upstream_up", route="r", target=b.url) == 1
        assert f"upstream {a.url} (route r) ejected for 0.5 s" in gateway.log_text()

        await a.start(http)  # back, on the same port

        async def a_serves() -> bool:
            return await served_by(http, gateway) == str(a.port)

        await until(a_serves, timeout=10)  # its probe went through after the 0.5 s
        assert await target_up(http, gateway, a.url) == 1
        await gateway.wait_log(f"upstream {a.url} (route r) is back in service")
    finally:
        gateway.stop()


async def test_a_hung_upstream_is_ejected_by_active_checks_and_restored(
    tmp_path: Path, http: aiohttp.ClientSession, echoes: tuple[EchoProcess, EchoProcess],
) -> None:
    a, b = echoes
    gateway = GatewayProcess.create(tmp_path, [health_route(
        [a.url, b.url], failures=2, eject_seconds=60, path="/healthz", interval=0.2,
        timeout=0.2,
    )])
    try:
        gateway.start()
        await gateway.wait_ready(http)
        a.signal(signal.SIGSTOP)  # connections still accepted, nothing answered

        async def a_down() -> bool:
            return await target_up(http, gateway, a.url) == 0

        await until(a_down, timeout=10)  # without a single request through the gateway
        started = time.monotonic()
        assert [await served_by(http, gateway) for _ in range(10)] == [str(b.port)] * 10
        assert time.monotonic() - started < 1.0  # none of them waited on the hung one
        assert "failed health checks in a row" in gateway.log_text()

        a.signal(signal.SIGCONT)

        async def a_up() -> bool:
            return await target_up(http, gateway, a.url) == 1

        await until(a_up, timeout=10)  # a passing check: back long before the 60 s end
        ports = {await served_by(http, gateway) for _ in range(4)}
        assert ports == {str(a.port), str(b.port)}
    finally:
        gateway.stop()
