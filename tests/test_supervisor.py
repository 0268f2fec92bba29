"""``workers: 2`` on a real ``gateway serve``: a killed worker is replaced while the other keeps
serving; SIGTERM stops everything with exit code 0; a worker that cannot start stops the
gateway with exit code 1; workers do not outlive a killed parent; SIGHUP reloads every worker
or, for an invalid file, none. ``pytest -s`` prints the restart time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Tagged, Upstream, wait_for
from tests.gateway_process import (
    GatewayProcess,
    fresh,
    is_alive,
    raw_get,
    route,
    until,
)

pytestmark = pytest.mark.slow


def two_workers(tmp_path: Path, upstream: Upstream) -> GatewayProcess:
    return GatewayProcess.create(tmp_path, [route("pub", "/pub/", upstream.url)], workers=2)


def multiproc_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (entry,) = [e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(entry.split(b"=", 1)[1].decode())


async def test_a_killed_worker_is_replaced_while_the_other_serves(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gateway = two_workers(tmp_path, upstream)
    gateway.start()
    try:
        await gateway.wait_ready(http)
        await gateway.wait_log("2 workers serving")
        first, second = gateway.workers()
        directory = multiproc_dir(first)
        assert directory.is_dir() and multiproc_dir(second) == directory

        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        # Until every file of the killed process is closed, its listening socket still takes
        # connections (and resets them). The supervisor logs the exit once its sentinel pipe,
        # one of those files, reports end of file: then the socket is closed too.
        await gateway.wait_log(f"(pid {first}) exited with code -9")
        statuses: list[int | None] = []
        # new connections, one after another, until the replacement reports it serves
        while "replaced" not in gateway.log_text():
            statuses.append((await raw_get(gateway.port, "/pub/x")).status)
            assert time.monotonic() - killed < 15, gateway.log_text()
        replaced = re.search(r"serving ([0-9.]+) s after pid (\d+) died", gateway.log_text())
        assert replaced is not None and int(replaced.group(2)) == first
        assert statuses and set(statuses) == {200}, statuses
        workers = gateway.workers()
        assert len(workers) == 2 and second in workers and first not in workers
        for _ in range(20):
            assert (await raw_get(gateway.port, "/pub/y")).status == 200

        gateway.send(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=20) == 0, gateway.log_text()
        assert not any(is_alive(pid) for pid in workers)
        assert not directory.exists()
        print(f"\nworker replaced {float(replaced.group(1)):.2f} s after it died; "
              f"{len(statuses)} requests served meanwhile, all 200")
    finally:
        gateway.stop()


async def test_a_taken_port_stops_the_gateway_before_any_worker_starts(
    tmp_path: Path, upstream: Upstream
) -> None:
    gateway = two_workers(tmp_path, upstream)
    with socket.socket() as taken:  # bound without SO_REUSEPORT: the workers cannot share it
        taken.bind(("127.0.0.1", gateway.port))
        taken.listen()
        gateway.start()
        try:
            assert await gateway.wait_exit(timeout=20) == 1
        finally:
            gateway.stop()
    log = gateway.log_text()  # the probe found it (gateway.launch): not one worker was started
    assert log == (f"gateway: listen: cannot listen on 127.0.0.1:{gateway.port}: address "
                   "already in use (another gateway or process holds it)\n"), log


async def test_workers_stop_when_the_parent_is_killed(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gateway = two_workers(tmp_path, upstream)
    gateway.start()
    try:
        await gateway.wait_ready(http)
        await gateway.wait_log("2 workers serving")
        workers = gateway.workers()
        os.kill(gateway.pid, signal.SIGKILL)
        await wait_for(lambda: not any(is_alive(pid) for pid in workers), timeout=15)
        assert (await raw_get(gateway.port, "/pub/x")).error is not None  # nobody listens
    finally:
        gateway.stop()


async def test_sighup_with_workers_reloads_every_worker_or_none(
    tmp_path: Path, first: Tagged, second: Tagged, http: aiohttp.ClientSession
) -> None:
    gateway = GatewayProcess.create(tmp_path, [route("r", "/r/", first.url)], workers=2)
    gateway.start()
    try:
        await gateway.wait_ready(http)
        gateway.write({**gateway.data, "routes": [route("r", "/r/", second.url)]})
        gateway.send(signal.SIGHUP)

        async def all_reloaded() -> bool:  # 20 new connections, spread over both workers
            answers = {await fresh(http, f"{gateway.url}/r/x") for _ in range(20)}
            return answers == {(200, "second /r/x")}

        await until(all_reloaded)
        gateway.write({**gateway.data, "routes": "not a list"})
        gateway.send(signal.SIGHUP)
        log = await gateway.wait_log("reload rejected")
        await asyncio.sleep(0.3)  # a worker that had reloaded on its own would log by now
        assert gateway.log_text().count("reload rejected") == 1, log  # the parent's check only
        answers = {await fresh(http, f"{gateway.url}/r/y") for _ in range(20)}
        assert answers == {(200, "second /r/y")}
        gateway.send(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=15) == 0
    finally:
        gateway.stop()
