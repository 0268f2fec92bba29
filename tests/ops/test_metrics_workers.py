"""``workers: 2``: a real ``gateway serve`` in a subprocess. Whichever worker answers a scrape,
``/metrics`` shows the totals of both (prometheus-client's multiprocess mode), and both write
JSON access lines."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.metrics import SAMPLE_INTERVAL
from tests.conftest import Upstream, free_port
from tests.ops.metrics_text import value

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 120
SCRAPES = 12


@pytest.fixture
def served(tmp_path: Path, upstream: Upstream) -> Iterator[tuple[int, int, Path]]:
    """(port, admin port, log file) of a two-worker gateway."""
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "workers": 2,
        "database": f"sqlite:///{tmp_path}/gateway.db",
        "routes": [
            {"name": "pub", "path": "/pub/", "upstream": upstream.url, "auth": "none"},
            {"name": "warm", "path": "/warm/", "upstream": upstream.url, "auth": "none"},
        ],
    }))
    command = [sys.executable, "-m", "gateway", "-c", str(config)]
    subprocess.run([*command, "migrate"], cwd=ROOT, check=True, capture_output=True, timeout=30)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "serve"], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port, admin_port, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def get(url: str) -> aiohttp.ClientResponse:
    """On a fresh connection each time, so the kernel picks a worker each time."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as response:
        await response.read()
        return response


def worker_of(response: aiohttp.ClientResponse) -> str:
    return response.headers["X-Request-Id"][:8]  # each process tags its request ids


async def wait_for_both_workers(port: int, log: Path, timeout: float = 30) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"not two workers: {log.read_text()}"
        try:
            seen.add(worker_of(await get(f"http://127.0.0.1:{port}/warm/x")))
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)


async def test_any_worker_reports_the_totals_of_all(served: tuple[int, int, Path]) -> None:
    port, admin_port, log = served
    await wait_for_both_workers(port, log)
    workers = set()
    for _ in range(REQUESTS):
        response = await get(f"http://127.0.0.1:{port}/pub/x?q=secret")
        assert response.status == 200
        workers.add(worker_of(response))
    assert len(workers) == 2  # both served some: neither alone saw REQUESTS
    # each worker adds its per-request tallies to the shared files every SAMPLE_INTERVAL
    # (README "Metrics and logs"): after one, whichever worker answers has the totals
    await asyncio.sleep(SAMPLE_INTERVAL + 0.5)

    for _ in range(SCRAPES):
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
            text = await response.text()
        labels = {"route": "pub", "method": "GET", "status_class": "2xx"}
        assert value(text, "gateway_requests_total", **labels) == REQUESTS
        assert value(text, "gateway_request_duration_seconds_count", route="pub") == REQUESTS
        assert value(text, "gateway_upstream_duration_seconds_count", route="pub") == REQUESTS
        assert value(text, "gateway_requests_in_flight") <= 1  # the scrape is no request

    await asyncio.sleep(0.3)  # access lines are written every quarter second
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert sum(line["route"] == "pub" for line in access) == REQUESTS
    assert all(line["path"] == "/pub/x" for line in access if line["route"] == "pub")
