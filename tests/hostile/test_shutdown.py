"""Shutdown drain, hostile (README "Security and reliability", "Graceful shutdown"): keep-alive
clients under load when SIGTERM arrives, and a stream that outlives ``drain_timeout``.

A keep-alive client sends its next request as soon as a response arrives without
``Connection: close``; so every response the gateway sends while draining must say close, or
that next request meets a connection the gateway closes unanswered. And the whole drain, the
final usage flush included, must fit in ``drain_timeout``: an orchestrator's kill timeout is set
from it (README "Graceful shutdown").
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import StoreUnavailable
from gateway.keys.usage import RATE_LIMITED, SUCCESS, UsageRecorder
from gateway.metrics import Metrics
from tests.conftest import start_site
from tests.gateway_process import GatewayProcess, raw_get, route
from tests.hostile.conftest import read_answer
from tests.hostile.figures import record
from tests.test_server import endless

CLIENTS = 8
UPSTREAM_DELAY = 0.1  # each request is busy this long upstream
DRAIN_TIMEOUT = 2.0
MARGIN = 0.6  # process start-up of the interpreter's exit, the loop's signal handling


async def delayed(request: web.Request) -> web.Response:
    await asyncio.sleep(UPSTREAM_DELAY)
    return web.Response(text="done\n")


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/d/delayed", delayed)
    app.router.add_get("/d/endless", endless)
    runner = web.AppRunner(app, access_log=None)
    port = await start_site(runner)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@dataclass
class Client:
    """One keep-alive connection: requests back to back until a response says close."""

    answered: list[tuple[float, bool]] = field(default_factory=list)  # (when, said close)
    unanswered: int = 0  # requests written on a connection not told to close, never answered

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                writer.write(b"GET /d/delayed HTTP/1.1\r\nHost: gateway\r\n\r\n")
                try:
                    status, headers, _ = await asyncio.wait_for(read_answer(reader), 10)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    status, headers = 0, []
                if status == 0:
                    self.unanswered += 1
                    return
                close = any(k.lower() == "connection" and v.lower() == "close"
                            for k, v in headers)
                self.answered.append((time.time(), close))
                if close:
                    return
        finally:
            writer.close()


def draining_began(log: str) -> float:
    line = next(line for line in log.splitlines() if '"draining ' in line)
    stamp = json.loads(line)["ts"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
async def test_sigterm_with_keepalive_clients_drops_nothing_and_says_close(
    tmp_path: Path, upstream: str
) -> None:
    gateway = GatewayProcess.create(tmp_path, [route("d", "/d/", upstream)],
                                    drain_timeout=DRAIN_TIMEOUT)
    gateway.start()
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_ready(session)
        stop = asyncio.Event()
        clients = [Client() for _ in range(CLIENTS)]
        tasks = [asyncio.create_task(c.run(gateway.port, stop)) for c in clients]
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        gateway.send(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=10) == 0
        took = time.monotonic() - signalled
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    finally:
        gateway.stop()
    dropped = sum(c.unanswered for c in clients)
    served = sum(len(c.answered) for c in clients)
    # responses received once the drain had begun (its log line, on the same wall clock; 3 ms
    # for the log call and loopback)
    began = draining_began(gateway.log_text()) + 0.003
    drained = [close for c in clients for at, close in c.answered if at > began]
    record("DRAIN", f"{CLIENTS} keep-alive clients, {served} answered, {len(drained)} while "
                    f"draining ({drained.count(True)} with Connection: close), {dropped} "
                    f"dropped; exit {took:.2f} s after SIGTERM")
    assert dropped == 0
    assert drained and all(drained), drained
    assert took < DRAIN_TIMEOUT + MARGIN


@pytest.mark.slow
async def test_the_whole_drain_fits_in_drain_timeout(tmp_path: Path, upstream: str) -> None:
    """A stream that outlives the drain: cut off, the usage flushed, and the process gone
    within ``drain_timeout`` (+ a margin), not twice it."""
    gateway = GatewayProcess.create(tmp_path, [route("d", "/d/", upstream)],
                                    drain_timeout=DRAIN_TIMEOUT)
    gateway.start()
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_ready(session)
        streams = [asyncio.create_task(raw_get(gateway.port, "/d/endless")) for _ in range(3)]
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        gateway.send(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=10) == 0
        took = time.monotonic() - signalled
        cut = await asyncio.gather(*streams)
    finally:
        gateway.stop()
    record("DRAIN_BOUND", f"3 endless streams, drain_timeout {DRAIN_TIMEOUT:g} s: exit "
                          f"{took:.2f} s after SIGTERM")
    assert all(c.status == 200 and b"tick" in c.data for c in cut)
    assert DRAIN_TIMEOUT - 1.0 <= took < DRAIN_TIMEOUT + MARGIN, took


class DownStore:
    """A key store that is down: refuses (``hang=False``) or never answers."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def record_usage(self, minutes: object, last_used: object = None) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize("hang", [False, True], ids=["refused", "hanging"])
async def test_usage_the_store_cannot_take_at_shutdown_is_counted_as_dropped(hang: bool) -> None:
    metrics = Metrics()
    usage = UsageRecorder(DownStore(hang), metrics=metrics)  # type: ignore[arg-type]
    usage.start()
    for _ in range(5):
        usage.count("k1", "ws1", SUCCESS)
    usage.count("k2", "ws1", RATE_LIMITED)
    started = time.monotonic()
    await usage.stop(timeout=0.3)
    took = time.monotonic() - started
    await usage.stop(timeout=0.3)  # the exit stack stops it again: nothing twice
    assert usage.dropped == 6
    assert metrics.sample_value("gateway_usage_dropped_total") == 6
    assert metrics.sample_value("gateway_usage_buckets_dropped_total") == 2
    assert took < 0.5
